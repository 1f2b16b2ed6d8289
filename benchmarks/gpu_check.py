"""GPU check: every GPU path of the project, checked and measured on one GPU in one command (about 4-6 minutes
on an H100/H200, 8 at most), written as the `gpu` section of docs/benchmarks.md.

Command, on a machine with one NVIDIA GPU (the venv needs a CUDA build of torch: `TORCH_SPEC=... bash
scripts/setup.sh`, see the README):

    .venv/bin/python benchmarks/gpu_check.py

CPU mode, what CI runs (tests/test_gpu_check.py): the same code on a tiny configuration, with `cpu` in place
of `mixed` DALI decoding and gloo in place of NCCL; it writes a report only where --report says:

    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny --report /tmp/gpu_check.md

Correctness checks (one PASS/FAIL line each; any FAIL, or a phase that crashes, exits 1):
    loader parity   the DALI loader (`mixed` decoding and the GPU warp on cuda, `cpu` on CPU) against its PyTorch
                    twin (dataops/loaders/torch_loader.py) on the same shards (the real COCO fixture photos of
                    tests/data) under tests/test_data.py's fixed draws: the same ids and flips, crops, joints and
                    targets within that test's tolerances
    loss fp32/bf16  the first steps' losses of the real Trainer (transpose/engine: DeepSpeed, NCCL on cuda) in fp32
                    and bf16 against a CPU fp32 run of the same Trainer on the same batches and initial weights, in
                    a process of its own (DS_ACCELERATOR=cpu, no CUDA device visible, gloo)
    eval            eval-mode heatmaps: the device's fp32 against the CPU's, explicit attention against SDPA, bf16
                    against fp32
    (CPU mode only, a WARN rather than a FAIL: the DALI loader's GPU graph is defined as far as a machine without
    CUDA allows, so that a graph DALI rejects shows before a GPU is lent)
Measurements (reported, never failed on): loader samples/s (DALI against the twin); training samples/s, peak
memory and GPU busy (NVML, sampled while training) of `transpose_h_a6` at 256x192 fed by the DALI loader, in fp32
and bf16 with SDPA attention and in the reference's formulation (explicit softmax attention, fp32); eval
samples/s. The issue's speed targets are stated against them: training >= 3x the reference formulation's fp32
samples/s, GPU busy >= 90% with the mixed loader.

Phases run in turn, each within its share of --time-budget (the timed loops stop when their share is spent; the
CPU reference includes DeepSpeed's one-time JIT build of its CPU communication op, which needs g++). The data
(synthetic 640x480 COCO images made on the fly, and shards of the fixture photos) is kept in --work.

Where the code lives (benchmarks/, imported as top-level modules, as the other benchmarks do):

    gpu_check.py   this entry point: arguments, the phases in order, the CPU reference process, targets, report
    gpu_plan.py    the plans (full, tiny), tolerances, checks and findings, the time budget
    gpu_paths.py   the measured paths: shards, the loaders, the Trainer fed fixed batches or a loader, eval
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpu_paths import (
    DS_CONFIG,
    GIB,
    Data,
    build_model,
    check_batches,
    check_loader_parity,
    decoding,
    loss_check,
    loss_run,
    measure_eval,
    measure_loaders,
    prepare_data,
    probe_gpu_graph,
    release,
    throughput_run,
    training_loader,
)
from gpu_plan import FULL, TINY, Budget, Outcome, Plan, guarded
from report import DEFAULT_REPORT, REPO_ROOT, command_line, cpu_description, write_section

SECTION = "gpu"
HEADING = "## GPU check"
REFERENCE_PREFIX = "REFERENCE_RESULT "
LIBRARIES = (("torch", "torch"), ("DeepSpeed", "deepspeed"), ("DALI", "nvidia.dali"))


# ---- the CPU fp32 reference, in a process of its own ----------------------------------------------------------
def run_reference(
    work: Path, plan: Plan, data: Data, weights: dict, batches: list[dict], timeout: float
) -> list[float]:
    """The CPU fp32 losses, from a process that sees no GPU (DeepSpeed's CPU accelerator, gloo)."""
    inputs = work / "reference_inputs.pt"
    torch.save({"weights": weights, "batches": batches}, inputs)
    spec = {"plan": asdict(plan), "shards": str(data.shards), "inputs": str(inputs), "out": str(work / "ref_trainer")}
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--reference", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 10))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the CPU reference run took more than its {max(timeout, 10):.0f} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(REFERENCE_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the CPU reference run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(REFERENCE_PREFIX) :])


def reference_child(spec_json: str) -> str:
    """The --reference mode: the CPU fp32 losses of the saved batches, as the line the parent reads."""
    spec = json.loads(spec_json)
    plan = Plan(**{**spec["plan"], "image_size": tuple(spec["plan"]["image_size"])})
    inputs = torch.load(spec["inputs"], weights_only=True)
    losses = loss_run(
        plan, Path(spec["shards"]), inputs["weights"], inputs["batches"], "cpu", "fp32", Path(spec["out"])
    )
    return REFERENCE_PREFIX + json.dumps(losses)


# ---- the run ---------------------------------------------------------------------------------------------------
def run_phase(name: str, outcome: Outcome, fn: Callable[[], object]) -> object:
    """One phase, timed and guarded (a crash is a FAIL named `phase NAME`; the later phases still run)."""
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        return guarded(f"phase {name}", outcome, fn)
    finally:
        outcome.phases[name] = time.perf_counter() - start


def run_check(plan: Plan, device: str, work: Path, budget: Budget) -> Outcome:
    """Every phase in turn; returns what they found."""
    outcome = Outcome()
    if device == "cuda":
        torch.cuda.set_device(0)
    data = run_phase("data", outcome, lambda: prepare_data(work, plan))
    if data is None:
        return outcome
    model = build_model(plan, data.shards)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def parity() -> None:
        outcome.add(check_loader_parity(data, plan, device, model))
        if device == "cpu":
            outcome.add(probe_gpu_graph(data, plan))

    run_phase("parity", outcome, parity)
    release(device)
    deadline = budget.deadline("loaders")
    run_phase("loaders", outcome, lambda: measure_loaders(data, plan, device, deadline, outcome))
    batches: list[dict] = []

    def reference() -> None:
        timeout = budget.deadline("reference") - time.perf_counter()
        batches.extend(check_batches(data, plan))
        print(f"  {plan.loss_steps} steps of {plan.loss_batch} on the CPU in a process of its own, at most "
              f"{timeout:.0f} s (a fresh machine JIT-builds DeepSpeed's CPU comm op first)", flush=True)  # fmt: skip
        outcome.losses["CPU fp32"] = run_reference(work, plan, data, weights, batches, timeout)
        print(f"INFO CPU fp32 losses: {outcome.losses['CPU fp32']}", flush=True)

    run_phase("reference", outcome, reference)

    def losses() -> None:
        for precision in ("fp32", "bf16"):

            def one(precision=precision) -> None:
                got = loss_run(plan, data.shards, weights, batches, device, precision, work / "trainer")
                outcome.losses[f"{device} {precision}"] = got
                outcome.add(loss_check(precision, device, got, outcome.losses.get("CPU fp32", [])))

            guarded(f"loss {precision}", outcome, one)

    if batches:
        run_phase("losses", outcome, losses)

    def training() -> None:
        deadline = budget.deadline("training")
        kind = training_loader(data, plan, device, outcome)
        runs = (("fp32", False), ("bf16", False), ("fp32", True))
        for i, (precision, explicit) in enumerate(runs):
            share = time.perf_counter() + (deadline - time.perf_counter()) / (len(runs) - i)

            def one(precision=precision, explicit=explicit, share=share) -> None:
                rate = throughput_run(plan, data, device, precision, explicit, kind, work / "trainer", share)
                outcome.training.append(rate)

            guarded(f"training {precision}{' explicit' if explicit else ''}", outcome, one)

    run_phase("training", outcome, training)
    run_phase("eval", outcome, lambda: measure_eval(plan, data, device, budget.deadline("eval"), outcome))
    return outcome


# ---- targets and the report ---------------------------------------------------------------------------------------
def target_lines(outcome: Outcome, device: str) -> list[str]:
    """The issue's speed targets, each MET / NOT MET / NOT MEASURED (reported, never failed on)."""
    rates = {r.setting: r for r in outcome.training}
    reference = rates.get("fp32, explicit attention (reference formulation)")
    ours = [rates[s] for s in ("fp32, SDPA", "bf16, SDPA") if s in rates]
    lines = []
    if reference and ours:
        best = max(ours, key=lambda r: r.samples_per_s)
        ratios = ", ".join(f"{r.setting.split(',')[0]} {r.samples_per_s / reference.samples_per_s:.2f}x" for r in ours)
        met = best.samples_per_s >= 3 * reference.samples_per_s
        verdict = ("MET" if met else "NOT MET") if device == "cuda" else "NOT MEASURED (CPU mode, not a GPU)"
        lines.append(f"TARGET {verdict}: training >= 3x the reference formulation's fp32 samples/s "
                     f"({reference.samples_per_s:.1f}): {ratios}")  # fmt: skip
    else:
        lines.append("TARGET NOT MEASURED: training >= 3x the reference formulation (a training run failed)")
    busy = [r for r in ours if r.busy is not None and r.loader == "DALI mixed"]
    if device != "cuda":
        lines.append("TARGET NOT MEASURED: GPU busy >= 90% with the mixed loader (no GPU in this run)")
    elif not any(r.loader == "DALI mixed" for r in ours):
        lines.append("TARGET NOT MEASURED: GPU busy >= 90% with the mixed loader (no training run read it)")
    elif not busy:
        lines.append("TARGET NOT MEASURED: GPU busy >= 90% with the mixed loader (neither NVML through "
                     "torch.cuda.utilization, i.e. nvidia-ml-py, nor nvidia-smi answered)")  # fmt: skip
    else:
        verdict = "MET" if all(r.busy >= 90 for r in busy) else "NOT MET"
        values = ", ".join(f"{r.setting.split(',')[0]} {r.busy:.0f}%" for r in busy)
        lines.append(f"TARGET {verdict}: GPU busy >= 90% with the mixed loader: {values}")
    return lines


def module_version(name: str) -> str:
    """`name.__version__`, or "missing" (the run then reports the phases that need it as failed)."""
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return "missing"


def environment_line(device: str) -> str:
    """The machine and library versions."""
    libs = ", ".join(f"{label} {module_version(m)}" for label, m in LIBRARIES)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        tf32 = f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}"
        return f"{props.name} ({props.total_memory / GIB:.0f} GiB), CUDA {torch.version.cuda}; {libs}; {tf32}"
    return f"no GPU: {cpu_description()}, Python {platform.python_version()}; {libs}"


def busy_text(busy: float | None) -> str:
    return "not measured" if busy is None else f"{busy:.0f}%"


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A markdown table: `align` holds one character per column, l (left) or r (right)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]  # a bare | would end the cell
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in cells)]


def render(plan: Plan, device: str, outcome: Outcome, targets: list[str], elapsed: float, budget: float) -> str:
    """The markdown of the `gpu` section."""
    h, w = plan.image_size
    backend = "NCCL" if device == "cuda" else "gloo"
    lines = [
        f"- Command: `{command_line()}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s of a "
        f"{budget:.0f} s budget)",
        f"- Device: {environment_line(device)}",
        f"- Plan `{plan.name}`: `{plan.model}` at {h}x{w}; the real `Trainer` (DeepSpeed, `{DS_CONFIG.name}`, "
        f"{backend}); DALI `{decoding(device)}` decoding; {plan.workers} DALI threads / twin workers",
    ]
    if device != "cuda":
        lines.append("- **CPU mode**: the same code with `cpu` decoding and gloo; its figures say nothing of a GPU.")
    checks = [[c.name, c.compared, c.tolerance, c.measured, f"**{c.verdict}**"] for c in outcome.checks]
    lines += ["", "### Correctness checks", ""]
    lines += table(["check", "compared", "tolerance", "measured", "result"], "lllll", checks)
    runs = [[r.setting, f"{r.samples_per_s:.1f}", str(r.steps), r.peak, busy_text(r.busy), r.loader, r.optimizer,
             f"{r.loss:.3g}"] for r in outcome.training]  # fmt: skip
    lines += ["", f"### Training (`{plan.model}`, batch {plan.train_batch}, random augmentation)", ""]
    lines += table(
        [
            "setting",
            "samples/s",
            "timed steps",
            "peak memory",
            "GPU busy",
            "loader",
            "DeepSpeed optimizer (backend)",
            "loss",
        ],
        "lrrlrlll",
        runs,
    )
    lines += ["", f"### Eval (forward in eval mode, `torch.inference_mode()`, batch {plan.eval_batch})", ""]
    lines += table(["setting", "samples/s"], "lr", [[k, f"{v:.1f}"] for k, v in outcome.evals.items()])
    lines += ["", f"### Loaders (batch {plan.loader_batch}, random augmentation, output {h}x{w})", ""]
    rows = [[k, f"{rate:.1f}", str(n)] for k, (rate, n) in outcome.loaders.items()]
    lines += table(["loader", "samples/s", "timed samples"], "lrr", rows)
    lines += ["", "### Targets (reported, not failed on)", "", "```", *targets, "```", ""]
    losses = "; ".join(f"{k}: {', '.join(f'{v:.6g}' for v in vals)}" for k, vals in outcome.losses.items())
    lines.append(f"First-step losses: {losses}.")
    lines.append(
        'The reference formulation is this model with explicit attention (`set_attention(model, "explicit")`, or '
        "`model(x, return_attention=True)` where the library lacks it: every layer's softmax(QK^T/sqrt(d)) "
        "materialised, then dropout, as the reference's nn.MultiheadAttention computes it) in fp32, through the "
        "same Trainer and loader; the reference's own code is not run. Eval is the model's forward alone (no flip "
        "test, no decoding)."
    )
    lines += [f"Note: {n}" for n in outcome.notes]
    lines.append("Phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome.phases.items()) + ".")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default_device, help=f"default {default_device}")
    parser.add_argument("--tiny", action="store_true", help="tiny model and few steps (CI's CPU mode)")
    parser.add_argument("--report", type=Path, help=f"markdown file (default {DEFAULT_REPORT} on cuda, none on cpu)")
    parser.add_argument("--time-budget", type=float, help="seconds for the whole run (default 480; tiny 300)")
    parser.add_argument("--work", type=Path, help="data and scratch folder (default outputs/gpu_check_PLAN)")
    parser.add_argument("--reference", help=argparse.SUPPRESS)  # internal: the CPU fp32 reference run, as JSON
    return parser.parse_args(argv)


def report_path(args: argparse.Namespace) -> Path | None:
    """--report, else docs/benchmarks.md on cuda and nothing on CPU (a CPU run never replaces GPU figures)."""
    if args.report is not None:
        return args.report
    return DEFAULT_REPORT if args.device == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference:
        print(reference_child(args.reference), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device (a CPU build of torch, or no driver)", file=sys.stderr)
        return 2
    plan = TINY if args.tiny else FULL
    if args.time_budget:
        plan = replace(plan, budget_s=args.time_budget)
    work = args.work or REPO_ROOT / "outputs" / f"gpu_check_{plan.name}"
    work.mkdir(parents=True, exist_ok=True)
    report = report_path(args)
    budget = Budget(plan.budget_s)
    print(f"GPU check, plan {plan.name} on {args.device}: {environment_line(args.device)}", flush=True)
    outcome = run_check(plan, args.device, work, budget)
    targets = target_lines(outcome, args.device)
    print("\n".join(targets), flush=True)
    elapsed = budget.elapsed()
    verdicts = [c.verdict for c in outcome.checks]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "FAIL", "WARN") if v in verdicts)
    print(f"done in {elapsed:.0f} s (budget {plan.budget_s:.0f} s): checks {counts}", flush=True)
    if report is not None:
        write_section(report, SECTION, render(plan, args.device, outcome, targets, elapsed, plan.budget_s), HEADING)
        print(f"wrote the `{SECTION}` section of {report}", flush=True)
    else:
        print("CPU mode without --report: no report written", flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
