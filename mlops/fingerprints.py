"""Fingerprints: what a result was made from, so that it is reused only when nothing that changes it changed.

    file_sha256 / data_fingerprint   file contents (moving a folder keeps them)
    code_files / code_fingerprint    the repository code a module runs: its static import closure (every
                                     `import` and `from ... import` of the file, at any depth, also inside
                                     functions, and every string naming a project module, as lazy imports
                                     do), followed through the project's own packages
    environment                      the versions of the libraries that change numbers (torch, DeepSpeed, DALI, ...)

The training stages fingerprint their section, data, starting weights, code and environment: a checkpoint is
resumed only by a run of the same fingerprint. The DAG test holds every DVC stage's deps to `code_files` of
its entry point.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
from functools import cache
from pathlib import Path

from transpose.hashing import file_sha256

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("cli", "pipelines", "mlops", "dataops", "transpose")
ENVIRONMENT_PACKAGES = ("torch", "numpy", "opencv-python-headless", "deepspeed", "nvidia-dali-cuda130", "pycocotools")


def data_fingerprint(files: list[Path]) -> str:
    """sha256 over the files' own sha256 digests, in order (contents only: moving the folder keeps it)."""
    digest = hashlib.sha256()
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: data to fingerprint is missing")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def split_manifests(shards: str | Path, split: str) -> list[Path]:
    """The split's shard manifest(s); an error naming the expected file when there is none."""
    found = sorted(Path(shards).glob(f"{split}-manifest*.json"))
    if not found:
        raise FileNotFoundError(
            f"no shard manifest {Path(shards) / f'{split}-manifest.json'}: run the shard stage, or fix the shards "
            "folder / split"
        )
    return found


def evaluation_fingerprint(ground_truth: str | Path, shards: str | Path, split: str) -> str:
    """'The same evaluation data': the ground truth file and the split's shard manifest(s)."""
    return data_fingerprint([Path(ground_truth), *split_manifests(shards, split)])


# ---- code ------------------------------------------------------------------------------------------------------
def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of a project module (`pkg/mod.py` or `pkg/mod/__init__.py`), or None for anything else."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name the file may bring in: `import` statements (absolute and relative) and string constants
    that are dotted names in a project package (`importlib.import_module("transpose.codec.dark")`, lazy tables);
    `_closure` keeps only those that are project module files."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _looks_like_module(node.value):
            names.add(node.value)
    return names


def _looks_like_module(text: str) -> bool:
    parts = text.split(".")
    return len(parts) > 1 and parts[0] in PROJECT_PACKAGES and all(part.isidentifier() for part in parts)


def code_files(modules: tuple[str, ...] | list[str], root: Path = REPO) -> list[Path]:
    """The project files the modules run: the modules, their packages' `__init__.py`, and everything they import
    (statically, at any depth), sorted."""
    return [root / p for p in _closure(tuple(modules), root)]


@cache
def _closure(modules: tuple[str, ...], root: Path) -> tuple[str, ...]:
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            prefix = ".".join(parts[:depth])
            path = module_file(prefix, root)
            if path is None or prefix in seen:
                continue
            seen[prefix] = path
            todo.extend(_imported_names(path, prefix))
    return tuple(sorted(str(p.relative_to(root)) for p in seen.values()))


def code_fingerprint(modules: tuple[str, ...] | list[str], root: Path = REPO) -> str:
    """sha256 over the paths and contents of `code_files(modules)`."""
    digest = hashlib.sha256()
    for path in code_files(modules, root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """Installed versions of the libraries whose versions change results (absent ones are left out)."""
    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint_of(identity: dict) -> str:
    """A short, stable name for an identity dict (sha256 of its sorted JSON)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
