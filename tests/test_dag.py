"""The DAG never goes stale: every stage lists as deps the code it runs (its entry point's import closure) and the
files it reads, so a code change makes `dvc status` list exactly the stages that run that code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops.fingerprints import PROJECT_PACKAGES, code_files

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def resolve(text: str) -> str:
    """dvc.yaml's ${section.key} templating, from params.yaml."""

    def lookup(match: re.Match) -> str:
        node = PARAMS
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w.\-]+)\}", lookup, text)


def paths(entries) -> list[str]:
    """Paths of a dvc.yaml list (plain strings, or one-key mappings with options)."""
    return [resolve(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []]


READS = {"make_synthetic": ["data", "synthetic"], "shard": ["data", "shard"]}  # the sections a stage reads


def entry_module(stage: dict) -> str:
    return re.findall(r"-m (pipelines\.\w+)", stage["cmd"])[-1]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_the_code_closure_follows_lazy_imports(tmp_path):
    """A lazy package names its modules in strings (`importlib.import_module("transpose.codec.dark")`): those
    modules are code the importer runs, so a change to them must change the fingerprint and the deps."""
    (tmp_path / "transpose" / "lazy").mkdir(parents=True)
    (tmp_path / "transpose" / "__init__.py").write_text("")
    (tmp_path / "transpose" / "lazy" / "__init__.py").write_text(
        'import importlib\n_WHERE = {"f": "transpose.lazy.impl", "doc": "not.a.module", "g": "transpose.missing"}\n'
    )
    (tmp_path / "transpose" / "lazy" / "impl.py").write_text("from transpose.lazy import deeper\n")
    (tmp_path / "transpose" / "lazy" / "deeper.py").write_text("")
    files = [str(p.relative_to(tmp_path)) for p in code_files(["transpose.lazy"], root=tmp_path)]
    assert files == [
        "transpose/__init__.py",
        "transpose/lazy/__init__.py",
        "transpose/lazy/deeper.py",
        "transpose/lazy/impl.py",
    ]
    train = [str(p.relative_to(REPO)) for p in code_files(["pipelines.train"])]
    assert "transpose/codec/dark.py" in train and "transpose/models/transpose_net.py" in train


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_lists_the_code_it_runs(name):
    stage = STAGES[name]
    deps = paths(stage["deps"])
    runs = [str(p.relative_to(REPO)) for p in code_files([entry_module(stage)])]
    missing = [f for f in runs if not covered(f, deps)]
    assert not missing, f"{name} runs code its deps do not list: {missing}"
    # and lists no project code it does not run (it would rerun for nothing)
    code_deps = [d for d in deps if d.split("/")[0] in PROJECT_PACKAGES]
    unused = [d for d in code_deps if not any(covered(f, [d]) for f in runs)]
    assert not unused, f"{name} lists code it never runs: {unused}"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_lists_its_section_and_the_files_its_section_names(name):
    stage = STAGES[name]
    section = re.search(r"--stage (\w+)", stage["cmd"])
    section = section.group(1) if section else name
    tracked = [p.split(".")[0] for p in stage.get("params", [])]
    for read in READS.get(name, [section]):
        assert read in tracked, f"{name} reads params.yaml's {read} but does not track it"
    if section not in PARAMS:
        return
    deps = paths(stage["deps"])
    values = PARAMS[section]
    for key in ("deepspeed_config", "shards"):
        if key in values:
            assert covered(values[key], deps), f"{name}: {section}.{key} {values[key]} is not a dep"
    for key in ("init_from", "model_from"):
        if key in values:
            assert covered(f"{values[key]}/model.json", deps), f"{name}: the card of {section}.{key} is not a dep"
    outs = paths(stage.get("outs")) + paths(stage.get("metrics")) + paths(stage.get("plots"))
    for key in ("out_dir", "metrics", "plots", "figures", "decisions"):
        if key in values:
            assert values[key] in outs, f"{name}: {section}.{key} {values[key]} is not an output"


def _stage_outputs(stage: dict) -> list[str]:
    return paths(stage.get("outs")) + paths(stage.get("metrics")) + paths(stage.get("plots"))


@pytest.mark.slow
def test_a_code_change_makes_dvc_status_list_exactly_the_stages_that_run_it(tmp_path):
    """A copy of the project with placeholder data, committed, then one code file changed at a time."""
    project = tmp_path / "project"
    for name in (*PROJECT_PACKAGES, "infra", "dvc.yaml", "params.yaml", ".dvcignore"):
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, project / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if source.is_dir() else {}))
    for stage in STAGES.values():  # every input and output the DAG names, as small stand-ins
        for path in paths(stage["deps"]) + _stage_outputs(stage):
            target = project / path
            if target.exists():
                continue
            if Path(path).suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("{}\n")
            else:
                target.mkdir(parents=True)
                (target / "placeholder").write_text("x\n")
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{DVC.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def dvc(*args: str) -> str:
        done = subprocess.run([str(DVC), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stale() -> set[str]:
        return {line.rstrip(":") for line in dvc("status").splitlines() if line and not line.startswith(("\t", " "))}

    dvc("init", "--no-scm", "-q")
    dvc("commit", "-f", "-q")
    assert stale() == {"Data and pipelines are up to date."} or stale() == set()
    changes = {
        "transpose/codec/dark.py": set(STAGES),  # the codec: every stage runs the library
        "dataops/loaders/common.py": {
            "pretrain",
            "evaluate_coco",
            "transfer",
            "mpii_scratch",
            "evaluate_mpii",
            "promote",
        },
        "pipelines/evaluate.py": {"evaluate_coco", "evaluate_mpii", "promote"},
        "mlops/registry/promotion.py": {"promote"},
        "dataops/synthetic/scene.py": {"make_synthetic"},
    }
    for path, expected in changes.items():
        file = project / path
        original = file.read_text()
        file.write_text(original + "\n# a change\n")
        assert stale() == expected, path
        file.write_text(original)
    assert stale() in ({"Data and pipelines are up to date."}, set())
