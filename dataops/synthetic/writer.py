"""Write the synthetic dataset in the official COCO and MPII layouts, images spread over worker processes.

Layout under `out_dir`:
    coco/images/{train,val}/<image id, 12 digits>.jpg
    coco/annotations/person_keypoints_{train,val}.json
    coco/person_detection_results/synthetic_val_detections.json
    mpii/images/<9 digits>.jpg                  (3xxxxxxxx train, 4xxxxxxxx valid)
    mpii/annot/{train,valid}.json               (HRNet / MMPose layout, 1-based)
    mpii/annot/gt_valid.mat                     (official layout, 1-based)
    synthetic_summary.json                      (the config and the statistics printed by the CLI)

COCO annotations: bbox = tight box of the visible person mask; `area` = the mask's pixel count, i.e. the
segment area as in COCO (not the box area: the box of a person with spread arms is mostly background, and
using it would make OKS more lenient and AP less telling); segmentation = compressed RLE of that mask.
Image ids: train 1..N, val 1000001..; annotation id = image id * 100 + the person's rank in the image.
Every image depends only on (seed, split, index), so the bytes are the same for any number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.detections import box_iou, fake_detections
from dataops.synthetic.scene import SPLITS, render_sample

VAL_ID_OFFSET = 1_000_000
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: dataops.synthetic"


def image_id(split: str, index: int) -> int:
    return index + 1 + (VAL_ID_OFFSET if split == "coco_val" else 0)


def _coco_category() -> dict:
    from transpose.keypoints import COCO  # here, not at the top: `transpose` imports torch, which workers skip

    return {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO.names),
        "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton],
    }


def mask_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE of an image-sized mask that is zero outside `mask` placed at (x0, y0).

    Runs are counted in column-major order over the image, starting with a run of zeros, as in COCO;
    only the mask's columns are materialised.
    """
    h, w = mask.shape
    columns = np.zeros((w, height), np.uint8)
    columns[:, y0 : y0 + h] = mask.T
    flat = columns.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts.insert(0, 0)
    counts[0] += x0 * height  # the zero columns on the left
    trailing = (width - x0 - w) * height
    if not flat[-1]:
        counts[-1] += trailing
    elif trailing:
        counts.append(trailing)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _coco_record(cfg: SyntheticConfig, split: str, index: int, sample) -> dict:
    width, height = cfg.image_size
    img_id = image_id(split, index)
    anns = []
    for rank, person in enumerate(sample.people):
        kpts = person.keypoints
        anns.append(
            {
                "id": img_id * 100 + rank,
                "image_id": img_id,
                "category_id": 1,
                "bbox": [int(v) for v in person.bbox],
                "area": int(person.area),
                "iscrowd": 0,
                "num_keypoints": int((kpts[:, 2] > 0).sum()),
                "keypoints": [round(float(v), 2) if k % 3 < 2 else int(v) for k, v in enumerate(kpts.reshape(-1))],
                "segmentation": mask_rle(person.mask, person.bbox[0], person.bbox[1], height, width),
            }
        )
    record = {
        "image": {"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": width, "height": height},
        "annotations": anns,
        "people": [(p.height, p.kind, p.facing) for p in sample.people],
    }
    if split == "coco_val":
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS[split], index, 1]))
        dets = fake_detections(sample.people, sample.things, cfg, rng)
        record["detections"] = [
            {"image_id": img_id, "category_id": 1, "bbox": box, "score": round(score, 4)} for box, score in dets
        ]
    return record


def _mpii_record(cfg: SyntheticConfig, split: str, index: int, sample) -> dict:
    name = f"{SPLITS[split]}{index:08d}.jpg"
    entries = []
    for person in sample.people:
        if not person.mpii_ok:
            continue
        joints = np.where(person.mpii_labelled[:, None], person.mpii_joints + 1.0, -1.0)
        entries.append(
            {
                "image": name,
                "center": [round(float(v) + 1.0, 2) for v in person.center],
                "scale": float(person.scale),
                "joints": [[round(float(x), 2), round(float(y), 2)] for x, y in joints],
                "joints_vis": [int(v) for v in person.mpii_labelled],
                "head_box": [[round(float(x) + 1.0, 2), round(float(y) + 1.0, 2)] for x, y in person.head_box],
            }
        )
    return {"image": name, "entries": entries}


_WORKER: dict = {}


def _init_worker(cfg: SyntheticConfig, dirs: dict[str, str]) -> None:
    cv2.setNumThreads(1)
    _WORKER["cfg"], _WORKER["dirs"] = cfg, dirs


def _work(task: tuple[str, int]) -> dict:
    split, index = task
    cfg, dirs = _WORKER["cfg"], _WORKER["dirs"]
    sample = render_sample(cfg, split, index)
    if split.startswith("coco"):
        record = _coco_record(cfg, split, index, sample)
        file_name = record["image"]["file_name"]
    else:
        record = _mpii_record(cfg, split, index, sample)
        file_name = record["image"]
    ok, buf = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {split} image {index}")
    (Path(dirs[split]) / file_name).write_bytes(buf.tobytes())
    record["split"] = split
    return record


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # no bar without tqdm
        return None
    return tqdm(total=total, desc="synthetic images", unit="img", disable=not enabled)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")))


def _write_gt_valid_mat(path: Path, entries: list[dict]) -> None:
    """Official gt_valid.mat via MpiiGroundTruth.save_mat, with a fixed header text (scipy stamps the time)."""
    from transpose.evaluation import MpiiGroundTruth  # imports torch: only the main process gets here

    n = len(entries)
    pos = np.zeros((16, 2, n))
    missing = np.zeros((16, n))
    heads = np.zeros((2, 2, n))
    for i, e in enumerate(entries):
        pos[:, :, i] = np.asarray(e["joints"], dtype=np.float64)
        missing[:, i] = 1 - np.asarray(e["joints_vis"])
        heads[:, :, i] = np.asarray(e["head_box"], dtype=np.float64)
    MpiiGroundTruth(pos_gt_src=pos, jnt_missing=missing, headboxes_src=heads).save_mat(path)
    data = bytearray(path.read_bytes())
    data[:116] = MAT_HEADER.ljust(116, b"\0")
    path.write_bytes(bytes(data))


def _percentiles(values) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 10, 50, 90, 100])
    return {k: round(float(v), 1) for k, v in zip(("min", "p10", "median", "p90", "max"), q)}


def _match_detections(anns: list[dict], dets: list[dict]) -> tuple[int, int, int]:
    """(true positives, false positives, missed people with keypoints), greedy by score at IoU 0.5 per image."""
    by_image: dict[int, list] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    tp = fp = 0
    matched: set[int] = set()
    for d in sorted(dets, key=lambda d: -d["score"]):
        best, best_iou = None, 0.5
        for a in by_image.get(d["image_id"], []):
            iou = box_iou(d["bbox"], a["bbox"])
            if a["id"] not in matched and iou >= best_iou:
                best, best_iou = a["id"], iou
        if best is None:
            fp += 1
        else:
            tp += 1
            matched.add(best)
    missed = sum(1 for a in anns if a["num_keypoints"] > 0 and a["id"] not in matched)
    return tp, fp, missed


def _coco_stats(images, anns, people, dets=None) -> dict:
    v = np.array([a["keypoints"][2::3] for a in anns], dtype=np.int64).reshape(-1, 17)
    counts = {f"v{k}": int((v == k).sum()) for k in (0, 1, 2)}
    labelled = max(1, counts["v1"] + counts["v2"])
    stats = {
        "images": len(images),
        "instances": len(anns),
        "instances_with_keypoints": sum(1 for a in anns if a["num_keypoints"] > 0),
        "keypoints": counts,
        "visible_fraction_of_labelled": round(counts["v2"] / labelled, 3),
        "labelled_fraction": round(labelled / max(1, v.size), 3),
        "person_height_px": _percentiles([p[0] for p in people]),
        "sqrt_area_px": _percentiles([np.sqrt(a["area"]) for a in anns]),
        "poses": {k: sum(1 for p in people if p[1] == k) for k in sorted({p[1] for p in people})},
        "facing": {k: sum(1 for p in people if p[2] == k) for k in ("front", "side", "back")},
    }
    if dets is not None:
        tp, fp, missed = _match_detections(anns, dets)
        stats["detections"] = {"boxes": len(dets), "true_positives": tp, "false_positives": fp, "missed": missed}
    return stats


def generate(config: SyntheticConfig, out_dir: str | Path, workers: int | None = None, progress: bool = True) -> dict:
    """Render and write the dataset described by `config` under `out_dir`; return the summary (also written).

    workers: processes for rendering (default: the CPU count; 1 renders in this process). The output does
    not depend on it. Stale images from an earlier, larger run in the same folders are removed.
    """
    out = Path(out_dir)
    dirs = {
        "coco_train": out / "coco" / "images" / "train",
        "coco_val": out / "coco" / "images" / "val",
        "mpii_train": out / "mpii" / "images",
        "mpii_valid": out / "mpii" / "images",
    }
    counts = {
        "coco_train": config.coco_train,
        "coco_val": config.coco_val,
        "mpii_train": config.mpii_train,
        "mpii_valid": config.mpii_valid,
    }
    for split, folder in dirs.items():
        if counts[split] or split.startswith("coco"):
            folder.mkdir(parents=True, exist_ok=True)
    tasks = [(split, i) for split, n in counts.items() for i in range(n)]
    workers = max(1, min(workers or multiprocessing.cpu_count(), len(tasks) or 1))
    args = (config, {k: str(v) for k, v in dirs.items()})
    records: list[dict] = []
    bar = _progress(len(tasks), progress)
    if workers == 1:
        threads = cv2.getNumThreads()
        _init_worker(*args)
        try:
            for task in tasks:
                records.append(_work(task))
                if bar is not None:
                    bar.update()
        finally:
            cv2.setNumThreads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
            for record in pool.imap(_work, tasks, chunksize=4):
                records.append(record)
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()

    expected: dict[str, set[str]] = {}  # image folders written -> their file names (others there are stale)
    summary: dict = {"config": config.to_dict(), "splits": {}}
    for split, name in (("coco_train", "train"), ("coco_val", "val")):
        recs = [r for r in records if r["split"] == split]
        images = [r["image"] for r in recs]
        anns = [a for r in recs for a in r["annotations"]]
        expected.setdefault(str(dirs[split]), set()).update(i["file_name"] for i in images)
        coco = {
            "info": {"description": f"dataops.synthetic people, seed {config.seed}", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": [_coco_category()],
        }
        _write_json(out / "coco" / "annotations" / f"person_keypoints_{name}.json", coco)
        dets = None
        if split == "coco_val":
            dets = [d for r in recs for d in sorted(r["detections"], key=lambda d: -d["score"])]
            _write_json(out / "coco" / "person_detection_results" / "synthetic_val_detections.json", dets)
        summary["splits"][split] = _coco_stats(images, anns, [p for r in recs for p in r["people"]], dets)
    if config.mpii_train or config.mpii_valid:
        for split, name in (("mpii_train", "train"), ("mpii_valid", "valid")):
            recs = [r for r in records if r["split"] == split]
            entries = [e for r in recs for e in r["entries"]]
            expected.setdefault(str(dirs[split]), set()).update(r["image"] for r in recs)
            plain = [{k: v for k, v in e.items() if k != "head_box"} for e in entries]
            _write_json(out / "mpii" / "annot" / f"{name}.json", plain)
            if split == "mpii_valid":
                _write_gt_valid_mat(out / "mpii" / "annot" / "gt_valid.mat", entries)
            vis = np.array([e["joints_vis"] for e in entries], dtype=np.int64).reshape(-1, 16)
            summary["splits"][split] = {
                "images": len(recs),
                "entries": len(entries),
                "labelled_joint_fraction": round(float(vis.mean()) if vis.size else 0.0, 3),
                "scale": _percentiles([e["scale"] for e in entries]),
            }
    for folder, names in expected.items():
        path = Path(folder)
        if path.is_dir():
            for stale in path.glob("*.jpg"):
                if stale.name not in names:
                    stale.unlink()
    _write_json(out / "synthetic_summary.json", summary)
    return summary


def dataset_sources(config: SyntheticConfig) -> dict:
    """Where `generate` puts each dataset, as dataset sources (`dataops.datasets.sources`: kind, train and val
    files, paths relative to the output folder)."""
    sources = {
        "coco": {
            "kind": "coco",
            "train": {"annotations": "coco/annotations/person_keypoints_train.json", "images": "coco/images/train"},
            "val": {
                "annotations": "coco/annotations/person_keypoints_val.json",
                "images": "coco/images/val",
                "detections": "coco/person_detection_results/synthetic_val_detections.json",
            },
        }
    }
    if config.mpii_train or config.mpii_valid:
        sources["mpii"] = {
            "kind": "mpii",
            "train": {"annotations": "mpii/annot/train.json", "images": "mpii/images"},
            "val": {
                "annotations": "mpii/annot/valid.json",
                "images": "mpii/images",
                "ground_truth": "mpii/annot/gt_valid.mat",
            },
        }
    return sources
