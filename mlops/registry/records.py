"""What the registry records about a version: the data its gate metric was computed on, the version's tags
read back, and one promotion decision."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlops.fingerprints import evaluation_fingerprint

DEFAULT_ALIAS = "champion"
HISTORY_PREFIX = "promotion."
CHECKPOINT, CARD = "best.pth", "model.json"
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?")


class RegistryError(ValueError):
    """A registry request that cannot be served; the message says what to fix."""


class PromotionBusy(RegistryError):
    """Another promoter held the promotion turn of a registered model for longer than this one would wait."""


@dataclass(frozen=True)
class EvalData:
    """The data a gate metric was computed on, with its fingerprint."""

    dataset: str
    split: str
    annotations: str
    shards: str
    fingerprint: str

    @classmethod
    def from_files(cls, dataset: str, split: str, annotations: str | Path, shards: str | Path) -> EvalData:
        """Fingerprint the annotation file and the split's shard manifest(s) as they are now."""
        return cls(dataset, split, str(annotations), str(shards), evaluation_fingerprint(annotations, shards, split))

    def tags(self) -> dict[str, str]:
        return {f"data.{key}": value for key, value in asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> EvalData | None:
        if "data.fingerprint" not in tags:
            return None
        return cls(**{key: tags.get(f"data.{key}", "") for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version as this module tagged it."""

    name: str
    version: str
    run_id: str
    source: str
    gate_metric: str
    metrics: dict[str, float]
    data: EvalData | None
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # fingerprint[:16] -> metrics
    card: dict | None = None
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def value_on(self, metric: str, data: EvalData | None) -> float | None:
        """This version's `metric` on `data` (its own scores or a recorded re-evaluation), if known."""
        if data is None:
            return None
        if self.data is not None and self.data.fingerprint == data.fingerprint:
            return self.metrics.get(metric)
        return self.evaluations.get(data.fingerprint[:16], {}).get(metric)


@dataclass(frozen=True)
class Decision:
    """One promotion attempt: both figures on the candidate's data, and whether the alias moved."""

    time: str
    alias: str
    metric: str
    candidate: str
    candidate_value: float
    holder: str | None
    holder_value: float | None
    fingerprint: str
    moved: bool
    reason: str
    seq: int = 0

    @property
    def refused(self) -> bool:
        return self.reason.startswith("refused")


Evaluate = Callable[[VersionRecord, EvalData], Mapping[str, float]]
