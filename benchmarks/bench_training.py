"""Training throughput and where a step's time goes: the real DeepSpeed trainer (pipelines.train) on 1 and 2
processes, the default against its earlier formulations in the same run, and on a GPU when one is present.

Command (writes the `training` section of docs/benchmarks.md; about 10 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_training.py

Each setting trains one epoch of the params.yaml `pretrain` section (the default model, input size, loader and
shards; run `dvc repro shard` first) from scratch in a fresh output folder, then validates once, without MLflow.
It reads the trainer's own history.json: `train/samples_per_s` (samples of all ranks per wall second from the first
step to the last: start-up, DeepSpeed initialisation and the first DALI batch are excluded), the per-step phases
`profile/*_ms` of rank 0 (transpose/engine/step_profile.py) and `time/validation_s`. CPU settings split the 2
cores as 1 process x 2 threads or 2 processes x 1 thread (torchrun, gloo); the default's setting also runs as
every run did before issue 17, with `train.channels_last: false` (NCHW convolutions), `train.attention: explicit`
(softmax and dropout mask stored per layer, as PyTorch's CPU math kernel did) and `train.dropout_masks: torch`
(torch's bernoulli_), and with NHWC alone, so each fix's speed-up is measured on one machine in one run.
On a GPU machine one process trains with NCCL, DALI decoding on the GPU (`mixed`).
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
    train: tuple[tuple[str, object], ...] = ()  # train.* overrides of this setting

    @property
    def folder(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name)[:40]


DEFAULT_SETTING = Setting("2 processes x 1 thread (the default)", 2, 1)
AS_BEFORE = (("attention", "explicit"), ("dropout_masks", "torch"))
BEFORE_SETTING = Setting("2 x 1, as before issue 17", 2, 1, train=(("channels_last", False), *AS_BEFORE))
NHWC_SETTING = Setting("2 x 1, as before but NHWC", 2, 1, train=AS_BEFORE)
CPU_SETTINGS = (Setting("1 process x 2 threads", 1, 2), BEFORE_SETTING, NHWC_SETTING, DEFAULT_SETTING)
GPU_SETTINGS = (Setting("1 process, 1 GPU (NCCL, DALI mixed)", 1, 8, "cuda"),)


def bench_section(params: dict, setting: Setting, work: Path, overrides: dict) -> dict:
    section = {**params["pretrain"], **overrides}
    section.update(out_dir=str(work / "out"), device=setting.device, profile=True)
    section.pop("metrics", None), section.pop("plots", None)
    train = {**section.get("train", {}), "epochs": 1, "checkpoint_every_steps": 0, "warmup_steps": 0}
    section["train"] = {**train, "val_every_epochs": 1, **dict(setting.train)}
    return section


def run_setting(params: dict, setting: Setting, work: Path, overrides: dict) -> dict:
    """Train one epoch under `setting` in a fresh folder and validate once; returns the epoch's history record."""
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
    return json.loads((work / "out" / "history.json").read_text())[-1]


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
    results: dict[str, list[dict]] = {s.name: [] for s in settings}
    for round_ in range(args.rounds):
        for setting in settings:
            record = run_setting(params, setting, args.work / setting.folder, overrides)
            results[setting.name].append(record)
            print(f"round {round_ + 1} {setting.name:40s} {record['train/samples_per_s']:7.1f} samples/s", flush=True)
    write_report(args, {**params["pretrain"], **overrides}, results)
    return 0


def rate(record: dict) -> float:
    return float(record["train/samples_per_s"])


def median_record(records: list[dict]) -> dict:
    """The run of median samples/s (its profile is the one shown)."""
    return sorted(records, key=rate)[(len(records) - 1) // 2]


def profile_rows(records: list[dict]) -> list[str]:
    """ms per step of each phase in each record (a column each), with its share of the step."""
    phases = [k for k in records[-1] if k.startswith("profile/")]
    totals = [sum(r.get(k, 0.0) for k in phases) for r in records]
    rows = []
    for key in phases:
        cells = [f"{r.get(key, 0.0):.1f} ({100 * r.get(key, 0.0) / total:.0f}%)" for r, total in zip(records, totals)]
        rows.append(f"| {key.removeprefix('profile/').removesuffix('_ms')} | {' | '.join(cells)} |")
    rows.append(f"| **step** | {' | '.join(f'**{total:.1f}**' for total in totals)} |")
    return rows


def write_report(args, section: dict, results: dict[str, list[dict]]) -> None:
    base = statistics.median(rate(r) for r in results[CPU_SETTINGS[0].name])
    rows = []
    for name, records in results.items():
        rates = [rate(r) for r in records]
        median = statistics.median(rates)
        rows.append(f"| {name} | {median:.1f} ({min(rates):.1f}-{max(rates):.1f}) | {median / base:.2f}x |")
    h, w = section["image_size"]
    compared = (BEFORE_SETTING, NHWC_SETTING, DEFAULT_SETTING)
    before, nhwc, after = (median_record(results[s.name]) for s in compared)
    before_rate, nhwc_rate, after_rate = (statistics.median(rate(r) for r in results[s.name]) for s in compared)
    train = section.get("train", {})
    epochs, every = int(train.get("epochs", 1)), int(train.get("val_every_epochs", 1))
    validations = len({*range(every, epochs + 1, every), epochs})
    epoch_s = epoch_samples(section) / rate(after)
    validation_s = float(after.get("time/validation_s", 0.0))
    share = validations * validation_s / (epochs * epoch_s + validations * validation_s)
    body = "\n".join(
        [
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; `{section['model']}` at {h}x{w}, batch {section['batch_size']} per process, "
            f"loader `{section.get('loader', 'dali')}`, `{Path(section.get('deepspeed_config', '')).name}`; one epoch "
            f"of the default shards per run, median of {args.rounds} runs (range in brackets), all in one run of "
            "`benchmarks/bench_training.py`.",
            "",
            "| setting | samples/s (all ranks) | vs 1 process |",
            "| --- | --- | --- |",
            *rows,
            "",
            f"The default (NHWC convolutions, tiled attention, NumPy-drawn dropout masks) trains the same samples "
            f"**{after_rate / before_rate:.2f}x** faster than every run did before (NCHW, explicit attention, "
            f"torch's masks; target >= 1.3x): NHWC {nhwc_rate / before_rate:.2f}x, then the attention and the "
            f"masks {after_rate / nhwc_rate:.2f}x.",
            "",
            "Where a step's time goes (rank 0, ms per step of the median run; `profile/*_ms` in every run's history and"
            " MLflow metrics):",
            "",
            "| phase | before (NCHW, explicit, torch masks) | NHWC, explicit, torch masks | the default |",
            "| --- | --- | --- | --- |",
            *profile_rows([before, nhwc, after]),
            "",
            f"Validation (GT boxes with flip test, between epochs): {validation_s:.1f} s each; the default's "
            f"{validations} validations in {epochs} epochs are {100 * share:.1f}% of its training time.",
            "",
            "A GPU row appears when the benchmark runs on a machine with CUDA (none was lent when these figures were "
            "measured)."
            if len(results) == len(CPU_SETTINGS)
            else "",
        ]
    )
    write_section(args.out, "training", body, heading="## Training throughput")
    print(f"wrote {args.out}")


def epoch_samples(section: dict) -> float:
    """Samples in one epoch of the section's training shards (from their manifest)."""
    manifest = json.loads((REPO_ROOT / section["shards"] / "train-manifest.json").read_text())
    return float(manifest["samples"])


if __name__ == "__main__":
    raise SystemExit(main())
