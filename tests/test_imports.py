"""The library stands alone: `transpose` imports nothing above it and runs without the pipeline stack; the
layers import one way (cli -> pipelines -> mlops -> dataops -> transpose); the CLI explains itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE_PACKAGES = ["ray", "mlflow", "dvc", "nvidia", "deepspeed", "webdataset", "tqdm", "yaml"]
LAYERS = ("transpose", "dataops", "mlops", "pipelines", "cli")  # each may import only those before it


def imported_top_packages(path: Path) -> set[str]:
    """The top-level package of every import in a file, at any depth (lazy imports in functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    offending = {
        str(path.relative_to(REPO)): sorted(imported_top_packages(path) & above)
        for path in sorted((REPO / layer).rglob("*.py"))
        if imported_top_packages(path) & above
    }
    assert not offending, f"{layer} imports layers above it: {offending}"


def test_transpose_imports_without_the_pipeline_stack():
    code = (
        "import sys\n"
        f"for name in {PIPELINE_PACKAGES!r}: sys.modules[name] = None  # any import of them now fails\n"
        "import transpose, transpose.models, transpose.codec, transpose.evaluation, transpose.explain\n"
        "import transpose.inference, transpose.geometry, transpose.losses, transpose.predict\n"
        "import transpose.evaluation.protocols, transpose.engine.validation, transpose.engine.curves\n"
        "print(transpose.create_model('transpose_r_a3')(__import__('torch').zeros(1, 3, 256, 192)).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 17, 64, 48])" in done.stdout


def test_cli_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("models", "evaluate", "explain", "predict", "promote"):
        assert command in done.stdout
