"""Loader benchmark: DALI CPU pipeline vs its PyTorch twin vs a reference-kind per-sample OpenCV loader.

Command (writes the `loaders` section of docs/benchmarks.md; a few minutes on 2 cores):

    .venv/bin/python benchmarks/bench_loaders.py

All three produce the same training input: a 3x256x192 normalised crop per person with the reference's random
augmentation (scale, rotation, flip, half-body), batch 32, on real-sized 640x480 JPEGs of the synthetic COCO
set (several people per image). The reference kind decodes the whole image for every person (as the
TransPose/HRNet loader does); our shards store each person's region (see docs/data.md), which DALI and the
twin decode. Each method runs in a fresh subprocess, in turn, for several rounds; samples/s is wall-clock,
CPU ms/sample is user+sys time of the process and its workers per sample (the steadier figure on a busy host).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from report import write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dali_cpu", "torch_twin", "reference_opencv")


def _cpu_seconds() -> float:
    """User+sys CPU of this process, its reaped children (finished DataLoader workers) and its live ones."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_method(method: str, data: Path, samples: int, batch: int, workers: int) -> dict:
    """Inside the subprocess: iterate `samples` samples (after one warm-up batch), time wall and CPU."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from dataops.loaders import LoaderConfig, torch_loader

    config = LoaderConfig(batch_size=batch, workers=workers, seed=0)
    if method == "dali_cpu":
        from dataops.loaders.dali_loader import DaliLoader

        def batches():
            while True:
                yield from DaliLoader(data / "shards", "train", config)

        it = batches()
    elif method == "torch_twin":
        loader, sampler = torch_loader(data / "shards", "train", config)

        def batches():
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        it = batches()
    else:
        it = reference_batches(data, config)
    next(it)
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    seen = 0
    while seen < samples:
        seen += next(it)["image"].shape[0]
    wall, cpu = time.perf_counter() - start_wall, _cpu_seconds() - start_cpu
    del np
    return {"method": method, "samples": seen, "wall_s": wall, "cpu_s": cpu}


def reference_batches(data: Path, config):
    """The reference's kind of loader: per person, cv2.imread of the whole image, augmentation, warpAffine."""
    import cv2
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from dataops.augment import crop_matrix, draw_params, half_body_options
    from dataops.datasets import read_coco_keypoints

    records, _, kset = read_coco_keypoints(
        data / "coco" / "annotations" / "person_keypoints_train.json", data / "coco" / "images" / "train"
    )
    h, w = config.input_size
    mean = np.array(config.mean, np.float32) * 255
    std = np.array(config.std, np.float32) * 255

    class ReferenceKind(Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            rec = records[i]
            image = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            rng = np.random.default_rng(i)
            options = half_body_options(rec.joints, rec.visible, kset.upper_body, w / h)
            p = draw_params(rng, config.augment, rec.center, rec.scale, int(rec.visible.sum()), options)
            if p.flip:  # as the reference: flip the whole image, then crop
                image = image[:, ::-1]
                p.center[0] = image.shape[1] - 1 - p.center[0]
            matrix = crop_matrix(p.center, p.scale, p.rotation, False, (w, h))
            crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR)
            return torch.from_numpy(((crop.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())

    loader = DataLoader(ReferenceKind(), batch_size=config.batch_size, shuffle=True, num_workers=config.workers)
    while True:
        for images in loader:
            yield {"image": images}


def prepare(data: Path, images: int) -> None:
    """Synthetic COCO train images (640x480) and their region shards, made once."""
    if (data / "shards" / "train-manifest.json").is_file():
        return
    from dataops.datasets import read_coco_keypoints
    from dataops.shards import ShardConfig, write_shards
    from dataops.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(coco_train=images, coco_val=0, mpii_train=0, mpii_valid=0, seed=7), data)
    records, report, kset = read_coco_keypoints(
        data / "coco" / "annotations" / "person_keypoints_train.json", data / "coco" / "images" / "train"
    )
    write_shards(records, kset, data / "shards", "train", ShardConfig(samples_per_shard=128), report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "outputs" / "bench_loaders")
    parser.add_argument("--images", type=int, default=240, help="synthetic 640x480 images to make")
    parser.add_argument("--samples", type=int, default=1280, help="timed samples per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader workers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_method(args.child, args.data, args.samples, args.batch, args.workers)))
        return 0
    prepare(args.data, args.images)
    manifest = json.loads((args.data / "shards" / "train-manifest.json").read_text())
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for round_ in range(args.rounds):
        for method in METHODS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                method,
                "--data",
                str(args.data),
                "--samples",
                str(args.samples),
            ]
            cmd += ["--workers", str(args.workers), "--batch", str(args.batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(done.stdout[-2000:], done.stderr[-4000:])
                raise SystemExit(f"{method} failed")
            r = json.loads(line[len("RESULT ") :])
            results[method].append(r)
            print(f"round {round_ + 1} {method:17s} {r['samples'] / r['wall_s']:7.1f} samples/s  "
                  f"{1000 * r['cpu_s'] / r['samples']:6.2f} CPU ms/sample")  # fmt: skip
    write_report(args, manifest, results)
    return 0


def write_report(args, manifest: dict, results: dict[str, list[dict]]) -> None:
    def rate(r):
        return r["samples"] / r["wall_s"]

    ref = statistics.median(rate(r) for r in results["reference_opencv"])
    rows = []
    for method in METHODS:
        rates = [rate(r) for r in results[method]]
        cpu = [1000 * r["cpu_s"] / r["samples"] for r in results[method]]
        med = statistics.median(rates)
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        rows.append(f"| {method} | {med:.1f} ({spread}) | {statistics.median(cpu):.2f} | {med / ref:.2f}x |")
    per_sample = manifest["bytes"] / max(manifest["samples"], 1)
    dali = statistics.median(rate(r) for r in results["dali_cpu"])
    verdict = "PASS" if dali >= 2 * ref else "FAIL"
    body = "\n".join(
        [
            "## Loaders on CPU",
            "",
            f"- Command: `.venv/bin/python benchmarks/bench_loaders.py` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
            " UTC)",
            f"- {manifest['samples']} person samples from {args.images} synthetic 640x480 JPEGs; region shards "
            f"{per_sample / 1024:.1f} KiB per sample; batch {args.batch}, {args.workers} DALI threads / "
            f"DataLoader workers, random augmentation, output 3x256x192 float",
            f"- {args.rounds} rounds, each method in a fresh process, {args.samples} timed samples per run; cores: "
            f"{os.cpu_count()}",
            "",
            "| method | samples/s median (range) | CPU ms/sample | vs reference kind |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"Target: DALI CPU >= 2x the reference kind: **{verdict}** ({dali:.1f} vs {ref:.1f} samples/s).",
            "On CPU the DALI graph warps with OpenCV inside `fn.python_function` (`LoaderConfig.cpu_warp`): DALI's "
            "own CPU `fn.warp_affine` costs ~1.9 ms per 256x192 crop here, more than the decode, and held the "
            "pipeline to ~270-430 samples/s in the same setting.",
            "A GPU (`mixed` decoding) figure needs a lent GPU machine; none was available to this run.",
        ]
    )
    write_section(args.out, "loaders", body)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
