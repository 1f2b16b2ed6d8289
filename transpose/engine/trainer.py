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

from transpose.engine.checkpoints import (
    POINTER,
    CheckpointError,
    describe_write_error,
    find_resumable,
    remove_tag,
    seal,
    space_shortfall,
    stale_tags,
    tag_name,
    write_json_durably,
)
from transpose.engine.config import TrainConfig
from transpose.engine.distributed import (
    barrier,
    broadcast_object,
    gather_objects,
    init_process_group,
    is_main,
    local_rank,
    mean_loss,
    rng_state,
    set_rng_state,
)
from transpose.engine.step_profile import StepProfile
from transpose.engine.tracking import NullTracker, Tracker
from transpose.losses import weighted_mse_loss
from transpose.models.dropout import set_dropout_masks
from transpose.models.transformer import set_attention


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf (train.nonfinite_loss: stop)."""


def deepspeed_config(base: dict, config: TrainConfig, micro_batch: int) -> dict:
    """The DeepSpeed config file's dict with the run's batch, ZeRO stage, precision and clipping."""
    ds = json.loads(json.dumps(base))
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = 1
    ds.pop("train_batch_size", None)
    ds.setdefault("zero_optimization", {})["stage"] = config.zero_stage
    if config.zero_stage > 0:  # every rank reads every partition: a run resumes on another number of processes
        ds["zero_optimization"]["elastic_checkpoint"] = True
    ds["bf16"] = {"enabled": config.precision == "bf16"}
    ds["fp16"] = {"enabled": config.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16}
    if config.precision == "bf16":  # BatchNorm buffers must follow the parameters' dtype
        ds.setdefault("data_types", {})["buffer_dtype"] = "bf16"
    ds["gradient_clipping"] = config.grad_clip
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def apply_model_options(model: nn.Module, config: TrainConfig) -> nn.Module:
    set_dropout_masks(model, config.dropout_masks)
    set_attention(model, config.attention)
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
        profile: bool = False,
    ):
        """`profile`: time the phases of every step (see step_profile.py) also on CUDA, where that synchronises
        the device at each phase; on CPU they are always timed (it costs nothing) and land in the history."""
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
        if config.channels_last and config.zero_stage == 0 and config.precision == "fp32":
            # NHWC weights, after DeepSpeed's start-up broadcast (which needs contiguous parameters); the parameter
            # objects stay the optimizer's. ZeRO and bf16/fp16 keep flat buffers viewing the parameters: NHWC
            # inputs only there (convolutions then still run NHWC, at about half the gain)
            self.engine.module.to(memory_format=torch.channels_last)
        on_cuda = self.device.type == "cuda"
        self.profile = StepProfile(sync=torch.cuda.synchronize if on_cuda else None) if profile or not on_cuda else None
        if self.profile is not None:
            self.profile.wrap(self.engine, "allreduce_gradients", "allreduce")
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: dict = {}
        self.history: list[dict] = []
        self._epoch_loss = [0.0, 0]  # the rank-mean losses of this epoch's steps so far: sum, count
        self.skipped_steps = 0  # steps skipped for a non-finite loss (train.nonfinite_loss: skip)

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _state(self, tag: str) -> dict:
        """What a checkpoint records besides the tensors: where training stands, and whose run it is."""
        return {
            "tag": tag,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "history": self.history,
            "epoch_loss": self._epoch_loss,  # [sum, steps] of the epoch so far: a resumed epoch averages it all
            "skipped_steps": self.skipped_steps,
            "world_size": self.world_size,
            "global_batch": getattr(self.loader, "global_batch", self.loader.micro_batch * self.world_size),
            "fingerprint": self.fingerprint,
            "tracking_run_id": getattr(self.tracker, "run_id", None),
        }

    def save_checkpoint(self) -> str:
        """Write, fsync and seal a tag folder on every rank, then move latest.json to it (see checkpoints.py).
        A failed write (a full disk) removes the half-written folder and raises, the previous one in force."""
        tag = tag_name(self.epoch, self.step_in_epoch)
        tag_dir = self.ckpt_dir / tag
        if self.world_size > 1:  # a rank failing inside DeepSpeed's save would leave the others in its barrier
            short = broadcast_object(space_shortfall(self.ckpt_dir, tag_dir) if is_main() else None)
            if short:
                raise CheckpointError(short)
        if is_main() and tag_dir.exists():  # the leftover of a save cut short: start the folder clean
            remove_tag(tag_dir)
        barrier()
        error = None
        try:
            self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
            state = {"loader": self.loader.state_dict(), "rng": rng_state()}
            torch.save(state, tag_dir / f"rank{self.rank}.pt")
        except (OSError, RuntimeError) as err:
            error = describe_write_error(err, tag_dir)
        errors = [e for e in gather_objects(error) if e]
        sealed_error = None
        if is_main() and not errors:
            try:
                seal(tag_dir, self._state(tag))
                write_json_durably(self.ckpt_dir / POINTER, self._state(tag))
            except OSError as err:
                sealed_error = describe_write_error(err, tag_dir)
        sealed_error = broadcast_object(sealed_error)
        errors += [sealed_error] if sealed_error else []
        if errors:
            if is_main():
                remove_tag(tag_dir)
            barrier()
            kept = self._last_good()
            where = f"{kept} stays the checkpoint to resume from" if kept else "no earlier checkpoint exists"
            raise CheckpointError(f"{errors[0]}; the half-written folder was removed and {where}")
        if is_main():
            for old in stale_tags(self.ckpt_dir, self.config.keep_checkpoints, current=tag):
                remove_tag(old)
        barrier()
        return tag

    def resume(self) -> bool:
        """Load the newest complete checkpoint of this run, if any; True when resumed."""
        found = find_resumable(self.ckpt_dir) if is_main() else None
        found = broadcast_object(None if found is None else (str(found.tag_dir), found.state, found.notes))
        if found is None:
            return False
        tag_dir, latest, notes = Path(found[0]), found[1], found[2]
        if latest.get("fingerprint") != self.fingerprint:  # another run: its state is not ours
            if is_main():
                moved = self._move_aside(latest.get("fingerprint", ""))
                changed = ", ".join(changed_parts(latest.get("fingerprint", ""), self.fingerprint))
                print(f"{self.ckpt_dir} holds checkpoints of another run ({changed} changed): training afresh; "
                      f"they are kept in {moved}")  # fmt: skip
            barrier()
            return False
        if is_main():
            for note in notes:
                print(f"resume: {note}")
        elastic = latest["world_size"] != self.world_size
        if elastic:
            self._check_elastic(latest)
        tag = tag_dir.name
        partitioned = self.config.zero_stage > 0
        self.engine.load_checkpoint(
            str(self.ckpt_dir), tag=tag, load_optimizer_states=not partitioned, load_lr_scheduler_states=True
        )
        if partitioned:
            self._load_zero_partitions(tag)
        own = tag_dir / f"rank{self.rank}.pt"
        if self.rank < latest["world_size"]:  # the checkpoint had this rank: its own file must be there
            state = torch.load(own, weights_only=True)
        else:  # a rank the checkpoint did not have (resumed on more processes): rank 0's position, own seed
            state = torch.load(tag_dir / "rank0.pt", weights_only=True)
            state["rng"] = None
        self.loader.load_state_dict(state["loader"])
        if state["rng"] is not None and not elastic:
            set_rng_state(state["rng"])
        else:  # another world: every rank reseeds by its rank and the step (dropout draws differ, by design)
            torch.manual_seed(self.config.seed + self.rank + 7919 * latest["global_step"])
        self.epoch, self.step_in_epoch = latest["epoch"], latest["step_in_epoch"]
        self.global_step, self.best, self.history = latest["global_step"], latest["best"], latest["history"]
        self._epoch_loss = list(latest.get("epoch_loss", [0.0, 0]))
        self.skipped_steps = int(latest.get("skipped_steps", 0))
        if is_main():
            print(f"resumed from {tag_dir} (epoch {self.epoch}, step {self.step_in_epoch})")
        return True

    def _last_good(self) -> str | None:
        """The checkpoint a rerun would resume, on every rank (rank 0 looks)."""
        found = find_resumable(self.ckpt_dir) if is_main() else None
        return broadcast_object(str(found.tag_dir) if found else None)

    def _check_elastic(self, latest: dict) -> None:
        """A checkpoint of another number of processes resumes only where that changes no result."""
        before, now = latest["world_size"], self.world_size
        where = f"{self.ckpt_dir} was written by {before} processes, this run has {now}"
        if not getattr(self.loader, "elastic", False):
            raise RuntimeError(
                f"{where}: the DALI loader's position is per process and cannot be re-split; resume with {before} "
                "processes, or use loader: torch, whose position is the global step"
            )
        if self.config.precision != "fp32":
            raise RuntimeError(f"{where}: elastic resume is for fp32 runs; resume with {before} processes")
        batch = getattr(self.loader, "global_batch", None)
        if batch != latest.get("global_batch"):
            raise RuntimeError(
                f"{where}, with a global batch of {latest.get('global_batch')} then and {batch} now: set batch_size "
                f"so that processes x batch_size = {latest.get('global_batch')}"
            )
        if is_main():
            print(f"{where}: resuming elastically with the same global batch of {batch}")

    def _load_zero_partitions(self, tag: str) -> None:
        """ZeRO 1/2 optimizer partitions (and fp32 master weights), merged and re-split for this world size:
        DeepSpeed's elastic-checkpoint path, also for ranks the checkpoint did not have."""
        from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE_STEP

        opt = self.engine.optimizer
        partitions = self.engine._get_all_zero_checkpoints(str(self.ckpt_dir), tag)
        if partitions is None:
            raise CheckpointError(f"{self.ckpt_dir / tag}: no ZeRO optimizer partitions in this checkpoint")
        for sd in partitions:
            sd.setdefault(BASE_OPTIMIZER_STATE_STEP, None)
        had_step = ["step" in g for g in opt.optimizer.param_groups]
        if self.rank < len(partitions):
            opt.load_state_dict(state_dict_list=partitions, load_optimizer_states=True, load_from_fp32_weights=True)
        else:  # DeepSpeed indexes the list by this rank: the same merge without that lookup
            opt._load_global_state(partitions[0])
            opt._restore_elastic_base_optimizer_state(partitions)
            opt._restore_from_elastic_fp32_weights(partitions)
            opt._link_all_hp_params()
        for group, lr, had in zip(opt.optimizer.param_groups, self.scheduler.get_last_lr(), had_step):
            group["lr"] = lr
            if not had:
                group.pop("step", None)
        for state in opt.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.numel() == 1 and key == "step":
                    state[key] = value.reshape(())

    def _move_aside(self, fingerprint: str) -> Path:
        """Move the checkpoints of another run to checkpoints-previous/<its hash>/, keeping the newest few."""
        previous = self.out_dir / "checkpoints-previous"
        previous.mkdir(exist_ok=True)
        target = previous / hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
        if target.exists():  # the same earlier run again: keep its newer state, the older one beside it
            os.replace(target, previous / f"{target.name}-{int(target.stat().st_mtime)}")
        os.replace(self.ckpt_dir, target)
        kept = sorted(previous.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [k for k in kept if k != target][max(self.config.keep_previous_runs - 1, 0) :]:
            print(f"removing the checkpoints of an older run, {old} (train.keep_previous_runs)")
            shutil.rmtree(old, ignore_errors=True)
        return target

    def export(self, name: str) -> Path:
        """Bare fp32 state_dict of the model (reference `model_best.pth` format), written atomically."""
        path = self.out_dir / name
        if is_main():
            state = {  # contiguous: a channels_last run's file loads like any other
                k: (v.detach().float() if v.is_floating_point() else v).cpu().contiguous()
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
        seen, started = 0, time.perf_counter()
        dtype = next(self.engine.module.parameters()).dtype
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        profile = self.profile or StepProfile()
        profile.reset()
        for batch in profile.iterate(self.loader):
            with profile.phase("targets"):
                images, targets, weights = self.prepare_batch(batch, self.device)
                images = images.to(dtype=dtype, memory_format=memory_format)
            with profile.phase("forward"):
                out = self.engine(images)
                loss = weighted_mse_loss(out.float(), targets, weights)
                value, finite = mean_loss(loss)  # the same on every rank: every rank takes the same branch
            if finite:
                with profile.phase("backward"):  # less the gradient all-reduce inside it (its own phase)
                    self.engine.backward(loss)
                with profile.phase("optimizer"):
                    self.engine.step()
                self._epoch_loss = [self._epoch_loss[0] + value, self._epoch_loss[1] + 1]
            else:
                self._nonfinite_loss(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            seen += images.shape[0] * self.world_size
            with profile.phase("logging"):
                lr = self.optimizer.param_groups[0]["lr"]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{value:.2e}", lr=f"{lr:.1e}", sps=f"{seen / (time.perf_counter() - started):.1f}"
                    )
                if is_main() and self.global_step % self.config.log_every_steps == 0:
                    self.tracker.log_metrics({"train/loss": value, "train/lr": lr}, step=self.global_step)
            every = self.config.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < total:  # epoch ends save anyway
                with profile.phase("checkpoint"):
                    self.save_checkpoint()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        total_loss, steps = self._epoch_loss
        self._epoch_loss = [0.0, 0]
        record = {
            "train/loss_epoch": float(total_loss / steps) if steps else float("nan"),
            "train/samples_per_s": seen / max(elapsed, 1e-9),
        }
        if self.skipped_steps:
            record["train/skipped_steps"] = float(self.skipped_steps)
        if self.profile is not None:
            record.update({f"profile/{name}_ms": ms for name, ms in self.profile.per_step_ms().items()})
        return record

    def _nonfinite_loss(self, batch: dict) -> None:
        """A NaN/inf loss: stop before anything is written (the last good checkpoint stays), or skip the step."""
        ids = batch.get("ids")
        samples = ", ".join(f"image {int(i)} ann {int(a)}" for i, a in ids[:8].tolist()) if ids is not None else "?"
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step {self.global_step + 1})"
        if self.config.nonfinite_loss == "skip":
            self.skipped_steps += 1
            if is_main():
                print(f"non-finite loss at {where}: step skipped ({self.skipped_steps} so far; samples: {samples})")
            return
        kept = self._last_good()
        raise NonFiniteLossError(
            f"the loss is not finite at {where} (this rank's samples: {samples}); nothing was written, "
            f"{kept or 'no checkpoint'} stays the last good checkpoint. Set train.nonfinite_loss: skip to skip "
            "such steps (the same command then resumes from it), or lower the lr (a new run: it trains afresh)"
        )

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
                started = time.perf_counter()
                metrics, predictions = self.validate(self.engine.module)
                record["time/validation_s"] = time.perf_counter() - started
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
