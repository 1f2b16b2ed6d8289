"""The `data:` section, read by make_synthetic and shard: where the datasets come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SYNTHETIC = Path("data/synthetic")  # make_synthetic's output
SOURCES_FILE = "sources.json"  # written there by make_synthetic: where each synthetic dataset is


@dataclass(frozen=True)
class DataSection:
    source: Literal["synthetic", "real"] = "synthetic"
    datasets: dict = field(default_factory=dict)  # source real: NAME -> {kind, root, train, val, sigmas}
