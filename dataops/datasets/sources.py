"""Where a dataset's files are, and its splits read into person records, by dataset kind.

A dataset source is a kind (`transpose.evaluation.protocols`: coco = any COCO-format keypoint file, mpii =
MPII's json + gt_valid.mat) and the files of its train and val splits:

    coco   train: annotations (COCO keypoint json), images (the folder its file_names are relative to; they may
                  hold sub-folders, as PoseTrack's do)
           val:   annotations, images, and optionally detections (a COCO person-detection results file)
           -> shard splits train, val (GT boxes), val_det (the detector's boxes, when given); both val splits
              are scored against the val annotations
    mpii   train: annotations (HRNet/MMPose json), images
           val:   annotations, images, ground_truth (gt_valid.mat) -> shard splits train, val

The keypoint set is the dataset's own: a COCO-format file's keypoint category (with its `sigmas`, or the
source's `sigmas` param for a set that is not COCO's), or MPII's joints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dataops.datasets.coco import load_keypoint_file, read_coco_detections, read_coco_keypoints
from dataops.datasets.mpii import read_mpii
from dataops.datasets.records import PersonRecord, SkipReport
from transpose.evaluation.json_input import is_number
from transpose.evaluation.protocols import DATASET_KINDS
from transpose.keypoints import MPII, KeypointSet

SPLIT_KEYS = {"annotations", "images", "detections", "ground_truth"}


def _is_sigma(value) -> bool:
    """A positive finite number (a bool, a string or NaN is not)."""
    try:
        return is_number(value) and math.isfinite(float(value)) and value > 0
    except OverflowError:
        return False


@dataclass(frozen=True)
class SplitFiles:
    annotations: Path
    images: Path
    detections: Path | None = None  # coco val: person boxes of a detector -> the val_det split
    ground_truth: Path | None = None  # mpii val: gt_valid.mat

    @classmethod
    def from_dict(cls, values: dict, root: Path, where: str) -> SplitFiles:
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping of {', '.join(sorted(SPLIT_KEYS))} to paths")
        unknown = sorted(set(values) - SPLIT_KEYS)
        missing = [k for k in ("annotations", "images") if not values.get(k)]
        if unknown or missing:
            problems = [f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}"] if unknown else []
            problems += [f"missing {', '.join(f'{where}.{k}' for k in missing)}"] if missing else []
            raise ValueError(f"{'; '.join(problems)} (keys: {', '.join(sorted(SPLIT_KEYS))})")
        paths = {}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}.{key} must be a path, got {value!r}")
            paths[key] = root / value if value else None
        return cls(**paths)


@dataclass(frozen=True)
class ShardSplit:
    """One split to shard: its records, what reading skipped, its keypoint set and the file it is scored on."""

    name: str
    records: list[PersonRecord]
    report: SkipReport
    keypoints: KeypointSet
    ground_truth: Path | None  # None for training splits
    training: bool


@dataclass(frozen=True)
class DatasetSource:
    name: str  # its shards go to SHARDS/NAME
    kind: str
    train: SplitFiles
    val: SplitFiles
    sigmas: tuple[float, ...] | None = None  # OKS sigmas for a COCO-format set without its own

    @classmethod
    def from_dict(cls, name: str, values: dict, where: str, base: Path = Path(".")) -> DatasetSource:
        """From params / sources.json: {kind, root (optional, paths are relative to it), train, val, sigmas}."""
        where = f"{where}.{name}"
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping with kind, train, val")
        unknown = sorted(set(values) - {"kind", "root", "train", "val", "sigmas"})
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)} (keys: kind, root, train, val, sigmas)"
            )
        kind = values.get("kind")
        if kind not in DATASET_KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(DATASET_KINDS)}, got {kind!r}")
        root = base / str(values.get("root") or ".")
        sigmas = values.get("sigmas")
        if sigmas is not None and (not isinstance(sigmas, list) or not all(_is_sigma(s) for s in sigmas)):
            raise ValueError(f"{where}.sigmas must be a list of positive numbers (one per keypoint), got {sigmas!r}")
        source = cls(
            name=name,
            kind=kind,
            train=SplitFiles.from_dict(values.get("train"), root, f"{where}.train"),
            val=SplitFiles.from_dict(values.get("val"), root, f"{where}.val"),
            sigmas=tuple(float(s) for s in sigmas) if sigmas else None,
        )
        if kind == "mpii" and source.val.ground_truth is None:
            raise ValueError(f"missing {where}.val.ground_truth: MPII's PCKh is scored against gt_valid.mat")
        if kind == "mpii" and source.val.detections is not None:
            raise ValueError(f"{where}.val.detections: MPII is evaluated on its given boxes only")
        return source

    def input_files(self) -> list[tuple[str, Path, bool]]:
        """(label, path, is_folder) of everything reading needs."""
        out = []
        for split, files in (("train", self.train), ("val", self.val)):
            for key in ("annotations", "images", "detections", "ground_truth"):
                path = getattr(files, key)
                if path is not None:
                    out.append((f"{self.name}.{split}.{key}", path, key == "images"))
        return out

    def missing_files(self) -> list[str]:
        """What is not there, one line each naming the entry and the path."""
        lines = []
        for label, path, folder in self.input_files():
            if not (path.is_dir() if folder else path.is_file()):
                lines.append(f"{label}: {path} is not {'a folder' if folder else 'a file'}")
        return lines

    def keypoints(self) -> KeypointSet:
        """The dataset's keypoint set, read from its train annotations (checked before anything is sharded)."""
        if self.kind == "mpii":
            return MPII
        _, kset = load_keypoint_file(self.train.annotations, self.sigmas)
        _, val_kset = load_keypoint_file(self.val.annotations, self.sigmas)
        if val_kset.names != kset.names:
            raise ValueError(
                f"{self.val.annotations}: its keypoints differ from {self.train.annotations}'s "
                f"({', '.join(val_kset.names)} vs {', '.join(kset.names)})"
            )
        if kset.sigmas is None:
            raise ValueError(
                f"{self.train.annotations}: the keypoint set {kset.name!r} has no OKS sigmas, which its COCO-format "
                f"evaluation needs: add 'sigmas' to the file's category, or set data.datasets.{self.name}.sigmas "
                f"({kset.num_keypoints} numbers)"
            )
        return kset

    def splits(self, aspect_ratio: float) -> Iterator[ShardSplit]:
        """Each split read into records (lazily: one at a time), with its keypoint set and ground truth."""
        if self.kind == "mpii":
            for name, files, training in (("train", self.train, True), ("val", self.val, False)):
                records, report = read_mpii(files.annotations, files.images)
                yield ShardSplit(name, records, report, MPII, None if training else files.ground_truth, training)
            return
        kset = self.keypoints()
        records, report, _ = read_coco_keypoints(self.train.annotations, self.train.images, aspect_ratio, self.sigmas)
        yield ShardSplit("train", records, report, kset, None, True)
        val = self.val
        records, report, _ = read_coco_keypoints(val.annotations, val.images, aspect_ratio, self.sigmas)
        yield ShardSplit("val", records, report, kset, val.annotations, False)
        if val.detections is not None:
            records, report, _ = read_coco_detections(
                val.annotations, val.detections, val.images, aspect_ratio, sigmas=self.sigmas
            )
            yield ShardSplit("val_det", records, report, kset, val.annotations, False)


def read_sources(values: dict, where: str, base: Path = Path(".")) -> list[DatasetSource]:
    """Every source of a {name: {kind, root, train, val, sigmas}} mapping, checked."""
    if not isinstance(values, dict) or not values:
        raise ValueError(f"{where} must name at least one dataset: {{NAME: {{kind, train, val}}}}")
    return [DatasetSource.from_dict(name, spec, where, base) for name, spec in values.items()]
