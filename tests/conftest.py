"""Shared fixtures: the read-only project folder `../shared` (spec and real data) beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSPOSE_SHARED", REPO.parent / "shared"))


def _shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the tests need the project's shared/ folder beside the repository "
            "(or TRANSPOSE_SHARED pointing at it)"
        )
    return path


@pytest.fixture(scope="session")
def spec_keys_dir() -> Path:
    return _shared("spec", "state_dict_keys")


@pytest.fixture(scope="session")
def realdata() -> Path:
    return _shared("realdata")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
