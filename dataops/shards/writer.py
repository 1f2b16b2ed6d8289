"""Write a dataset split as WebDataset tar shards, one sample per person, with DALI index files and a manifest.

Per sample `KEY` (no dots in KEY: DALI takes the text after the first dot as the extension):
    KEY.jpg       the person's image region (default) or the whole original image, JPEG
    KEY.geom.f32  float32 [cx, cy, sw, sh, offset_x, offset_y, score, area, image_w, image_h]
                  center/scale in image pixels; offset = the region's top-left corner in the image
    KEY.kpt.f32   float32 [K, 3]: x, y (image pixels), visibility 0/1
    KEY.half.f32  float32 [11]: upper-draw half-body cx, cy, sw, sh; lower-draw cx, cy, sw, sh;
                  has_upper, has_lower, number of visible joints
    KEY.ids.i64   int64 [image_id, annotation_id (-1 for detections)]
    KEY.json      image id, annotation id, image file, keypoint set, dataset fields
Numbers DALI's graph needs are raw little-endian float32, since DALI cannot parse JSON.

Region storage (store="region"): the part of the image that any augmentation of the sample can read (the
rotated crop's disc at the largest scale, over the plain and half-body boxes, clipped to the image), encoded
as JPEG quality 95 with 4:4:4 chroma; geometry stays exact through the recorded offset. A region that covers
most of the image (region_max_fraction) keeps the original bytes instead: no saving to be had there. store="image" keeps
the original JPEG bytes (decoded whole for every person, as the reference's loader does).

Determinism and resumption: shard i always holds records [i*n, (i+1)*n) of the split (records that cannot be
used are skipped, counted by reason, and leave their shard shorter), tar members carry fixed metadata (mtime 0,
uid 0), so the same input and parameters give byte-identical shards. Each shard is written to a temporary file
and renamed when complete, with its index and a small `.done.json` record; a restarted run keeps every shard
whose record matches (same records, same parameters) and writes only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from dataops.augment import AugmentConfig, half_body_options, sample_region
from dataops.datasets.records import PersonRecord, SkipReport
from dataops.shards.manifest import FORMAT_VERSION, manifest_path
from transpose.keypoints import KeypointSet


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 256
    store: str = "region"  # "region" or "image"
    jpeg_quality: int = 95
    region_max_fraction: float = 0.8  # a region covering more of the image than this keeps the original bytes
    aspect_ratio: float = 0.75  # w/h of the model input: sets the crop height from its width
    augment: AugmentConfig = AugmentConfig()  # sets the margin of stored regions
    workers: int = 2

    def fingerprint(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "workers"}
        return hashlib.sha256(json.dumps([FORMAT_VERSION, fields], sort_keys=True).encode()).hexdigest()[:16]


class _TarBuilder:
    """A tar in memory with fixed member metadata, recording each member's data offset for the DALI index."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.index_lines: list[str] = []

    def add_sample(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        parts = []
        for ext, payload in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            if len(info.name) >= 100:
                raise ValueError(f"sample key {key!r} is too long for a one-block tar header")
            header_at = self.tar.offset
            info.size = len(payload)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(payload))
            parts.append(f"{ext} {header_at + tarfile.BLOCKSIZE} {len(payload)} {info.name}")
        self.index_lines.append(" ".join(parts))

    def finish(self) -> tuple[bytes, str]:
        self.tar.close()
        index = f"v1.2 {len(self.index_lines)}\n" + "".join(line + "\n" for line in self.index_lines)
        return self.buffer.getvalue(), index


def _encode_sample(record: PersonRecord, kset: KeypointSet, config: ShardConfig, report: SkipReport):
    """Read, validate and pack one record; returns the members or None (skip counted in report)."""
    path = Path(record.image_path)
    numbers = (record.center, record.scale, record.joints, record.visible, [record.score])
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in numbers):
        report.add("non-finite numbers", f"{path} (sample {record.key}): NaN or inf in its box, joints or score")
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        report.add("missing image", f"{path} (sample {record.key})")
        return None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or not _complete_jpeg(raw):
        report.add("corrupt image", f"{path} (sample {record.key}): not a complete JPEG")
        return None
    height, width = image.shape[:2]
    # half-body boxes need the set's body halves (COCO's and MPII's are known; a set of one's own has none)
    options = (
        half_body_options(record.joints, record.visible, kset.upper_body, config.aspect_ratio)
        if kset.upper_body
        else {}
    )
    payload, offset = raw, (0, 0)
    if config.store == "region":
        x0, y0, x1, y1 = sample_region(
            record.center, record.scale, options, config.augment, config.aspect_ratio, width, height
        )
        if x1 <= x0 or y1 <= y0:
            report.add("box outside the image", f"{path} (sample {record.key})")
            return None
    if config.store == "region" and (x1 - x0) * (y1 - y0) <= config.region_max_fraction * width * height:
        params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        ok, encoded = cv2.imencode(".jpg", image[y0:y1, x0:x1], params)
        if not ok:
            report.add("unencodable region", f"{path} (sample {record.key})")
            return None
        payload, offset = encoded.tobytes(), (x0, y0)
    geom = [*record.center, *record.scale, *offset, record.score, record.area, width, height]
    upper = options.get(1, (np.zeros(2), np.zeros(2)))
    lower = options.get(2, (np.zeros(2), np.zeros(2)))
    half = [*upper[0], *upper[1], *lower[0], *lower[1], 1 in options, 2 in options, float((record.visible > 0).sum())]
    kpt = np.concatenate([record.joints, record.visible[:, None]], axis=1)
    if not all(np.isfinite(np.asarray(v, np.float32)).all() for v in (geom, half, kpt)):
        report.add("non-finite numbers", f"{path} (sample {record.key}): NaN or inf in its box or joints")
        return None
    meta = {
        "key": record.key,
        "image_id": record.image_id,
        "annotation_id": record.annotation_id,
        "image": path.name,
        "keypoint_set": kset.name,
        **record.extra,
    }
    return [
        ("jpg", payload),
        ("geom.f32", np.asarray(geom, "<f4").tobytes()),
        ("kpt.f32", np.asarray(kpt, "<f4").tobytes()),
        ("half.f32", np.asarray(half, "<f4").tobytes()),
        ("ids.i64", np.asarray([record.image_id, record.annotation_id], "<i8").tobytes()),
        ("json", json.dumps(meta, sort_keys=True).encode()),
    ]


SHARD_FACTS = ("shard", "samples", "bytes", "sha256", "index_bytes", "index_sha256")  # per tar, in the manifest


def _complete_jpeg(raw: bytes) -> bool:
    """A JPEG whose end-of-image marker follows its last start-of-scan (OpenCV decodes truncated files
    without complaint; DALI's decoder does not, and cannot skip a sample)."""
    if raw[:2] != b"\xff\xd8":
        return False
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan >= 0 and raw.rfind(b"\xff\xd9") > last_scan


def _write_shard(job) -> dict:
    """Worker: write one shard atomically (tar, idx, done record); returns its summary."""
    shard_path, records, kset, config = job
    report = SkipReport()
    builder = _TarBuilder()
    for record in records:
        members = _encode_sample(record, kset, config, report)
        if members is not None:
            builder.add_sample(record.key, members)
    data, index = builder.finish()
    shard_path = Path(shard_path)
    summary = {
        "shard": shard_path.name,
        "samples": len(builder.index_lines),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "index_bytes": len(index.encode()),
        "index_sha256": hashlib.sha256(index.encode()).hexdigest(),
        "records": _records_digest(records),
        "config": _shard_fingerprint(config, kset),
        "skipped": report.as_dict(),
    }
    for path, payload in ((shard_path.with_suffix(".idx"), index.encode()), (shard_path, data)):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    done = shard_path.with_suffix(".done.json")
    done.with_name(done.name + ".partial").write_text(json.dumps(summary, sort_keys=True))
    os.replace(done.with_name(done.name + ".partial"), done)
    return summary


def _records_digest(records: Iterable[PersonRecord]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(
            json.dumps(
                [
                    r.key,
                    str(r.image_path),
                    r.center.tolist(),
                    r.scale.tolist(),
                    r.joints.tolist(),
                    r.visible.tolist(),
                    r.score,
                ],
            ).encode()
        )
    return digest.hexdigest()[:16]


def _shard_fingerprint(config: ShardConfig, kset: KeypointSet) -> str:
    """What a shard's bytes depend on besides its records: the shard parameters and the keypoint set."""
    return hashlib.sha256(json.dumps([config.fingerprint(), kset.to_dict()], sort_keys=True).encode()).hexdigest()[:16]


def _finished(shard_path: Path, records: Sequence[PersonRecord], kset: KeypointSet, config: ShardConfig) -> dict | None:
    done = shard_path.with_suffix(".done.json")
    if not (done.is_file() and shard_path.is_file() and shard_path.with_suffix(".idx").is_file()):
        return None
    try:
        summary = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    same = all(key in summary for key in SHARD_FACTS) and summary.get("records") == _records_digest(records)
    same = same and summary.get("config") == _shard_fingerprint(config, kset)
    return summary if same and shard_path.stat().st_size == summary.get("bytes") else None


@dataclass
class ShardPlan:
    """What `write_shards` will do for a split: its records cut into shards, and which of them are already there."""

    chunks: list[Sequence[PersonRecord]]  # shard i holds records [i n, (i+1) n)
    paths: list[Path]  # {split}-NNNNN.tar, one per chunk
    stale: list[Path]  # tars of an earlier, larger run of the split (removed with their index and record)
    kept: dict[int, dict]  # shard index -> summary of a finished shard whose records and parameters match

    @property
    def todo(self) -> list[int]:
        """The shards to write, in order."""
        return [i for i in range(len(self.chunks)) if i not in self.kept]


def plan_shards(
    records: Sequence[PersonRecord], kset: KeypointSet, out_dir: str | Path, split: str, config: ShardConfig
) -> ShardPlan:
    """Cut `records` into shards of `config.samples_per_shard` and find, in `out_dir`, the finished shards to keep
    and the stale ones of a larger earlier run; reads only the small `.done.json` records, changes nothing."""
    out_dir = Path(out_dir)
    n = config.samples_per_shard
    chunks = [records[i : i + n] for i in range(0, len(records), n)]
    paths = [out_dir / f"{split}-{i:05d}.tar" for i in range(len(chunks))]
    planned = set(paths)
    stale = sorted(path for path in out_dir.glob(f"{split}-*.tar") if path not in planned)
    kept = {}
    for i, (path, chunk) in enumerate(zip(paths, chunks)):
        summary = _finished(path, chunk, kset, config)
        if summary is not None:
            kept[i] = summary
    return ShardPlan(chunks, paths, stale, kept)


def write_shards(
    records: Sequence[PersonRecord],
    kset: KeypointSet,
    out_dir: str | Path,
    split: str,
    config: ShardConfig = ShardConfig(),
    read_report: SkipReport | None = None,
    progress: bool = True,
    dataset_kind: str = "coco",
    ground_truth: str | Path | None = None,
) -> dict:
    """Write `records` as `{out_dir}/{split}-NNNNN.tar` (+ `.idx`) and `{out_dir}/{split}-manifest.json`.

    Returns the manifest: the split's dataset kind and keypoint set (`dataops.shards.manifest`), counts, bytes
    and checksums per shard, and the skipped samples by reason (those of reading, `read_report`, and those of
    sharding). An evaluation split's `ground_truth` file is copied beside the shards as
    `{split}-ground_truth{suffix}` and named in the manifest.
    """
    if config.store not in ("region", "image"):
        raise ValueError(f"store must be 'region' or 'image', got {config.store!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = None
    if ground_truth is not None:
        truth = out_dir / f"{split}-ground_truth{Path(ground_truth).suffix}"
        shutil.copyfile(ground_truth, truth.with_name(truth.name + ".partial"))
        os.replace(truth.with_name(truth.name + ".partial"), truth)
    plan = plan_shards(records, kset, out_dir, split, config)
    for stale in plan.stale:
        for suffix in (".tar", ".idx", ".done.json"):
            stale.with_suffix(suffix).unlink(missing_ok=True)
    chunks, paths, todo = plan.chunks, plan.paths, plan.todo
    summaries: dict[int, dict] = dict(plan.kept)
    bar = _progress(len(chunks), f"shards {split}", initial=len(chunks) - len(todo)) if progress else None
    jobs = [(paths[i], chunks[i], kset, config) for i in todo]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for i, summary in zip(todo, pool.map(_write_shard, jobs)):
                summaries[i] = summary
                bar and bar.update(1)
    else:
        for i, job in zip(todo, jobs):
            summaries[i] = _write_shard(job)
            bar and bar.update(1)
    bar and bar.close()
    skipped = SkipReport()
    if read_report is not None:
        skipped.merge(read_report)
    for i in sorted(summaries):
        part = summaries[i]["skipped"]
        for reason, count in part["by_reason"].items():
            skipped.counts[reason] += count
            shown = skipped.examples.setdefault(reason, [])
            shown.extend(part["examples"].get(reason, [])[: skipped.max_examples - len(shown)])
    manifest = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "dataset_kind": dataset_kind,
        "keypoints": kset.to_dict(),
        "ground_truth": truth.name if truth else None,
        "ground_truth_sha256": hashlib.sha256(truth.read_bytes()).hexdigest() if truth else None,
        "samples": sum(s["samples"] for s in summaries.values()),
        "bytes": sum(s["bytes"] for s in summaries.values()),
        "config": {k: v for k, v in asdict(config).items() if k != "workers"},
        "shards": [{k: summaries[i][k] for k in SHARD_FACTS} for i in sorted(summaries)],
        "skipped": skipped.as_dict(),
    }
    path = manifest_path(out_dir, split)
    path.with_name(path.name + ".partial").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(path.with_name(path.name + ".partial"), path)
    if progress and len(todo) < len(chunks):
        print(f"{split}: kept {len(chunks) - len(todo)} finished shards, wrote {len(todo)}")
    return manifest


def _progress(total: int, desc: str, initial: int = 0):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, initial=initial, unit="shard")
