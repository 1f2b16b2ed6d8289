"""The model library imports without the pipeline stack, and the CLI explains itself."""

from __future__ import annotations

import subprocess
import sys

PIPELINE_PACKAGES = ["ray", "mlflow", "dvc", "nvidia", "deepspeed", "webdataset", "tqdm", "yaml"]


def test_transpose_imports_without_the_pipeline_stack():
    code = (
        "import sys\n"
        f"for name in {PIPELINE_PACKAGES!r}: sys.modules[name] = None  # any import of them now fails\n"
        "import transpose, transpose.models, transpose.codec, transpose.evaluation, transpose.explain\n"
        "import transpose.inference, transpose.geometry, transpose.losses, transpose.cli\n"
        "print(transpose.create_model('transpose_r_a3')(__import__('torch').zeros(1, 3, 256, 192)).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 17, 64, 48])" in done.stdout


def test_cli_help_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "transpose.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for command in ("models", "evaluate", "explain"):
        assert command in done.stdout
