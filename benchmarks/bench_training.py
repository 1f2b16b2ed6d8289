"""Training throughput: the real DeepSpeed trainer (pipelines.train) on 1 and 2 processes, and on a GPU when
one is present.

Command (writes the `training` section of docs/benchmarks.md; about 5 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_training.py

Each setting trains one epoch of the params.yaml `pretrain` section (the default model, input size, loader and
shards; run `dvc repro shard` first) from scratch in a fresh output folder, without validation or MLflow, and
reads the trainer's own `train/samples_per_s` from history.json: samples of all ranks per wall second from the
first step to the last (start-up, DeepSpeed initialisation and the first DALI batch are excluded). CPU settings
split the 2 cores as 1 process x 2 threads or 2 processes x 1 thread (torchrun, gloo); on a GPU machine one
process trains with NCCL, DALI decoding on the GPU (`mixed`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from report import write_section

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setting:
    name: str
    processes: int
    threads: int
    device: str = "cpu"


CPU_SETTINGS = (Setting("1 process x 2 threads", 1, 2), Setting("2 processes x 1 thread", 2, 1))
GPU_SETTINGS = (Setting("1 process, 1 GPU (NCCL, DALI mixed)", 1, 8, "cuda"),)


def bench_section(params: dict, setting: Setting, work: Path, overrides: dict) -> dict:
    section = {**params["pretrain"], **overrides}
    section.update(out_dir=str(work / "out"), validate=False, device=setting.device)
    section.pop("metrics", None), section.pop("plots", None)
    section["train"] = {**section.get("train", {}), "epochs": 1, "checkpoint_every_steps": 0, "warmup_steps": 0}
    return section


def run_setting(params: dict, setting: Setting, work: Path, overrides: dict) -> float:
    """Train one epoch under `setting` in a fresh folder; returns the trainer's samples/s."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"bench": bench_section(params, setting, work, overrides)}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={setting.processes}"]
    cmd = [*launcher, "-m", "pipelines.train", "--stage", "bench", "--params", str(work / "params.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": str(setting.threads), "TQDM_DISABLE": "1"}
    done = subprocess.run([*cmd, "--no-mlflow"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:])
        raise SystemExit(f"{setting.name}: training failed (exit {done.returncode})")
    history = json.loads((work / "out" / "history.json").read_text())
    return float(history[-1]["train/samples_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting (the median is reported)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "bench_training")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=YAML", help="pretrain overrides, e.g. batch_size=16"
    )
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    import torch

    settings = CPU_SETTINGS + (GPU_SETTINGS if torch.cuda.is_available() else ())
    results: dict[str, list[float]] = {s.name: [] for s in settings}
    for round_ in range(args.rounds):
        for setting in settings:
            rate = run_setting(params, setting, args.work / setting.name.split()[0], overrides)
            results[setting.name].append(rate)
            print(f"round {round_ + 1} {setting.name:40s} {rate:7.1f} samples/s", flush=True)
    write_report(args, {**params["pretrain"], **overrides}, results)
    return 0


def write_report(args, section: dict, results: dict[str, list[float]]) -> None:
    base = statistics.median(results[CPU_SETTINGS[0].name])
    rows = [
        f"| {name} | {statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f}) | {statistics.median(r) / base:.2f}x |"
        for name, r in results.items()
    ]
    h, w = section["image_size"]
    body = "\n".join(
        [
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; `{section['model']}` at {h}x{w}, batch {section['batch_size']} per process, "
            f"loader `{section.get('loader', 'dali')}`, `{Path(section.get('deepspeed_config', '')).name}`; one epoch "
            f"of the default shards per run, median of {args.rounds} runs (range in brackets).",
            "",
            "| setting | samples/s (all ranks) | vs 1 process |",
            "| --- | --- | --- |",
            *rows,
            "",
            "A GPU row appears when the benchmark runs on a machine with CUDA (none was lent when these figures were "
            "measured)."
            if len(results) == len(CPU_SETTINGS)
            else "",
        ]
    )
    write_section(args.out, "training", body, heading="## Training throughput")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
