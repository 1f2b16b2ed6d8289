"""onnxruntime against PyTorch eager on this CPU, for exported TransPose models, written to docs/benchmarks.md.

Command (about four minutes on an idle 2-core machine; run it when nothing else uses the cores):

    .venv/bin/python benchmarks/bench_onnx.py

Smoke test (fewer repeats, writes nothing unless --out is given):

    .venv/bin/python benchmarks/bench_onnx.py --quick --out /tmp/bench_onnx.md

Each model (seeded random weights, 256x192, fp32) is exported by `transpose.export.onnx.export_onnx`, which
verifies the file against PyTorch, then timed in one run with both runtimes on the same inputs and the same
thread count (--threads, default 2; onnxruntime intra-op threads = torch threads, inter-op 1): batch-1 latency
(median of the timed calls) and batch-32 throughput (images per second over the median call). The two runtimes
are timed in alternation, call block by call block, so that a change of the host's speed during the run hits
both alike; the ratio is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transpose.export.onnx import export_onnx
from transpose.keypoints import COCO
from transpose.models import ModelCard

from measure import busy_warning, time_calls
from model_zoo import IMAGE_SIZE, build_model, make_input
from report import DEFAULT_REPORT, command_line, cpu_description, write_section

MODELS = ("transpose_r_a4", "transpose_h_a4")
SECTION = "onnx"


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def alternate(calls: dict, warmup: int, repeats: int, blocks: int) -> dict[str, tuple[float, float]]:
    """Median seconds per call and cores busy of each named call, timed in alternating blocks."""
    times = {name: [] for name in calls}
    cores = {name: [] for name in calls}
    for fn in calls.values():
        time_calls(fn, warmup, 0)
    for _ in range(blocks):
        for name, fn in calls.items():
            block, busy = time_calls(fn, 0, repeats)
            times[name] += block
            cores[name].append(busy)
    return {name: (statistics.median(times[name]), statistics.mean(cores[name])) for name in calls}


def measure(name: str, threads: int, quick: bool, tmp: Path) -> dict:
    model = build_model(name).eval()
    card = ModelCard(name, IMAGE_SIZE, COCO)
    report = export_onnx(model, card, tmp / f"{name}.onnx")
    ort_session = session(report.path, threads)
    results = {"name": name, "export_s": report.seconds, "worst": report.worst_relative_diff}
    for batch, key in ((1, "latency"), (32, "throughput")):
        x = make_input(batch, IMAGE_SIZE)
        feed = {"image": x.numpy()}
        with torch.inference_mode():
            eager = model(x).numpy()
        onnx_out = ort_session.run(["heatmaps"], feed)[0]
        results[f"{key}_diff"] = float(np.abs(onnx_out - eager).max() / np.abs(eager).max())

        def run_eager(x=x):
            with torch.inference_mode():
                model(x)

        def run_onnx(feed=feed):
            ort_session.run(["heatmaps"], feed)

        repeats = (2 if quick else 5) if batch == 1 else 1
        blocks = (2 if quick else 6) if batch == 1 else (1 if quick else 3)
        timed = alternate({"eager": run_eager, "onnx": run_onnx}, warmup=1, repeats=repeats, blocks=blocks)
        results[key] = {runtime: (seconds, batch / seconds, busy) for runtime, (seconds, busy) in timed.items()}
        eager_s, onnx_s = timed["eager"][0], timed["onnx"][0]
        print(f"{name} batch {batch}: eager {eager_s * 1e3:.1f} ms, onnxruntime {onnx_s * 1e3:.1f} ms", flush=True)
    return results


def render(rows: list[dict], threads: int, started: str, seconds: float) -> str:
    import onnxruntime

    lines = [
        f"Measured {started} on {cpu_description()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {threads} threads, fp32, 256x192, in {seconds / 60:.1f} min.",
        "",
        f"Command: `{command_line()}`",
        "",
        "| model | eager batch 1 (ms) | onnxruntime batch 1 (ms) | speed-up | eager batch 32 (img/s) | "
        "onnxruntime batch 32 (img/s) | speed-up | max rel. diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    warnings = []
    for r in rows:
        lat, thr = r["latency"], r["throughput"]
        diff = max(r["worst"], r["latency_diff"], r["throughput_diff"])
        lines.append(
            f"| {r['name']} | {lat['eager'][0] * 1e3:.1f} | {lat['onnx'][0] * 1e3:.1f} | "
            f"{lat['eager'][0] / lat['onnx'][0]:.2f}x | {thr['eager'][1]:.1f} | {thr['onnx'][1]:.1f} | "
            f"{thr['onnx'][1] / thr['eager'][1]:.2f}x | {diff:.1e} |"
        )
        for key in ("latency", "throughput"):
            for runtime, (_, _, busy) in r[key].items():
                if busy_warning(busy):
                    warnings.append(f"{r['name']} {key} {runtime}: {busy:.1f} cores busy{busy_warning(busy)}")
    lines += [
        "",
        "Speed-up: eager time / onnxruntime time (above 1: onnxruntime is faster). Max rel. diff: the largest "
        "|onnxruntime - eager| / max |eager| over the export's own check (fresh inputs, batch 1 and 3) and the "
        "timed inputs.",
    ]
    if warnings:
        lines += ["", *[f"- {w}" for w in warnings]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; write only with --out")
    parser.add_argument("--out", type=Path, help=f"markdown file (default {DEFAULT_REPORT} unless --quick)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started, clock = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args.threads, args.quick, Path(tmp)) for name in args.models]
    body = render(rows, args.threads, started, time.perf_counter() - clock)
    print(body)
    out = args.out or (None if args.quick else DEFAULT_REPORT)
    if out is not None:
        write_section(out, SECTION, body, heading="## ONNX export: onnxruntime vs PyTorch eager on CPU")
        print(f"wrote section '{SECTION}' of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
