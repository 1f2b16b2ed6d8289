"""Reading a stage's own section of params.yaml into its config dataclass, every key and value checked first.

`parse_section(SectionClass, values, "stage")` rejects unknown keys (listing the known ones), missing required
keys and values of the wrong type (from the dataclass's annotations: int, float, str, bool, Literal choices,
fixed-length tuples, lists, dicts, `X | None`, nested dataclasses), then builds the dataclass, whose
`__post_init__` checks ranges and raises `ValueError("key: what is wrong")`. Every error names the key as
`stage.key` and stops the stage before any work, with a message saying what to fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

PARAMS_FILE = Path("params.yaml")
T = TypeVar("T")


class ParamsError(SystemExit):
    """A params.yaml problem: the message names the key and what to fix (exits the stage with it)."""


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the repository root (dvc repro does)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return params


def stage_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The raw `section:` mapping of a params file."""
    params = load_params(path)
    if not isinstance(params.get(section), dict):
        raise ParamsError(f"{path}: missing section '{section}:'")
    return params[section]


def reject_unknown_keys(values: dict, known: set[str], section: str, show_known: bool = True) -> None:
    """Stop the stage when `values` has keys outside `known`, naming each as `section.key` (a typo in
    params.yaml would otherwise be ignored silently)."""
    unknown = sorted(set(values) - known)
    if unknown:
        hint = f"; known: {', '.join(sorted(known))}" if show_known else ""
        raise ParamsError(f"params.yaml: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}{hint}")


def parse_section(cls: type[T], values: Any, section: str, exclude: tuple[str, ...] = ()) -> T:
    """`values` (a params.yaml mapping) as the dataclass `cls`, checked; errors name `section.key`."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParamsError(f"params.yaml: '{section}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in exclude}
    reject_unknown_keys(values, set(fields), section)
    hints = typing.get_type_hints(cls)
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ParamsError(f"params.yaml: missing key(s) {', '.join(f'{section}.{k}' for k in missing)}")
    kwargs = {name: _convert(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        key, sep, message = str(err).partition(": ")
        if sep and key in fields:  # a field's own check: name it as section.key
            raise ParamsError(f"params.yaml: '{section}.{key}' {message}") from None
        raise ParamsError(f"params.yaml: {section}: {err}") from None


def _type_name(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return " | ".join(repr(a) for a in get_args(kind))
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def _convert(value: Any, kind: Any, key: str) -> Any:
    """`value` checked against the annotation `kind` (and turned into tuples / nested dataclasses)."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, key)
            except ParamsError as err:
                errors.append(err)
        raise errors[-1] if len(options) == 1 else _bad(key, value, " or ".join(_type_name(o) for o in options))
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"params.yaml: '{key}' must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(kind):
        return parse_section(kind, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"params.yaml: '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or kind is list:
        if not isinstance(value, list):
            raise _bad(key, value, "a list")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, "a mapping")
        if not args:
            return value
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise _bad(key, value, "true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(key, value, "a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise _bad(key, value, "a string")
        return value
    raise TypeError(f"{key}: parse_section does not handle the annotation {kind!r}")


def _bad(key: str, value: Any, expected: str) -> ParamsError:
    return ParamsError(f"params.yaml: '{key}' must be {expected}, got {value!r}")


def check(condition: bool, key: str, message: str) -> None:
    """In a section's __post_init__: raise `ValueError("key: message")` unless `condition`."""
    if not condition:
        raise ValueError(f"{key}: {message}")


def stage_arguments(doc: str | None, stage: str | None = None, tracking: bool = True):
    """The command line every stage takes: --params FILE, --no-mlflow (where `tracking`), and --stage NAME
    where `stage` is its default section name."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if stage is not None:
        parser.add_argument("--stage", default=stage, help=f"params.yaml section (default: {stage})")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="the params file (default: params.yaml)")
    if tracking:
        parser.add_argument("--no-mlflow", action="store_true", help="do not record the stage in MLflow")
    return parser
