"""COCO scale without COCO: the data path and evaluation at COCO's size, on label files the synthetic generator
writes without pixels (no download). Writes the `coco_scale` section of docs/benchmarks.md.

Command (from the repository root; about 15-25 minutes on 2 cores, most of it making the files once; they are
kept in --data and reused):

    .venv/bin/python benchmarks/coco_scale.py                 # COCO's size
    .venv/bin/python benchmarks/coco_scale.py --scale 0.05    # a quick run at 5% of it

Data (`dataops.synthetic.label_files`: label-only scenes labelled by the generator's own rules and records):
a train2017-sized keypoint file (118,287 images, ~149,813 persons with keypoints), a val2017-sized one (5000
images, ~6352 persons) with a ~104k-box detection file of the fake detector, and a fake pose estimator's
predictions for every detected box (its ground-truth person's keypoints with errors that grow with the box's
miss, confidences that follow the errors; on false positives a mean pose in the box), so that AP is neither 0
nor 1. The COCO results file is those predictions after the reference's rescoring and OKS-NMS.

Phases, each in a fresh process, timed (wall, os.wait4) with its peak RSS (its VmHWM and its workers'):
  read_plan     `read_coco_keypoints` of the training file and `plan_shards` (what the shard stage runs before
                it writes a tar), no pixels
  evaluate_cli  `transpose evaluate coco --ann VAL --results RESULTS` (checking, loadRes, COCOeval)
  validation    the trainer's validation after its forward passes (`transpose.engine.validation.
                score_predictions`): 2 ranks (gloo, 2 local processes, 1 thread each) each holding half of
                the predictions; gather, finiteness check, rescoring, OKS-NMS and COCOeval on rank 0, results
                broadcast to every rank
  shard_write   `write_shards` of a few thousand rendered 640x480 synthetic images (region storage, 2
                workers): images/s per core
read_plan and evaluate_cli also run at a quarter of the size: their time ratio against the size ratio shows
whether anything grows worse than linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from report import DEFAULT_REPORT, REPO_ROOT, command_line, cpu_description, write_section

DEFAULT_DATA = REPO_ROOT / "outputs" / "coco_scale"
SECTION = "coco_scale"
GIB = 2**30
SMALL_FRACTION = 0.25  # the second size of the linearity check, as a fraction of --scale
REPEATS = 2  # runs of read_plan and evaluate_cli at each size: targets take the slower, linearity the faster
POOL_FROM = 2000  # scenes: fewer are sampled in this process (a pool's start-up would cost more than it saves)
LINEAR_SLACK = 1.3  # a time ratio above this times the size ratio is flagged as worse than linear
SHARD_IMAGES = 3000  # rendered images for the shard-writing phase at scale 1
SHARD_WORKERS = 2
TIME_LIMIT_S = {"evaluate_cli": 60.0, "validation": 60.0, "read_plan": 30.0}
MEMORY_LIMIT = 2 * GIB


# --- measuring a process ------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One phase process: wall time, CPU time and peak RSS (its own or its waited-for workers'), its result."""

    wall_s: float
    cpu_s: float
    peak_rss: int  # bytes: the phase's own report (peak_rss_now), else os.wait4's
    returncode: int
    result: dict = field(default_factory=dict)  # the phase's RESULT line
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    log: str = ""


def peak_rss_now() -> int:
    """Peak RSS in bytes of this process (VmHWM) and of the children it has waited for (ru_maxrss).

    Not this process's own ru_maxrss, nor os.wait4's for an exec'd child: Linux carries the high-water mark of
    the memory a process had before exec (for a vfork'd child, its parent's) into ru_maxrss, so a large parent
    would lift every child's figure; VmHWM starts afresh with the program."""
    try:
        status = Path("/proc/self/status").read_text()
        own = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def run_measured(cmd: list[str], env: dict | None = None) -> Measured:
    """Run `cmd` and measure it with os.wait4 (its rusage only: not this process's nor other children's)."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        log = out.read()
    line = next((ln for ln in reversed(log.splitlines()) if ln.startswith("RESULT ")), None)
    result = json.loads(line[len("RESULT ") :]) if line else {}
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss=result.get("peak_rss", usage.ru_maxrss * 1024),
        returncode=proc.returncode,
        result=result,
        load=(load_before, os.getloadavg()[0]),
        log=log,
    )


def run_phase(name: str, params: dict, env: dict | None = None) -> Measured:
    """This script in a fresh process, running one phase; stops with its log if it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--params", json.dumps(params)]
    measured = run_measured(cmd, env={**os.environ, **(env or {})})
    if measured.returncode != 0 or not measured.result:
        raise SystemExit(f"phase {name} failed (exit {measured.returncode}):\n{measured.log[-4000:]}")
    print(
        f"  {name}: {measured.wall_s:.1f} s wall, {measured.cpu_s:.1f} s CPU, "
        f"peak {measured.peak_rss / 2**20:.0f} MiB, load {measured.load[0]:.1f} -> {measured.load[1]:.1f}",
        flush=True,
    )
    return measured


def emit(result: dict) -> None:
    """A phase's result, with its peak RSS (unless it gives its own), as the line its parent reads."""
    print("RESULT " + json.dumps({"peak_rss": peak_rss_now(), **result}), flush=True)


# --- data -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleFiles:
    """The files of one size of the rehearsal."""

    root: Path

    @property
    def train(self) -> Path:
        return self.root / "person_keypoints_train.json"

    @property
    def val(self) -> Path:
        return self.root / "person_keypoints_val.json"

    @property
    def detections(self) -> Path:
        return self.root / "val_detections.json"

    @property
    def predictions(self) -> Path:
        return self.root / "val_predictions.npz"

    @property
    def results(self) -> Path:
        return self.root / "val_results.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def fake_predictions(val: Path, detections: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A fake top-down pose estimator's output for every box the val_det shards would hold (read with the
    shard stage's `read_coco_detections`), as `transpose.engine.validation.predict` returns it.

    A box that overlaps a person (IoU >= 0.3) gets that person's labelled keypoints moved by Gaussian errors of
    alpha x the keypoint's OKS scale (sqrt(area) x 2 sigma), alpha log-normal around 0.25 and growing as the box
    misses; 3% of them are mirrored (left/right swapped). Confidences (maxvals) follow the errors. Other boxes,
    and unlabelled keypoints, get the mean labelled pose of the set placed in the box, with low confidences.
    """
    from dataops.datasets import read_coco_detections
    from dataops.synthetic.detections import box_iou
    from transpose.keypoints import COCO

    records, _, kset = read_coco_detections(val, detections, val.parent / "images", aspect_ratio=0.75)
    gt = json.loads(val.read_text())
    people: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        people.setdefault(ann["image_id"], []).append(ann)
    template = _mean_pose(gt["annotations"], kset.num_keypoints)
    scale = 2 * np.asarray(COCO.sigmas)[:, None]
    flip = kset.flip_index()
    rng = np.random.default_rng(seed)
    n, k = len(records), kset.num_keypoints
    keypoints, maxvals = np.zeros((n, k, 2)), np.zeros((n, k))
    for i, record in enumerate(records):
        x, y, w, h = record.extra["bbox"]
        guess = np.array([x, y]) + template * [w, h] + rng.normal(0, 0.05, (k, 2)) * [w, h]
        candidates = people.get(record.image_id, [])
        ious = [box_iou(record.extra["bbox"], a["bbox"]) for a in candidates]
        best = int(np.argmax(ious)) if ious else -1
        if best < 0 or ious[best] < 0.3:
            keypoints[i], maxvals[i] = guess, rng.uniform(0.02, 0.4, k)
            continue
        ann = candidates[best]
        truth = np.asarray(ann["keypoints"], np.float64).reshape(k, 3)
        alpha = rng.lognormal(np.log(0.25), 0.5) * (1 + 2 * (1 - ious[best]))
        error = rng.normal(0, 1, (k, 2)) * alpha * np.sqrt(max(ann["area"], 1.0)) * scale
        labelled = truth[:, 2] > 0
        keypoints[i] = np.where(labelled[:, None], truth[:, :2] + error, guess)
        fit = np.exp(-(error**2).sum(1) / (2 * (np.sqrt(max(ann["area"], 1.0)) * scale[:, 0]) ** 2))
        maxvals[i] = np.clip(np.where(labelled, 0.9 * fit + 0.05, rng.uniform(0.05, 0.3, k)), 0.01, 1.0)
        maxvals[i] += rng.normal(0, 0.03, k)
        if rng.random() < 0.03:
            keypoints[i] = keypoints[i][flip]
    return {
        "keypoints": keypoints,
        "maxvals": np.clip(maxvals, 0.0, 1.0),
        "box_scores": np.array([r.score for r in records], np.float64),
        "areas": np.array([r.area for r in records], np.float64),
        "image_ids": np.array([r.image_id for r in records], np.int64),
        "ann_ids": np.full(n, -1, np.int64),
    }


def _mean_pose(annotations: list[dict], k: int) -> np.ndarray:
    """[k, 2] mean position of each labelled keypoint in its person's box, as a fraction of the box."""
    total, count = np.zeros((k, 2)), np.zeros((k, 1))
    for ann in annotations:
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(k, 3)
        x, y, w, h = ann["bbox"]
        labelled = (kpts[:, 2] > 0)[:, None] & (w > 0) & (h > 0)
        total += np.where(labelled, (kpts[:, :2] - [x, y]) / [max(w, 1), max(h, 1)], 0.0)
        count += labelled
    return np.where(count > 0, total / np.maximum(count, 1), 0.5)


def prepare_scale(data: Path, fraction: float, seed: int, fresh: bool) -> dict:
    """The label files, predictions and results of one size (made once; reused while their spec is the same)."""
    from dataops.synthetic import SyntheticConfig
    from dataops.synthetic.label_files import COCO_TRAIN2017, COCO_VAL2017, write_label_split
    from transpose.evaluation import rescore_and_nms
    from transpose.keypoints import COCO

    files = ScaleFiles(data / f"scale_{fraction:g}")
    train, val = COCO_TRAIN2017.scaled(fraction), COCO_VAL2017.scaled(fraction)
    spec = {"seed": seed, "train": asdict(train), "val": asdict(val)}
    if not fresh and files.summary.is_file():
        summary = json.loads(files.summary.read_text())
        if summary.get("spec") == spec:
            return summary
    files.root.mkdir(parents=True, exist_ok=True)
    config = SyntheticConfig(seed=seed)
    print(f"making the label files at scale {fraction:g} in {files.root}", flush=True)
    start = time.perf_counter()
    made_train = write_label_split(config, train, files.train, workers=None if train.images >= POOL_FROM else 1)
    made_val = write_label_split(
        config, val, files.val, detections=files.detections, workers=None if val.images >= POOL_FROM else 1
    )
    labels_s = time.perf_counter() - start
    preds = fake_predictions(files.val, files.detections, seed)
    np.savez(files.predictions, **preds)
    results = rescore_and_nms(
        preds["keypoints"], preds["maxvals"], preds["box_scores"], preds["areas"], preds["image_ids"], COCO.sigmas
    )
    files.results.write_text(json.dumps(results, separators=(",", ":")))
    summary = {
        "spec": spec,
        "train": made_train.to_dict(),
        "val": made_val.to_dict(),
        "predictions": len(preds["keypoints"]),
        "results": len(results),
        "labels_s": labels_s,
        "total_s": time.perf_counter() - start,
    }
    files.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def prepare_images(data: Path, images: int, seed: int, fresh: bool) -> Path:
    """Rendered 640x480 synthetic COCO train images with their annotations (made once)."""
    from dataops.synthetic import SyntheticConfig, generate

    root = data / f"images_{images}"
    summary = root / "synthetic_summary.json"
    if fresh or not summary.is_file() or json.loads(summary.read_text())["config"]["coco_train"] != images:
        print(f"rendering {images} synthetic images in {root}", flush=True)
        generate(SyntheticConfig(seed=seed, coco_train=images, coco_val=0, mpii_train=0, mpii_valid=0), root)
    return root


# --- phases (each runs in its own process) --------------------------------------------------------------------


def phase_read_plan(params: dict) -> dict:
    """Read the training file as the shard stage does and plan its shards (into an empty folder)."""
    from dataops.datasets import read_coco_keypoints
    from dataops.shards import ShardConfig, plan_shards

    start = time.perf_counter()
    ann = Path(params["train"])
    records, report, kset = read_coco_keypoints(ann, ann.parent / "images", aspect_ratio=0.75)
    read_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        plan = plan_shards(records, kset, out, "train", ShardConfig())
    plan_s = time.perf_counter() - start - read_s
    return {
        "records": len(records),
        "skipped": report.total,
        "shards": len(plan.chunks),
        "read_s": read_s,
        "plan_s": plan_s,
    }


def phase_evaluate_cli(params: dict) -> dict:
    """`transpose evaluate coco` (the CLI's own entry point, in this process)."""
    from cli.main import main

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        code = main(["evaluate", "coco", "--ann", params["val"], "--results", params["results"], "--out", str(out)])
        metrics = json.loads(out.read_text()) if code == 0 else {}
    return {"code": code, "metrics": metrics, "work_s": time.perf_counter() - start}


def phase_validation(params: dict) -> dict:
    """Launch 2 ranks (as torchrun would: RANK, WORLD_SIZE, MASTER_*); each reports its times and peak RSS."""
    from transpose.engine.distributed import free_port

    world = 2
    env = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for rank in range(world):
            out = Path(tmp) / f"rank{rank}.json"
            args = json.dumps({**params, "out": str(out)})
            cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", "validation_rank", "--params", args]
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append((out, subprocess.Popen(cmd, env=rank_env)))
        ranks = []
        for out, proc in procs:
            _, status, _ = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"validation rank exited with {os.waitstatus_to_exitcode(status)}")
            ranks.append(json.loads(out.read_text()))
    return {"ranks": ranks}


def phase_validation_rank(params: dict) -> dict:
    """One rank: join the group as the trainer does, build the scorer once (as training does before its first
    epoch), hold this rank's half of the predictions (DALI shards the split across ranks in contiguous parts),
    then run the validation after predicting: `score_predictions`."""
    torch_start = time.perf_counter()
    import torch.distributed as dist

    from transpose.engine.distributed import gather_objects, init_process_group
    from transpose.engine.validation import gather_predictions, score_predictions
    from transpose.evaluation import rescore_and_nms
    from transpose.evaluation.protocols import dataset_kind
    from transpose.keypoints import COCO

    rank, world = init_process_group("cpu")
    startup_s = time.perf_counter() - torch_start
    start = time.perf_counter()
    scorer = dataset_kind("coco").scorer(params["val"], COCO)
    scorer_s = time.perf_counter() - start
    with np.load(params["predictions"]) as saved:
        everything = {key: saved[key] for key in saved.files}
    n = len(everything["keypoints"])
    part = slice(rank * n // world, (rank + 1) * n // world)
    local = {key: values[part] for key, values in everything.items()}
    del everything
    dist.barrier()
    start = time.perf_counter()
    metrics, results = score_predictions(local, scorer, COCO)
    validation_s = time.perf_counter() - start
    dist.barrier()
    start = time.perf_counter()  # the breakdown: the gather alone, then (rank 0) rescoring + OKS-NMS alone
    gathered = gather_predictions(local)
    gather_s = time.perf_counter() - start
    nms_s = 0.0
    if rank == 0:
        start = time.perf_counter()
        keep = rescore_and_nms(
            gathered["keypoints"],
            gathered["maxvals"],
            gathered["box_scores"],
            gathered["areas"],
            gathered["image_ids"],
            COCO.sigmas,
        )
        nms_s = time.perf_counter() - start
        assert len(keep) == len(results)
    gather_objects(None)  # both ranks leave together
    result = {
        "rank": rank,
        "local": len(local["keypoints"]),
        "gathered": len(gathered["keypoints"]),
        "results": len(results),
        "metrics": metrics,
        "startup_s": startup_s,
        "scorer_s": scorer_s,
        "validation_s": validation_s,
        "gather_s": gather_s,
        "rescore_nms_s": nms_s,
        "peak_rss": peak_rss_now(),
    }
    Path(params["out"]).write_text(json.dumps(result))
    dist.destroy_process_group()
    return result


def phase_shard_write(params: dict) -> dict:
    """Read the rendered images' annotations and write their region shards with the real writer."""
    from dataops.datasets import read_coco_keypoints
    from dataops.shards import ShardConfig, write_shards

    root = Path(params["images"])
    records, report, kset = read_coco_keypoints(
        root / "coco" / "annotations" / "person_keypoints_train.json", root / "coco" / "images" / "train"
    )
    with tempfile.TemporaryDirectory(dir=params["tmp"]) as out:
        start = time.perf_counter()
        manifest = write_shards(records, kset, out, "train", ShardConfig(workers=params["workers"]), report)
        write_s = time.perf_counter() - start
    return {
        "images": params["count"],
        "samples": manifest["samples"],
        "bytes": manifest["bytes"],
        "skipped": manifest["skipped"]["total"],
        "write_s": write_s,
    }


PHASES = {
    "read_plan": phase_read_plan,
    "evaluate_cli": phase_evaluate_cli,
    "validation": phase_validation,
    "validation_rank": phase_validation_rank,
    "shard_write": phase_shard_write,
}


# --- the run and its report -----------------------------------------------------------------------------------


@dataclass
class Rehearsal:
    """Everything measured, for the report."""

    scale: float
    small: float
    data: dict[float, dict]  # scale -> prepare_scale's summary
    read_plan: dict[float, list[Measured]]  # REPEATS runs at each size
    evaluate_cli: dict[float, list[Measured]]
    validation: Measured
    shard_write: Measured
    repeats: int = REPEATS
    minutes: float = 0.0


def rehearse(args: argparse.Namespace) -> Rehearsal:
    """Make (or reuse) the data, then measure every phase in turn."""
    start = time.perf_counter()
    data = Path(args.data)
    small = args.scale * SMALL_FRACTION
    prepared = {s: prepare_scale(data, s, args.seed, args.fresh) for s in (small, args.scale)}
    count = max(8, round(SHARD_IMAGES * args.scale))
    images = prepare_images(data, count, args.seed, args.fresh)
    read_plan, evaluate_cli = {}, {}
    for s in (small, args.scale):
        files = ScaleFiles(data / f"scale_{s:g}")
        print(f"measuring at scale {s:g}", flush=True)
        read_plan[s] = [run_phase("read_plan", {"train": str(files.train)}) for _ in range(args.repeats)]
        evaluate_cli[s] = [
            run_phase("evaluate_cli", {"val": str(files.val), "results": str(files.results)})
            for _ in range(args.repeats)
        ]
    files = ScaleFiles(data / f"scale_{args.scale:g}")
    validation = run_phase("validation", {"val": str(files.val), "predictions": str(files.predictions)})
    shard_write = run_phase(
        "shard_write",
        {"images": str(images), "count": count, "workers": SHARD_WORKERS, "tmp": str(data)},
        env={"OMP_NUM_THREADS": "1"},
    )
    rehearsal = Rehearsal(args.scale, small, prepared, read_plan, evaluate_cli, validation, shard_write, args.repeats)
    rehearsal.minutes = (time.perf_counter() - start) / 60
    return rehearsal


def slowest(runs: list[Measured]) -> Measured:
    """The run with the longest wall time (what a target is checked on)."""
    return max(runs, key=lambda m: m.wall_s)


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def _mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def linearity(times: dict[float, float], sizes: dict[float, int], small: float, full: float) -> tuple[float, float]:
    """(time ratio, size ratio) between the two sizes."""
    return times[full] / max(times[small], 1e-9), sizes[full] / max(sizes[small], 1)


def report_body(r: Rehearsal, argv: list[str] | None = None) -> str:
    """The `coco_scale` section: what was measured, the table with the targets, the linearity check."""
    full, small = r.scale, r.small
    d = r.data[full]
    train, val = d["train"], d["val"]
    read_plan, evaluate_cli = slowest(r.read_plan[full]), slowest(r.evaluate_cli[full])
    rp, ev, shard = read_plan.result, evaluate_cli.result, r.shard_write.result
    ranks = r.validation.result["ranks"]
    rank0 = next(x for x in ranks if x["rank"] == 0)
    val_peak = sum(x["peak_rss"] for x in ranks)
    cores = os.cpu_count() or 1
    at_scale = "" if full == 1 else f" (at scale {full:g}: the targets are for scale 1)"
    rows = [
        (
            f"reader: `read_coco_keypoints` + `plan_shards` of {train['persons']:,} persons "
            f"({train['images']:,} images, {train['annotation_bytes'] / 2**20:.0f} MiB JSON)",
            read_plan,
            f"read {rp['read_s']:.1f} s + plan {rp['plan_s']:.2f} s; {rp['records']:,} records, {rp['shards']} shards",
            "read_plan",
            read_plan.wall_s,
            read_plan.peak_rss,
        ),
        (
            f"`transpose evaluate coco`: {d['results']:,} results on {val['images']:,} images "
            f"({val['persons']:,} persons)",
            evaluate_cli,
            f"AP {ev['metrics']['AP']:.3f}, AP50 {ev['metrics']['AP50']:.3f}; in-process {ev['work_s']:.1f} s",
            "evaluate_cli",
            evaluate_cli.wall_s,
            evaluate_cli.peak_rss,
        ),
        (
            f"validation path, 2 ranks (gloo): `score_predictions` of {d['predictions']:,} predictions "
            f"({rank0['local']:,} on rank 0)",
            r.validation,
            f"AP {rank0['metrics']['AP']:.3f}; gather {rank0['gather_s']:.1f} s, rescoring + OKS-NMS "
            f"{rank0['rescore_nms_s']:.1f} s, the rest COCOeval and the broadcast; scorer built once before: "
            f"{rank0['scorer_s']:.1f} s; peak per rank "
            + " / ".join(_mib(x["peak_rss"]) for x in sorted(ranks, key=lambda x: x["rank"])),
            "validation",
            rank0["validation_s"],
            val_peak,
        ),
    ]
    lines = [
        "## COCO scale without COCO",
        "",
        f"- Command: `{command_line(argv)}` (from the repository root)",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {r.minutes:.1f} min (label files made in "
        f"{d['labels_s'] / 60:.1f} min, or reused from `--data`); CPU: {cpu_description()}",
        f"- Data (`dataops.synthetic.label_files`, no pixels): train {train['images']:,} images, "
        f"{train['images_with_people']:,} with people, {train['persons']:,} persons with keypoints; val "
        f"{val['images']:,} images, {val['persons']:,} persons, {val['detections']:,} detected boxes "
        f"(COCO train2017: 118,287 images, 149,813 persons with keypoints; val2017: 5000, 6352, 104,125 boxes)",
        "- Each phase is a fresh process; time = its wall clock from start to exit (imports included; the reader "
        f"and the CLI ran {r.repeats} times, the slowest is shown), except the validation path, timed inside rank 0 "
        "as one validation of a training run costs; peak = peak RSS (VmHWM, and the workers' a phase waited "
        "for), for the validation path the sum of both ranks'. Load = the 1-minute load average before and after "
        "(above the core count: another job shared the cores and times are pessimistic).",
        "",
        "| phase | time (s) | CPU (s) | peak | load | details | target | verdict |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    verdicts = []
    for label, m, details, key, seconds, peak in rows:
        limit = TIME_LIMIT_S[key]
        ok = seconds <= limit and peak <= MEMORY_LIMIT
        verdicts.append(ok)
        lines.append(
            f"| {label} | {seconds:.1f} | {m.cpu_s:.1f} | {_mib(peak)} | {m.load[0]:.1f}-{m.load[1]:.1f} | "
            f"{details} | <= {limit:.0f} s, <= 2 GiB | {_verdict(ok)}{at_scale} |"
        )
    images_per_s = shard["images"] / shard["write_s"]
    lines.append(
        f"| shard writing: `write_shards` of {shard['images']:,} rendered 640x480 images ({shard['samples']:,} "
        f"persons, region store, {SHARD_WORKERS} workers) | {shard['write_s']:.1f} | {r.shard_write.cpu_s:.1f} | "
        f"{_mib(r.shard_write.peak_rss)} | {r.shard_write.load[0]:.1f}-{r.shard_write.load[1]:.1f} | "
        f"**{images_per_s / SHARD_WORKERS:.1f} images/s per core** ({shard['samples'] / shard['write_s']:.0f} "
        f"persons/s in all; {shard['images'] / r.shard_write.cpu_s:.1f} images per CPU second); "
        f"{shard['bytes'] / 2**20:.0f} MiB of shards | none (measured) | - |"
    )
    lines += [
        "",
        f"Linearity: each phase at {small:g} and {full:g} of COCO's size (time inside the process, the fastest of "
        f"{r.repeats} runs):",
        "",
    ]
    lines += ["| phase | sizes | time (s) | time ratio | size ratio | verdict |", "|---|---|---|---:|---:|---|"]
    checks = (
        ("read_plan", r.read_plan, lambda m: m.result["read_s"] + m.result["plan_s"], "train persons", "train"),
        ("evaluate_cli", r.evaluate_cli, lambda m: m.result["work_s"], "val results", "results"),
    )
    for name, measured, seconds, what, key in checks:
        times = {s: min(seconds(m) for m in runs) for s, runs in measured.items()}
        sizes = {s: (r.data[s]["train"]["persons"] if key == "train" else r.data[s]["results"]) for s in measured}
        t_ratio, s_ratio = linearity(times, sizes, small, full)
        ok = t_ratio <= LINEAR_SLACK * s_ratio
        verdicts.append(ok)
        lines.append(
            f"| {name} | {sizes[small]:,} -> {sizes[full]:,} {what} | {times[small]:.2f} -> {times[full]:.2f} | "
            f"{t_ratio:.2f} | {s_ratio:.2f} | {_verdict(ok)} (no worse than linear: time ratio <= "
            f"{LINEAR_SLACK} x size ratio) |"
        )
    lines += [
        "",
        f"Targets: val-sized evaluation <= 60 s and <= 2 GiB on {cores} cores (the CLI and the validation path), "
        "the 150k-person reader <= 30 s and <= 2 GiB, nothing in the data path worse than linear: "
        + ("**all pass**" if all(verdicts) else f"**{verdicts.count(False)} of {len(verdicts)} fail**")
        + (at_scale or "")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's size (default 1: all of it)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="markdown file of the section")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the generated files are kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="remake the files even if --data has them")
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"runs of the reader and the CLI at each size (default {REPEATS})"
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        emit(PHASES[args.phase](json.loads(args.params)))
        return 0
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rehearsal = rehearse(args)
    body = report_body(rehearsal, argv if argv is None else [str(Path(__file__)), *argv])
    write_section(args.report, SECTION, body)
    print(body)
    print(f"wrote the {SECTION} section of {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
