"""A split's shard manifest read back: the facts of its data that every later stage takes from here.

`{split}-manifest.json` (written by `write_shards`) records, besides counts, checksums and skips:

    dataset_kind   how the split is scored (`transpose.evaluation.protocols`: coco | mpii)
    keypoints      its keypoint set (names, flip pairs, skeleton, OKS sigmas), read from the dataset's own file
    config         what the shards were cut for: the crop aspect ratio, the augmentation reach, the storage
    ground_truth   for evaluation splits, the file the split is scored against (copied beside the shards)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dataops.augment import AugmentConfig
from transpose.keypoints import KeypointSet

FORMAT_VERSION = 3  # 3: the manifest records each index file's size and sha256


class ManifestError(ValueError):
    """A shard manifest that is missing, old or unreadable; the message names it and says to re-shard."""


@dataclass(frozen=True)
class ShardManifest:
    path: Path
    split: str
    dataset_kind: str
    keypoints: KeypointSet
    aspect_ratio: float  # w / h of the crops the shards were cut for
    samples: int
    store: str  # "region" | "image"
    augment: AugmentConfig  # the augmentation the stored regions reach
    ground_truth: Path | None  # evaluation splits: the file the split is scored against
    raw: dict

    @property
    def reach(self) -> AugmentConfig | None:
        """The augmentation the stored regions were cut for; None when the shards keep whole images."""
        return None if self.store == "image" else self.augment

    def check_aspect_ratio(self, image_size: tuple[int, int], where: str) -> None:
        """Crops for an input of (h, w) need shards cut at w / h: an error naming both otherwise."""
        h, w = image_size
        if abs(w / h - self.aspect_ratio) > 1e-6:
            raise ManifestError(
                f"{where}: image_size [{h}, {w}] (aspect {w / h:.4g}) does not match the shards {self.path} cut for "
                f"aspect ratio {self.aspect_ratio:.4g}: re-shard with shard.aspect_ratio = {w / h:.4g}, or use an "
                "input size of that aspect"
            )


def manifest_path(shard_dir: str | Path, split: str) -> Path:
    return Path(shard_dir) / f"{split}-manifest.json"


def read_manifest(shard_dir: str | Path, split: str) -> ShardManifest:
    """The manifest of `shard_dir`'s `split`; a clear error when it is missing or of an older format."""
    path = manifest_path(shard_dir, split)
    if not path.is_file():
        known = sorted(p.name.removesuffix("-manifest.json") for p in Path(shard_dir).glob("*-manifest.json"))
        raise ManifestError(
            f"no shard manifest {path}: run the shard stage (dvc repro shard), or fix the shards folder / split "
            f"(splits there: {', '.join(known) or 'none'})"
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not valid JSON ({err}): re-shard this split") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise ManifestError(
            f"{path} is of shard format {version}, this code reads format {FORMAT_VERSION}: re-shard (dvc repro shard)"
        )
    config = data.get("config", {})
    try:
        ground_truth = data.get("ground_truth")
        return ShardManifest(
            path=path,
            split=str(data["split"]),
            dataset_kind=str(data["dataset_kind"]),
            keypoints=KeypointSet.from_dict(data["keypoints"], f"{path}: keypoints"),
            aspect_ratio=float(config["aspect_ratio"]),
            samples=int(data["samples"]),
            store=str(config.get("store", "region")),
            augment=AugmentConfig(**config.get("augment", {})),
            ground_truth=path.parent / ground_truth if ground_truth else None,
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{path}: malformed manifest ({err!r}): re-shard this split") from None


def stored_reach(shard_dir: str | Path, split: str) -> AugmentConfig | None:
    """The augmentation a split's stored regions were cut for, so that a loader can check that its own stays
    inside them; None when the shards keep whole images (any augmentation fits)."""
    return read_manifest(shard_dir, split).reach
