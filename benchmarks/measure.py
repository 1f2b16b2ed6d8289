"""Measurements of a model: parameter and multiply-add counts (SDPA included), call timing, the host's GEMM rate."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model_zoo import make_input


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(QK^T)V for [B, h, L, d] inputs: two batched matmuls (the softmax is not counted)."""
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d_q + 2 * b * h * s_q * s_k * d_v


def _flop_mapping() -> dict:
    """Formulas for SDPA kernels the installed torch's FlopCounterMode does not know (the CPU one)."""
    mapping = {}
    registry = getattr(torch.utils.flop_counter, "flop_registry", {})
    for op_name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, op_name, None)
        if op is not None and op not in registry:
            mapping[op] = _sdpa_flops
    return mapping


def count_macs(model: nn.Module, image_size: tuple[int, int], explicit_attention: bool = False) -> int:
    """Multiply-adds of one sample (FlopCounterMode FLOPs / 2)."""
    x = make_input(1, image_size)
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        if explicit_attention:
            model(x, return_attention=True)
        else:
            model(x)
    return counter.get_total_flops() // 2


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[list[float], float]:
    """Wall-clock seconds of `repeats` calls of fn after `warmup` untimed ones, and the cores busy meanwhile.

    Cores = process CPU time / wall time over the timed calls: about --threads on a quiet machine. When another
    process takes a core, OpenMP's lock-step threads wait for the descheduled one and a forward can run several
    times slower while this figure drops towards 1; such timings say more about the host than the model.
    """
    for _ in range(warmup):
        fn()
    times = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    cores = (time.process_time() - cpu_start) / max(sum(times), 1e-9)
    return times, cores


def busy_warning(cores: float) -> str:
    """A warning suffix when time_calls saw fewer than 80% of torch's threads busy, else an empty string."""
    threads = torch.get_num_threads()
    return f" [WARNING: < {0.8 * threads:.1f} of {threads}: host busy?]" if cores < 0.8 * threads else ""


def matmul_gflops(seconds: float = 0.5, n: int = 1024) -> float:
    """fp32 GEMM rate, to tell a quiet machine from a contended one (shared hosts vary several-fold)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        calls += 1
    return 2 * n**3 * calls / elapsed / 1e9
