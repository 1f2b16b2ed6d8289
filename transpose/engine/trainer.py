"""DeepSpeed training of a TransPose model, from one process to many nodes, resumable at any point.

Runbook (the training stages call this; the same command resumes a killed run):
    one process (CPU, gloo):   python -m pipelines.train --stage pretrain
    N local processes:         torchrun --nproc_per_node N -m pipelines.train --stage pretrain
                               deepspeed --num_gpus N --no_ssh --node_rank 0 pipelines/train.py --stage pretrain
    several nodes:             see infra/README.md (hostfile, SLURM)

The trainer imports torch and deepspeed only and takes everything else as arguments: a resumable train
loader (`__iter__` over the rest of the current epoch, `state_dict`/`load_state_dict`, `steps_per_epoch`),
a `prepare_batch(batch, device) -> (images, targets, weights)` that builds targets on the device, a
`validate(model) -> (metrics, predictions)` callable, a tracker (log_params/log_metrics/log_artifact), and
optionally `on_epoch_end(record)`, which every rank calls after the epoch's checkpoint (Ray Tune reports).

Checkpoints (`out_dir/checkpoints/TAG/`): DeepSpeed's model/optimizer/scheduler files plus one `rank{r}.pt`
per rank (loader position, RNG states). `checkpoints/latest.json` names the newest complete checkpoint and is
replaced atomically after every rank has finished writing, so a crash during a save leaves the previous one
in force. A checkpoint is resumed only by a run of the same `fingerprint` (the caller's identity of the run:
its configuration, data, code); the checkpoints of a run of another fingerprint are moved aside to
`out_dir/checkpoints-previous/<fingerprint hash>/` (the newest `keep_previous_runs` are kept), never deleted
on the spot. The best model by the gate metric is exported as a bare state_dict (`best.pth`), loadable like the
reference's `model_best.pth`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from transpose.engine.config import TrainConfig
from transpose.engine.distributed import (
    barrier,
    broadcast_object,
    init_process_group,
    is_main,
    local_rank,
    rng_state,
    set_rng_state,
)
from transpose.engine.tracking import NullTracker, Tracker
from transpose.losses import weighted_mse_loss


def deepspeed_config(base: dict, config: TrainConfig, micro_batch: int) -> dict:
    """The DeepSpeed config file's dict with the run's batch, ZeRO stage, precision and clipping."""
    ds = json.loads(json.dumps(base))
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = 1
    ds.pop("train_batch_size", None)
    ds.setdefault("zero_optimization", {})["stage"] = config.zero_stage
    ds["bf16"] = {"enabled": config.precision == "bf16"}
    ds["fp16"] = {"enabled": config.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16}
    if config.precision == "bf16":  # BatchNorm buffers must follow the parameters' dtype
        ds.setdefault("data_types", {})["buffer_dtype"] = "bf16"
    ds["gradient_clipping"] = config.grad_clip
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def apply_model_options(model: nn.Module, config: TrainConfig) -> nn.Module:
    if config.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = config.dropout
            if hasattr(m, "self_attn"):
                m.self_attn.dropout = config.dropout
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def param_groups(model: nn.Module, config: TrainConfig, head_prefixes: tuple[str, ...]) -> list[dict]:
    """One group at `lr`, or (transfer) the new head at `head_lr` and the pretrained layers at `lr`."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.head_lr is None:
        return [{"params": [p for _, p in trainable], "lr": config.lr}]
    head = [p for n, p in trainable if n.startswith(head_prefixes)]
    rest = [p for n, p in trainable if not n.startswith(head_prefixes)]
    return [{"params": rest, "lr": config.lr}, {"params": head, "lr": config.head_lr}]


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train_loader,
        prepare_batch: Callable[[dict, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        config: TrainConfig,
        out_dir: str | Path,
        ds_config: dict,
        validate: Callable[[nn.Module], tuple[dict, list]] | None = None,
        gate_metric: str = "AP",
        tracker: Tracker | None = None,
        device: str = "cpu",
        head_prefixes: tuple[str, ...] = ("final_layer.",),
        fingerprint: str = "",
        on_epoch_end: Callable[[dict], None] | None = None,
    ):
        self.config = config
        self.on_epoch_end = on_epoch_end  # every rank, after the epoch's checkpoint: the epoch's record
        self.fingerprint = fingerprint or json.dumps(asdict(config), sort_keys=True)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.loader = train_loader
        self.prepare_batch = prepare_batch
        self.validate = validate
        self.gate_metric = gate_metric
        self.tracker = tracker or NullTracker()
        self.rank, self.world_size = init_process_group(device)
        self.device = torch.device(f"cuda:{local_rank()}" if device.startswith("cuda") else "cpu")
        torch.manual_seed(config.seed + self.rank)
        model = apply_model_options(model, config).to(self.device)
        optimizer = torch.optim.Adam(
            param_groups(model, config, head_prefixes), lr=config.lr, weight_decay=config.weight_decay
        )
        steps = train_loader.steps_per_epoch
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: config.lr_factor(s, steps)),
            config=deepspeed_config(ds_config, config, train_loader.micro_batch),
        )
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: dict = {}
        self.history: list[dict] = []

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _latest(self) -> dict | None:
        pointer = self.ckpt_dir / "latest.json"
        return json.loads(pointer.read_text()) if pointer.is_file() else None

    def save_checkpoint(self) -> str:
        tag = f"e{self.epoch:04d}s{self.step_in_epoch:06d}"
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
        torch.save(
            {"loader": self.loader.state_dict(), "rng": rng_state()}, self.ckpt_dir / tag / f"rank{self.rank}.pt"
        )
        barrier()  # every rank's files are complete before the pointer moves
        if is_main():
            pointer = {
                "tag": tag,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "best": self.best,
                "history": self.history,
                "world_size": self.world_size,
                "fingerprint": self.fingerprint,
            }
            tmp = self.ckpt_dir / "latest.json.partial"
            tmp.write_text(json.dumps(pointer, indent=1))
            os.replace(tmp, self.ckpt_dir / "latest.json")
            tags = sorted(p for p in self.ckpt_dir.iterdir() if p.is_dir() and p.name[0] == "e")
            for old in tags[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return tag

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any; True when resumed."""
        latest = broadcast_object(self._latest())
        if latest is None:
            return False
        if latest.get("fingerprint") != self.fingerprint:  # another run: its state is not ours
            if is_main():
                moved = self._move_aside(latest.get("fingerprint", ""))
                changed = ", ".join(changed_parts(latest.get("fingerprint", ""), self.fingerprint))
                print(f"{self.ckpt_dir} holds checkpoints of another run ({changed} changed): training afresh; "
                      f"they are kept in {moved}")  # fmt: skip
            barrier()
            return False
        if latest["world_size"] != self.world_size:
            raise RuntimeError(
                f"{self.ckpt_dir} was written by {latest['world_size']} processes, this run has {self.world_size}: "
                "resume with the same number of processes (or start in a new out_dir)"
            )
        self.engine.load_checkpoint(
            str(self.ckpt_dir), tag=latest["tag"], load_optimizer_states=True, load_lr_scheduler_states=True
        )
        state = torch.load(self.ckpt_dir / latest["tag"] / f"rank{self.rank}.pt", weights_only=True)
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch = latest["epoch"], latest["step_in_epoch"]
        self.global_step, self.best, self.history = latest["global_step"], latest["best"], latest["history"]
        if is_main():
            print(f"resumed from {self.ckpt_dir / latest['tag']} (epoch {self.epoch}, step {self.step_in_epoch})")
        return True

    def _move_aside(self, fingerprint: str) -> Path:
        """Move the checkpoints of another run to checkpoints-previous/<its hash>/, keeping the newest few."""
        previous = self.out_dir / "checkpoints-previous"
        previous.mkdir(exist_ok=True)
        target = previous / hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
        if target.exists():  # the same earlier run again: keep its newer state
            shutil.rmtree(target)
        os.replace(self.ckpt_dir, target)
        kept = sorted(previous.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[self.config.keep_previous_runs :]:
            print(f"removing the checkpoints of an older run, {old} (train.keep_previous_runs)")
            shutil.rmtree(old, ignore_errors=True)
        return target

    def export(self, name: str) -> Path:
        """Bare fp32 state_dict of the model (reference `model_best.pth` format), written atomically."""
        path = self.out_dir / name
        if is_main():
            state = {
                k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                for k, v in self.engine.module.state_dict().items()
            }
            torch.save(state, path.with_name(path.name + ".partial"))
            os.replace(path.with_name(path.name + ".partial"), path)
        barrier()
        return path

    # ---- training --------------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        self.engine.train()
        if self.config.freeze_bn:
            freeze_batchnorm(self.engine.module)
        total = self.loader.steps_per_epoch
        bar = (
            _progress(total, f"epoch {self.epoch + 1}/{self.config.epochs}", self.step_in_epoch) if is_main() else None
        )
        losses, seen, started = [], 0, time.perf_counter()
        dtype = next(self.engine.module.parameters()).dtype
        for batch in self.loader:
            images, targets, weights = self.prepare_batch(batch, self.device)
            out = self.engine(images.to(dtype))
            loss = weighted_mse_loss(out.float(), targets, weights)
            self.engine.backward(loss)
            self.engine.step()
            self.step_in_epoch += 1
            self.global_step += 1
            losses.append(loss.item())
            seen += images.shape[0] * self.world_size
            lr = self.optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss.item():.2e}", lr=f"{lr:.1e}", sps=f"{seen / (time.perf_counter() - started):.1f}"
                )
            if is_main() and self.global_step % self.config.log_every_steps == 0:
                self.tracker.log_metrics({"train/loss": loss.item(), "train/lr": lr}, step=self.global_step)
            every = self.config.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < total:  # epoch ends save anyway
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        return {
            "train/loss_epoch": float(sum(losses) / max(len(losses), 1)),
            "train/samples_per_s": seen / max(elapsed, 1e-9),
        }

    def fit(self) -> dict:
        """Train to the configured number of epochs (resuming if a checkpoint exists); returns the best metrics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        if is_main():
            self.tracker.log_params({f"train.{k}": v for k, v in asdict(self.config).items()})
        while self.epoch < self.config.epochs:
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            validate_now = self.validate and (
                (self.epoch + 1) % self.config.val_every_epochs == 0 or self.epoch + 1 == self.config.epochs
            )
            if validate_now:
                metrics, predictions = self.validate(self.engine.module)
                record.update({f"val/{k}": v for k, v in metrics.items()})
                gate = metrics[self.gate_metric]
                if not self.best or gate > self.best["gate"]:
                    self.best = {"gate": gate, "epoch": self.epoch + 1, "metrics": metrics}
                    self.export("best.pth")
                    if is_main():
                        (self.out_dir / "best_predictions.json").write_text(json.dumps(predictions))
            self.history.append(record)
            if is_main():
                self.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=self.global_step)
                summary = ", ".join(
                    f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and math.isfinite(v)
                )
                print(f"epoch {self.epoch + 1}: {summary}")
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save_checkpoint()
            if self.on_epoch_end is not None:  # e.g. Ray Tune's report (every rank), which may stop the run here
                self.on_epoch_end(dict(record))
        self.export("final.pth")
        if is_main():
            (self.out_dir / "history.json").write_text(json.dumps(self.history, indent=1))
        return self.best


def changed_parts(old: str, new: str) -> list[str]:
    """The top-level keys in which two JSON fingerprints differ (the whole fingerprint if either is not JSON)."""
    try:
        before, after = json.loads(old), json.loads(new)
    except ValueError:
        return ["the fingerprint"]
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return ["the fingerprint"]
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)) or ["the fingerprint"]


def _progress(total: int, desc: str, initial: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
