"""One person instance as the top-down pipeline sees it, and the report of what was skipped and why.

Shape alphabet: K keypoints. Coordinates are 0-based image pixels whose integers are pixel centres.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PersonRecord:
    """A person to crop: where the image is, the crop's center/scale, and the joints (zeros for detections)."""

    key: str  # unique within a split, no dots (DALI takes the text after the first dot as the extension)
    image_path: Path
    image_id: int
    center: np.ndarray  # (2,) float32
    scale: np.ndarray  # (2,) float32, in units of 200 px
    joints: np.ndarray  # (K, 2) float32
    visible: np.ndarray  # (K,) float32 in {0, 1}
    score: float = 1.0  # box score: 1 for ground-truth boxes, the detector's otherwise
    annotation_id: int = -1  # -1 for detections
    extra: dict = field(default_factory=dict)  # dataset-specific fields kept in the shard's json

    @property
    def area(self) -> float:
        """(scale * 200) product: the area the reference's OKS-NMS uses."""
        return float(self.scale[0] * 200.0 * self.scale[1] * 200.0)


@dataclass
class SkipReport:
    """Samples that could not be used, counted by reason, with the first few places for each reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(where)

    def merge(self, other: SkipReport) -> SkipReport:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            shown = self.examples.setdefault(reason, [])
            shown.extend(other.examples.get(reason, [])[: self.max_examples - len(shown)])
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}

    def summary(self) -> str:
        if not self.total:
            return "skipped: none"
        parts = [f"{reason}: {n} (e.g. {self.examples[reason][0]})" for reason, n in sorted(self.counts.items())]
        return f"skipped {self.total}: " + "; ".join(parts)
