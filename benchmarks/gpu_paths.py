"""The GPU paths the GPU check runs, each measured: shards made on the fly, the DALI loader against its twin,
the project's Trainer on fixed batches (first-step losses) and on the DALI loader (throughput, peak memory, GPU
busy), and eval forwards (benchmarks/gpu_check.py).

Nothing here trains on its own: the Trainer of transpose/engine does, with the DeepSpeed config of pipelines/train.py
and its prepare_batch; this module only feeds it (fixed batches, or a real loader cut into short epochs) and reads
what it reports."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from gpu_plan import FIXED_DRAWS, TOLERANCES, Check, Outcome, Plan, TrainRate, guarded
from probe import reset_peak_rss, status_kib
from report import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "data" / "realdata" / "coco"
DS_CONFIG = REPO_ROOT / "infra" / "deepspeed" / "zero0_fp32.json"
GIB = 1024**3


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Data:
    fixture_shards: Path  # the real COCO fixture's persons, split "val": loader parity
    shards: Path  # synthetic COCO, split "train": throughput and the loss-agreement batches


def prepare_data(work: Path, plan: Plan) -> Data:
    """Shards of the COCO fixture photos and of synthetic images, written once into `work`."""
    from dataops.datasets import read_coco_keypoints
    from dataops.shards import ShardConfig, write_shards
    from dataops.synthetic import SyntheticConfig, generate

    fixture = work / "fixture_shards"
    if not (fixture / "val-manifest.json").is_file():
        records, report, kset = read_coco_keypoints(FIXTURE / "test_coco.json", FIXTURE)
        write_shards(records, kset, fixture, "val", ShardConfig(samples_per_shard=5, workers=1), report, False)
    synthetic = work / f"synthetic_{plan.synthetic_images}"
    shards = synthetic / "shards"
    if not (shards / "train-manifest.json").is_file():
        workers = max(1, min(16, os.cpu_count() or 1, plan.synthetic_images // 50))  # a few images: in-process
        config = SyntheticConfig(coco_train=plan.synthetic_images, coco_val=0, mpii_train=0, mpii_valid=0, seed=7)
        generate(config, synthetic, workers=workers, progress=False)
        records, report, kset = read_coco_keypoints(
            synthetic / "coco" / "annotations" / "person_keypoints_train.json", synthetic / "coco" / "images" / "train"
        )
        write_shards(records, kset, shards, "train", ShardConfig(samples_per_shard=256, workers=workers), report, False)
    return Data(fixture, shards)


def keypoint_set(shards: Path, split: str):
    """The keypoint set the shards' manifest records."""
    from dataops.shards import read_manifest

    return read_manifest(shards, split).keypoints


def build_model(plan: Plan, shards: Path) -> nn.Module:
    """The plan's model for the shards' keypoints, seeded (the card pipelines/train.py builds)."""
    from transpose.models import ModelCard

    torch.manual_seed(22)
    return ModelCard(plan.model, plan.image_size, keypoint_set(shards, "train"), "coco").build()


def loader_config(plan: Plan, batch: int, **changes):
    """The LoaderConfig of the plan's input size and workers, with `changes`."""
    from dataops.loaders import LoaderConfig

    values = {"input_size": plan.image_size, "batch_size": batch, "workers": plan.workers, "seed": 22, **changes}
    return LoaderConfig(**values)


def device_loader(shards: Path, split: str, config, device: str):
    """The DALI loader as pipelines/train.py makes it: `mixed` decoding on cuda, `cpu` on CPU."""
    from dataops.loaders import make_loader

    return make_loader(shards, split, config, kind="dali", device=device, device_id=0 if device == "cuda" else None)


def decoding(device: str) -> str:
    """The DALI decoder device of a run on `device`."""
    return "mixed" if device == "cuda" else "cpu"


def epochs(loader) -> Iterator[dict]:
    """A resumable loader's batches, epoch after epoch."""
    while True:
        yield from loader


# ---- loader parity and throughput --------------------------------------------------------------------------------
def check_loader_parity(data: Data, plan: Plan, device: str, model: nn.Module) -> Check:
    """DALI (on `device`) against the twin on the fixture shards under every fixed draw: worst differences."""
    from dataops.augment import FixedDraw
    from dataops.loaders import make_targets, torch_loader

    kset, codec = keypoint_set(data.fixture_shards, "val"), model.data_config.codec()
    worst = {"grey_mean": 0.0, "grey_max": 0.0, "joints": 0.0, "targets": 0.0}
    problems, samples = [], 0
    for i, draw in enumerate(FIXED_DRAWS):
        config = loader_config(plan, 4, fixed=FixedDraw(*draw), shuffle=False, workers=1)
        dali = [{k: v.cpu() for k, v in b.items()} for b in device_loader(data.fixture_shards, "val", config, device)]
        twin = list(torch_loader(data.fixture_shards, "val", replace(config, workers=0))[0])
        if len(dali) != len(twin):
            problems.append(f"draw {i}: {len(dali)} DALI batches, {len(twin)} twin batches")
        for a, b in zip(dali, twin):
            if not (torch.equal(a["ids"], b["ids"]) and torch.equal(a["flip"], b["flip"])):
                problems.append(f"draw {i}: other samples or flips")
                continue
            grey = (a["image"] - b["image"]).abs() * 255 * 0.226  # undo the normalisation (mean std)
            ta, wa, ja = make_targets(a, kset, codec)
            tb, wb, jb = make_targets(b, kset, codec)
            if not torch.equal(wa, wb):
                problems.append(f"draw {i}: other target weights")
            worst["grey_mean"] = max(worst["grey_mean"], float(grey.mean()))
            worst["grey_max"] = max(worst["grey_max"], float(grey.max()))
            worst["joints"] = max(worst["joints"], float((ja - jb).abs().max()))
            worst["targets"] = max(worst["targets"], float((ta - tb).abs().max()))
            samples += int(a["valid"].sum())
        print(f"  draw {i + 1}/{len(FIXED_DRAWS)}: {len(dali)} batches", flush=True)
    t = TOLERANCES
    within = (
        worst["grey_mean"] < t.grey_mean
        and worst["grey_max"] < t.grey_max
        and worst["joints"] < t.joints_px
        and worst["targets"] < t.targets
    )
    measured = (
        f"{samples} samples, {len(FIXED_DRAWS)} draws: crops mean {worst['grey_mean']:.4f} / max "
        f"{worst['grey_max']:.2f} grey levels, joints {worst['joints']:.1e} px, targets {worst['targets']:.1e}"
    )
    if problems:
        measured += "; " + "; ".join(problems[:3])
    return Check(
        f"loader parity (DALI {decoding(device)} vs twin)",
        within and not problems and samples > 0,
        f"DALI `{decoding(device)}` decoding vs the PyTorch twin, fixture shards, tests/test_data.py's fixed draws",
        f"ids and flips equal; crops mean < {t.grey_mean} and max < {t.grey_max} grey levels, joints < {t.joints_px} "
        f"px, targets < {t.targets}",
        measured,
    )


def loader_rate(batches: Iterator[dict], samples: int, deadline: float, device: str) -> tuple[float, int]:
    """Samples/s over `samples` samples (or until `deadline`) after one untimed batch."""
    next(batches)
    seen, start, last = 0, time.perf_counter(), time.perf_counter()
    while seen < samples and time.perf_counter() < deadline:
        seen += next(batches)["image"].shape[0]
        if time.perf_counter() - last > 5:
            print(f"  {seen} samples", flush=True)
            last = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / max(time.perf_counter() - start, 1e-9), seen


def measure_loaders(data: Data, plan: Plan, device: str, deadline: float, outcome: Outcome) -> None:
    """DALI (on `device`) and the twin over the synthetic shards with the reference's random augmentation; a
    loader that fails is a FAIL naming it, and the other is still measured."""
    from dataops.augment import AugmentConfig
    from dataops.loaders import make_loader

    config = loader_config(plan, plan.loader_batch, augment=AugmentConfig())
    half = time.perf_counter() + (deadline - time.perf_counter()) / 2

    def measure(name: str, make: Callable[[], object], sync: str, until: float) -> None:
        outcome.loaders[name] = loader_rate(epochs(make()), plan.loader_samples, until, sync)
        print(f"INFO loader {name}: {outcome.loaders[name][0]:.1f} samples/s", flush=True)

    dali, twin = f"DALI {decoding(device)}", f"PyTorch twin ({plan.workers} workers)"
    guarded(
        f"loader {dali}",
        outcome,
        lambda: measure(dali, lambda: device_loader(data.shards, "train", config, device), device, half),
    )
    release(device)
    guarded(
        f"loader {twin}",
        outcome,
        lambda: measure(twin, lambda: make_loader(data.shards, "train", config, kind="torch"), "cpu", deadline),
    )


def probe_gpu_graph(data: Data, plan: Plan) -> Check:
    """CPU mode: define the DALI loader's GPU graph (`mixed` decoding, GPU warp) as far as a machine without
    CUDA can: DALI's refusal to start a GPU pipeline without CUDA means the graph itself was accepted."""
    from dataops.loaders.dali_loader import build_pipeline
    from dataops.loaders.shard_index import open_shards

    shards = open_shards(data.fixture_shards, "val")
    try:
        build_pipeline(shards.tars, shards.index_paths, loader_config(plan, 2, workers=1), device="gpu", device_id=0)
        measured = "built (CUDA is available)"
        ok = True
    except Exception as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        ok = "CUDA is not available" in text or "CUDA driver" in text
        measured = "accepted; DALI stops at its CUDA check" if ok else f"{type(err).__name__}: {text}"
    return Check(
        "DALI GPU graph (CPU mode)",
        ok,
        "the DALI loader's `mixed`/GPU graph defined on a machine without CUDA",
        "only DALI's 'CUDA is not available' error",
        measured,
    )


# ---- training through the real Trainer ----------------------------------------------------------------------------
class BatchList:
    """Fixed batches as a Trainer loader: every epoch yields them all, in order."""

    def __init__(self, batches: list[dict]):
        self.batches = batches
        self.micro_batch = batches[0]["image"].shape[0]
        self.steps_per_epoch = len(batches)

    def __iter__(self):
        yield from self.batches

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StepLimit:
    """A real loader's batches, epoch after epoch, as Trainer epochs of at most `steps` steps (or until
    `deadline`, after at least 2 steps)."""

    def __init__(self, loader, steps: int):
        self.stream = epochs(loader)
        self.micro_batch = loader.micro_batch
        self.steps_per_epoch = steps
        self.deadline = math.inf

    def __iter__(self):
        for step in range(self.steps_per_epoch):
            if step >= 2 and time.perf_counter() > self.deadline:
                return
            yield next(self.stream)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossRecorder:
    """A tracker that keeps the trainer's per-step losses (log_every_steps = 1)."""

    def __init__(self):
        self.losses: list[float] = []

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "train/loss" in metrics:
            self.losses.append(float(metrics["train/loss"]))

    def log_artifact(self, path, artifact_path=None) -> None:
        pass


class ExplicitAttention(nn.Module):
    """The reference's formulation through the explanations' path, `model(x, return_attention=True)` (which also
    averages each layer's map): for a library without `set_attention`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_attention=True)[0]


def attention_formulation(model: nn.Module, explicit: bool) -> nn.Module:
    """`model` computing attention as SDPA does (fused kernels, no L x L matrix kept) or, `explicit`, as the
    reference's nn.MultiheadAttention does (every layer's softmax(QK^T / sqrt(d)) materialised, then dropout):
    `transpose.models.transformer.set_attention` where the library has it, else ExplicitAttention."""
    try:
        from transpose.models.transformer import set_attention
    except ImportError:
        return ExplicitAttention(model) if explicit else model
    return set_attention(model, "explicit" if explicit else "fused")


def prepare_batch(keypoints, codec) -> Callable:
    """The Trainer's prepare_batch, as pipelines/train.py's train() builds it: targets made on the device."""
    from dataops.loaders import make_targets

    def prepare(batch: dict, device: torch.device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets, weights, _ = make_targets(batch, keypoints, codec)
        return batch["image"], targets, weights

    return prepare


def make_trainer(model: nn.Module, loader, config, out_dir: Path, device: str, keypoints, codec, tracker=None):
    """The project's Trainer (DeepSpeed engine, NCCL on cuda, gloo on CPU) with the default DeepSpeed config."""
    from pipelines.train import use_environment_extension_cache
    from transpose.engine.trainer import Trainer

    use_environment_extension_cache()
    ds_config = json.loads(DS_CONFIG.read_text())
    prepare = prepare_batch(keypoints, codec)
    return Trainer(model, loader, prepare, config, out_dir, ds_config, tracker=tracker, device=device)


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def loss_run(
    plan: Plan, shards: Path, weights: dict, batches: list[dict], device: str, precision: str, out: Path
) -> list[float]:
    """The per-step losses of the Trainer on `batches` from `weights` (no dropout, the default lr)."""
    from transpose.engine import TrainConfig

    model = build_model(plan, shards)
    model.load_state_dict(weights)
    codec, keypoints = model.data_config.codec(), keypoint_set(shards, "train")
    config = TrainConfig(epochs=1, dropout=0.0, log_every_steps=1, precision=precision)
    recorder = LossRecorder()
    trainer = make_trainer(model, BatchList(batches), config, out, device, keypoints, codec, recorder)
    trainer.train_epoch()
    del trainer
    release(device)
    return recorder.losses


def check_batches(data: Data, plan: Plan) -> list[dict]:
    """The loss-agreement batches: the twin's first batches of the synthetic shards, unaugmented, in order."""
    from dataops.augment import AugmentConfig
    from dataops.loaders import torch_loader

    config = loader_config(plan, plan.loss_batch, augment=AugmentConfig(enabled=False), shuffle=False, workers=0)
    loader, _ = torch_loader(data.shards, "train", config)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == plan.loss_steps:
            break
    return batches


def loss_check(precision: str, device: str, losses: list[float], reference: list[float]) -> Check:
    """The device's first-step losses against the CPU fp32 run's, step by step."""
    tol = TOLERANCES.loss_rel(precision)
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference)]
    finite = all(math.isfinite(v) for v in losses)
    worst = max(rel) if rel else math.inf
    shown = ", ".join(f"{a:.5g}" for a in losses)
    measured = f"max relative difference {worst:.2e} over {len(losses)} steps (losses {shown})"
    if not reference:
        measured = f"no CPU fp32 losses to compare with (the reference run failed); losses {shown}"
    return Check(
        f"loss {precision} ({device} vs CPU fp32)",
        finite and len(losses) == len(reference) > 0 and worst <= tol,
        f"Trainer losses of the first {len(reference)} steps, {device} {precision} vs CPU fp32 (same batches, weights)",
        f"relative <= {tol:g} at every step",
        measured,
    )


class BusySampler:
    """Mean GPU utilisation (NVML's, in %) sampled in a thread while the block runs: torch.cuda.utilization
    (needs the nvidia-ml-py package), else `nvidia-smi`; `mean` is None when neither answers."""

    def __init__(self, device: str, interval: float = 0.1):
        self.read = _utilisation_reader() if device == "cuda" else None
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> BusySampler:
        if self.read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _utilisation_reader() -> Callable[[], float | None] | None:
    """A function reading the GPU's current utilisation, or None."""
    try:
        torch.cuda.utilization(0)
        return lambda: float(torch.cuda.utilization(0))
    except Exception:
        pass
    gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", gpu]

    def smi() -> float | None:
        try:
            return float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip())
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None

    return smi if shutil.which("nvidia-smi") and smi() is not None else None


def peak_memory_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def peak_memory(device: str) -> str:
    """The peak since peak_memory_reset: CUDA memory allocated by torch, or (CPU) the process's peak RSS."""
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / GIB:.1f} GiB allocated"
    kib = status_kib("VmHWM")
    return f"{kib / 1024**2:.2f} GiB RSS (process)" if kib else "not measured"


def training_loader(data: Data, plan: Plan, device: str, outcome: Outcome) -> str:
    """What the training runs read: "dali", or "torch" (the twin), with a note, when the DALI loader cannot be
    built on this device, so that the training figures are still measured."""
    try:
        device_loader(data.shards, "train", loader_config(plan, plan.train_batch), device)
        return "dali"
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        outcome.note(f"the DALI {decoding(device)} loader failed ({type(err).__name__}: {first}); the training "
                     f"runs read the PyTorch twin ({plan.workers} workers) instead")  # fmt: skip
        return "torch"
    finally:
        release(device)


def throughput_run(
    plan: Plan, data: Data, device: str, precision: str, explicit: bool, kind: str, out: Path, deadline: float
) -> TrainRate:
    """Train from the `kind` loader (random augmentation): warm-up steps, then timed steps until the deadline."""
    from dataops.augment import AugmentConfig
    from dataops.loaders import make_loader
    from transpose.engine import TrainConfig

    model = build_model(plan, data.shards)
    codec, keypoints = model.data_config.codec(), keypoint_set(data.shards, "train")
    loading = loader_config(plan, plan.train_batch, augment=AugmentConfig())
    if kind == "dali":
        source, name = device_loader(data.shards, "train", loading, device), f"DALI {decoding(device)}"
    else:
        source, name = (
            make_loader(data.shards, "train", loading, kind="torch"),
            f"PyTorch twin ({plan.workers} workers)",
        )
    loader = StepLimit(source, plan.warmup_steps)
    module = attention_formulation(model, explicit)
    started = time.perf_counter()
    trainer = make_trainer(module, loader, TrainConfig(epochs=1, precision=precision), out, device, keypoints, codec)
    print(f"  engine ready in {time.perf_counter() - started:.1f} s", flush=True)
    trainer.train_epoch()  # warm-up
    loader.steps_per_epoch, loader.deadline = plan.timed_steps, min(deadline, time.perf_counter() + plan.timed_s)
    peak_memory_reset(device)
    with BusySampler(device) as busy:
        record = trainer.train_epoch()
    steps = trainer.step_in_epoch - plan.warmup_steps
    setting = f"{precision}, {'explicit attention (reference formulation)' if explicit else 'SDPA'}"
    rate = TrainRate(
        setting,
        record["train/samples_per_s"],
        steps,
        peak_memory(device),
        busy.mean,
        f"{type(trainer.optimizer).__name__} ({torch.distributed.get_backend()})",
        record["train/loss_epoch"],
        name,
    )
    del trainer, module, model
    release(device)
    busy_text = f"{rate.busy:.0f}% GPU busy" if rate.busy is not None else "GPU busy not measured"
    print(f"INFO train {setting}: {rate.samples_per_s:.1f} samples/s over {steps} steps of {plan.train_batch}, "
          f"peak {rate.peak}, {busy_text}, loss {rate.loss:.3g}, {rate.optimizer}", flush=True)  # fmt: skip
    return rate


# ---- eval ---------------------------------------------------------------------------------------------------------
def eval_rate(model: nn.Module, x: torch.Tensor, plan: Plan, deadline: float, device: str) -> float:
    """Eval-mode forwards per second x batch: warm-up, then timed forwards (synchronised) until the deadline."""
    for _ in range(plan.eval_warmup):
        model(x)
    if device == "cuda":
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while runs < plan.eval_timed and (runs < 2 or time.perf_counter() < deadline):
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        runs += 1
    return runs * x.shape[0] / (time.perf_counter() - start)


def eval_heatmap_check(name: str, compared: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> Check:
    """max |got - ref| / max |ref| within `tol`."""
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    ok = math.isfinite(rel) and bool(torch.isfinite(got).all()) and rel <= tol
    return Check(name, ok, compared, f"max |diff| / max |heatmap| <= {tol:g}", f"{rel:.2e}")


def measure_eval(plan: Plan, data: Data, device: str, deadline: float, outcome: Outcome) -> None:
    """Forward throughput in eval mode (inference_mode): fp32, the reference formulation, and bf16 (weights and
    input cast, as the bf16 engine's module holds them); their heatmaps against each other and the CPU's."""
    model = build_model(plan, data.shards).eval()
    x = torch.randn(plan.eval_batch, 3, *plan.image_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        on_cpu = model(x[:2])  # the CPU fp32 reference of the first two samples
    model, x = model.to(device), x.to(device)
    settings = (
        ("fp32, SDPA", torch.float32, False),
        ("fp32, explicit attention (reference formulation)", torch.float32, True),
        ("bf16, SDPA", torch.bfloat16, False),  # last: casting the weights to bf16 rounds them
    )
    heatmaps = {}
    with torch.inference_mode():
        for i, (setting, dtype, explicit) in enumerate(settings):
            share = time.perf_counter() + (deadline - time.perf_counter()) / (len(settings) - i)
            module = attention_formulation(model.to(dtype), explicit)
            heatmaps[setting] = module(x.to(dtype)).float().cpu()
            outcome.evals[setting] = eval_rate(module, x.to(dtype), plan, share, device)
            print(f"INFO eval {setting}: {outcome.evals[setting]:.1f} samples/s (batch {plan.eval_batch})", flush=True)
    fp32, t = heatmaps["fp32, SDPA"], TOLERANCES
    same = f"same weights and input, eval mode, batch {plan.eval_batch}"
    checks = (
        ("eval fp32 ({} vs CPU)", f"fp32 heatmaps on {device} vs on the CPU (2 samples)", fp32[:2], on_cpu,
         t.eval_device_rel),
        ("eval explicit attention ({})", f"fp32 heatmaps, explicit attention vs SDPA on {device}, {same}",
         heatmaps[settings[1][0]], fp32, t.eval_explicit_rel),
        ("eval bf16 ({} vs fp32)", f"heatmaps, bf16 vs fp32 on {device}, {same}", heatmaps["bf16, SDPA"], fp32,
         t.eval_bf16_rel),
    )  # fmt: skip
    for name, compared, got, ref, tol in checks:
        outcome.add(eval_heatmap_check(name.format(device), compared, got, ref, tol))
    del model
    release(device)
