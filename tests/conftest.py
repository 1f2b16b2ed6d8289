"""Shared fixtures: the test data kept in the repository (tests/data), so a clone needs nothing beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def spec_keys_dir() -> Path:
    """The reference's state_dict keys and shapes, one file per model."""
    return DATA / "state_dict_keys"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Real COCO and MPII photos with their annotations (realdata/README.md)."""
    return DATA / "realdata"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
