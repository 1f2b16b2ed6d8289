"""The DALI loader: webdataset reader with the DALI index files, JPEG decoding (`mixed` on a GPU, `cpu`
here), the reference's per-sample affine built in the graph, normalisation, hand-off to torch.

Conventions (measured, see docs/data.md): DALI's pixel [0, 0] is a corner where OpenCV's is a centre, so the
OpenCV-convention matrix M is conjugated by half-pixel shifts, T(+.5) M T(-.5), and passed src->dst with
`inverse_map=False` and `fill_value=0`. Joints use M itself (integer pixel centres), transformed in torch.
DALI has no per-sample gather, so the left/right swap of flipped samples happens in torch too
(`dataops.loaders.make_targets`). `fn.transforms.combine(a, b, c)` applies a first (c.b.a); a transform op
given an input matrix applies itself after it.

The same graph runs on CPU (`device="cpu"`, `device_id=None`) and GPU (`device="gpu"`, a device id): only
the decoder's device and the warp kernel change. On GPU the warp is `fn.warp_affine`; on CPU it is OpenCV's
`warpAffine` inside the graph (`fn.python_function`) unless `LoaderConfig.cpu_warp = "dali"`, because DALI's
CPU warp_affine is several times slower than the JPEG decode itself (both are tested against the twin).
Checkpointing is on, so an interrupted epoch resumes on the same samples and draws: `loader.checkpoint()`
and `DaliLoader(..., checkpoint=...)`.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from dataops.loaders.common import LoaderConfig
from dataops.loaders.shard_index import ShardIndex, open_shards
from dataops.shards.verify import ShardError

OUTPUTS = ("image", "kpt", "matrix", "flip", "geom", "center", "scale", "ids")


def _opencv_warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.warpAffine with the OpenCV-convention matrix: DALI's CPU warp_affine is a generic kernel that
    costs ~2 ms per 256x192 crop here, OpenCV's SIMD one ~0.1 ms (docs/benchmarks.md)."""
    return cv2.warpAffine(image, matrix.astype(np.float64), size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def build_pipeline(
    tars: list[Path],
    index_paths: list[Path],
    config: LoaderConfig,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    device_id: int | None = None,
    checkpoint: str | None = None,
):
    """The DALI pipeline (built) for one rank."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and device_id is None:
        raise ValueError("a GPU pipeline needs device_id (the CUDA device index as this process sees it)")
    h, w = config.input_size
    aug, fixed = config.augment, config.fixed
    mean = [255.0 * m for m in config.mean]
    std = [255.0 * s for s in config.std]

    @pipeline_def(
        batch_size=config.batch_size,
        num_threads=max(1, config.workers),
        device_id=device_id if device == "gpu" else None,
        seed=config.seed + 1000 * rank,
        enable_checkpointing=True,
        prefetch_queue_depth=config.prefetch,
        exec_dynamic=True,
    )
    def pose_pipeline():
        jpg, geom, kpt, half, ids = fn.readers.webdataset(
            paths=[str(t) for t in tars],
            index_paths=[str(p) for p in index_paths],
            ext=["jpg", "geom.f32", "kpt.f32", "half.f32", "ids.i64"],
            dtypes=[types.UINT8, types.FLOAT, types.FLOAT, types.FLOAT, types.INT64],
            missing_component_behavior="error",
            shard_id=rank,
            num_shards=world_size,
            random_shuffle=config.shuffle,
            initial_fill=256,
            pad_last_batch=True,
            stick_to_shard=False,
            seed=config.seed,
            name="Reader",
        )
        image = fn.decoders.image(jpg, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        zero = geom[0] * 0.0  # scalar constants are derived from a scalar node (fn.constant will not stack)
        offset = geom[4:6]
        center, sw, sh = geom[0:2], geom[2], geom[3]

        def const(value: float):
            return zero + float(value)

        # half-body: slot 1 is what an "upper" draw gives, slot 2 what a "lower" draw gives (see augment.py)
        if fixed is not None:
            upper = half[8] * const(fixed.half_body == 1)
            lower = half[9] * const(fixed.half_body == 2)
        elif aug.enabled:
            gate = fn.cast(half[10] > aug.half_body_min_joints, dtype=types.FLOAT)
            gate = gate * fn.cast(fn.random.coin_flip(probability=aug.half_body_prob), dtype=types.FLOAT)
            pick_upper = fn.cast(fn.random.normal() < aug.upper_body_threshold, dtype=types.FLOAT)
            upper = gate * pick_upper * half[8]
            lower = gate * (1.0 - pick_upper) * half[9]
        else:
            upper = lower = zero
        keep = 1.0 - upper - lower
        center = center * keep + half[0:2] * upper + half[4:6] * lower
        sw = sw * keep + half[2] * upper + half[6] * lower
        sh = sh * keep + half[3] * upper + half[7] * lower
        # shift of the centre by a fraction of the box (not in the reference; no op at all when off)
        if fixed is not None:
            center = center + fn.stack(const(fixed.shift[0]) * sw, const(fixed.shift[1]) * sh) * 200.0
        elif aug.max_shift > 0:
            moved = fn.cast(fn.random.coin_flip(probability=aug.shift_prob), dtype=types.FLOAT) * aug.shift_factor
            shift = fn.random.uniform(range=[-1.0, 1.0], shape=[2]) * moved
            center = center + shift * fn.stack(sw, sh) * 200.0
        # scale, rotation (behind a p=0.6 gate), flip
        if fixed is not None:
            factor, rot, flip = const(fixed.scale_mult), const(fixed.rotation), const(float(fixed.flip))
        elif aug.enabled:
            sf, rf = aug.scale_factor, aug.rotation_factor
            factor = dmath.clamp(fn.random.normal() * sf + 1.0, 1.0 - sf, 1.0 + sf)
            rot = dmath.clamp(fn.random.normal() * rf, -2.0 * rf, 2.0 * rf)
            rot = rot * fn.cast(fn.random.coin_flip(probability=aug.rotation_prob), dtype=types.FLOAT)
            flip = fn.cast(fn.random.coin_flip(probability=aug.flip_prob), dtype=types.FLOAT)
        else:
            factor, rot, flip = const(1.0), zero, zero
        sw, sh = sw * factor, sh * factor
        k = (w - 1.0) / (sw * 200.0 - 1.0)  # the unbiased affine's (size-1) factor
        region_center = center - offset
        m = fn.transforms.translation(offset=-region_center)
        m = fn.transforms.scale(m, scale=fn.stack(1.0 - 2.0 * flip, flip * 0.0 + 1.0))  # mirror about the centre
        m = fn.transforms.rotation(m, angle=-rot)  # reference rotation r == DALI angle -r
        m = fn.transforms.scale(m, scale=fn.stack(k, k))
        m_cv = fn.transforms.translation(m, offset=[(w - 1) * 0.5, (h - 1) * 0.5])  # region -> crop, OpenCV
        m_dali = fn.transforms.combine(
            fn.transforms.translation(offset=[-0.5, -0.5]), m_cv, fn.transforms.translation(offset=[0.5, 0.5])
        )
        if device == "gpu" or config.cpu_warp == "dali":
            crop = fn.warp_affine(
                image,
                matrix=m_dali,  # named arguments stay on the CPU, also for the GPU warp (DALI refuses GPU ones)
                size=[h, w],
                inverse_map=False,
                fill_value=0,
                interp_type=types.INTERP_LINEAR,
            )
        else:
            crop = fn.python_function(image, m_cv, function=functools.partial(_opencv_warp, size=(w, h)))
        out = fn.crop_mirror_normalize(crop, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
        m_image = fn.transforms.combine(fn.transforms.translation(offset=-offset), m_cv)  # image -> crop
        return out, kpt, m_image, flip, geom, center, fn.stack(sw, sh), ids

    pipe = pose_pipeline(checkpoint=checkpoint) if checkpoint else pose_pipeline()
    pipe.build()
    return pipe


class DaliLoader:
    """Iterates a split's shards as torch batches (see dataops.loaders.common for the layout).

    Sharded across ranks: every sample once per epoch over all ranks, every rank the same number of steps;
    the padding that evens the last batches out gets `valid` = 0.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        config: LoaderConfig,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        device_id: int | None = None,
        checkpoint: str | None = None,
    ):
        self.shards = open_shards(shard_dir, split)
        self.skipped = self.shards.report
        if self.skipped.total:
            print(f"{split} shards: {self.skipped.summary()}")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.device, self.device_id = device, device_id
        self.num_samples = len(self.shards.samples)
        self.micro_batch = config.batch_size
        self._build(checkpoint)

    def _build(self, checkpoint: str | None) -> None:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        state = json.loads(checkpoint) if checkpoint else {"dali": None, "epoch": 0, "step": 0}
        self.pipe = build_pipeline(
            self.shards.tars,
            self.shards.index_paths,
            self.config,
            self.rank,
            self.world_size,
            self.device,
            self.device_id,
            _unpack(state["dali"]),
        )
        self.iterator = DALIGenericIterator(
            [self.pipe], list(OUTPUTS), reader_name="Reader", last_batch_policy=LastBatchPolicy.FILL, auto_reset=True
        )
        self.epoch, self._step = state["epoch"], state["step"]

    @property
    def steps_per_epoch(self) -> int:
        largest_shard = -(-self.num_samples // self.world_size)
        return -(-largest_shard // self.micro_batch)

    def state_dict(self) -> dict:
        return {"checkpoint": self.checkpoint()}

    def load_state_dict(self, state: dict) -> None:
        self._build(state["checkpoint"])

    def __len__(self) -> int:
        return len(self.iterator)

    def _shard_size(self, epoch: int) -> int:
        """Samples of this rank's shard in an epoch (stick_to_shard=False moves to the next shard each epoch)."""
        shard = (self.rank + epoch) % self.world_size
        n, k = self.num_samples, self.world_size
        return (shard + 1) * n // k - shard * n // k

    def __iter__(self):
        size = self._shard_size(self.epoch)
        b = self.config.batch_size
        batches = iter(self.iterator)
        while True:
            try:
                outputs = next(batches)
            except StopIteration:
                break
            except RuntimeError as err:  # DALI's own message names no file: find the sample ourselves
                raise ShardError(self._explain(err)) from err
            step = self._step
            self._step += 1
            batch = dict(outputs[0])
            batch["flip"] = batch["flip"].reshape(-1)
            batch["kpt"] = batch["kpt"].reshape(batch["kpt"].shape[0], -1, 3)
            for name in ("kpt", "geom"):
                bad = ~torch.isfinite(batch[name].reshape(batch[name].shape[0], -1)).all(dim=1)
                if bad.any():
                    ids = batch["ids"][bad.to(batch["ids"].device)][0].tolist()
                    raise ShardError(
                        f"{self._tars()}: the sample of image {ids[0]}, annotation {ids[1]} holds NaN or inf in "
                        f"its {name}: the shard is damaged; re-shard this split"
                    )
            batch["valid"] = (torch.arange(b) + step * b < size).float().to(batch["image"].device)
            yield batch
        self.epoch, self._step = self.epoch + 1, 0

    def _tars(self) -> str:
        tars = self.shards.tars
        return f"{tars[0].parent}/{tars[0].name.rsplit('-', 1)[0]}-*.tar ({len(tars)} tars)"

    def _explain(self, err: RuntimeError) -> str:
        """DALI's failure, with the tar and sample it came from: every stored JPEG is checked with the
        twin's reader and decoder (only on this error path)."""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        index = ShardIndex(self.shards.samples)
        for i, location in enumerate(self.shards.samples):
            try:
                raw = index.read(i)
            except ShardError as bad:
                return f"DALI failed ({first}); {bad}"
            if cv2.imdecode(np.frombuffer(raw["jpg"], np.uint8), cv2.IMREAD_COLOR) is None:
                return (
                    f"DALI failed ({first}): {location.tar}: sample {location.key} holds an undecodable JPEG; "
                    "re-shard this split"
                )
        return f"DALI failed reading {self._tars()} ({first}); every sample reads and decodes with OpenCV"

    def checkpoint(self) -> str:
        """Reader position, RNG state and epoch/step after the last batch handed out (prefetched batches are
        accounted for): rebuild with `checkpoint=` to resume on the same samples and draws."""
        dali = self.iterator.checkpoints()[0]
        packed = base64.b64encode(dali if isinstance(dali, bytes) else dali.encode()).decode()
        return json.dumps({"dali": packed, "epoch": self.epoch, "step": self._step})


def _unpack(packed: str | None) -> bytes | None:
    return base64.b64decode(packed) if packed else None
