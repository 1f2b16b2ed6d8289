"""Reading a stage's own section of params.yaml, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


def stage_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} not found: run the stage from the repository root (dvc repro does)")
    params = yaml.safe_load(path.read_text()) or {}
    if section not in params or not isinstance(params[section], dict):
        raise SystemExit(f"{path}: missing section '{section}:'")
    return params[section]


def require(params: dict, section: str, key: str, kind: type | tuple[type, ...]) -> Any:
    """params[key], checked: a missing or mistyped value stops the stage naming `section.key`."""
    if key not in params:
        raise SystemExit(f"params.yaml: missing key '{section}.{key}'")
    value = params[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SystemExit(f"params.yaml: '{section}.{key}' must be {expected}, got {value!r}")
    return value


def reject_unknown_keys(values: dict, known: set[str], section: str, show_known: bool = True) -> None:
    """Stop the stage when `values` has keys outside `known`, naming each as `section.key` (a typo in
    params.yaml would otherwise be ignored silently)."""
    unknown = sorted(set(values) - known)
    if unknown:
        hint = f"; known: {', '.join(sorted(known))}" if show_known else ""
        raise SystemExit(f"params.yaml: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}{hint}")
