"""Process-group helpers: the same code runs as one process, under torchrun, the deepspeed launcher or Ray."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def init_process_group(device: str) -> tuple[int, int]:
    """Join (or, alone, create) the default process group: gloo on CPU, NCCL on GPU. Returns (rank, world)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain single process: a group of one
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        if device.startswith("cuda"):  # before the first collective: NCCL puts its tensors on the current device
            torch.cuda.set_device(local_rank())
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's object, on every rank (a list of one without a group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_loss(loss: torch.Tensor) -> tuple[float, bool]:
    """(the loss averaged over the ranks, whether it is finite on every rank): one all-reduce of two numbers,
    so that every rank takes the same decision on a non-finite loss."""
    value = loss.detach().float().reshape(1)
    pair = torch.cat([torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0), (~torch.isfinite(value)).float()])
    if dist.is_initialized() and dist.get_world_size() > 1:
        pair = pair.to(loss.device)
        dist.all_reduce(pair)
        pair = pair / dist.get_world_size()
    return float(pair[0]), bool(pair[1] == 0)


def rng_state() -> dict:
    """torch (CPU, and CUDA where used), numpy and python RNG states as tensors and plain lists (loadable with
    weights_only=True)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
