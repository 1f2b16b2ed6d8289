"""ONNX export of a TransPose model that checks itself against PyTorch.

The graph takes `image` float32 [N, 3, h, w] (normalised crops, N dynamic) and returns `heatmaps` [N, K, H, W]
and, with `attention=True`, one `attention_{i}` [N, L, L] per encoder layer (the maps the explanations are
made of). The model card travels in the file's metadata (`transpose.card`, with the keypoint set), beside the
facts a runtime needs to prepare crops and read heatmaps: `transpose.input_size` ([h, w]), `transpose.mean`,
`transpose.std`, `transpose.heatmap_stride`, `transpose.flip_pairs`. `transpose.export.onnx_runtime` reads
them back and gives keypoints in image pixels without torch.

After writing, onnxruntime runs the file on fresh random inputs (batch 1 and 3) and every output must be
within `tolerance` x max |output| of PyTorch's (default 1e-4); otherwise the export fails (ExportError) and
the file is renamed `*.onnx.unverified` rather than left looking good.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transpose.models.card import ModelCard

META_PREFIX = "transpose."


class ExportError(RuntimeError):
    """The exported graph does not reproduce PyTorch, or cannot be written."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    outputs: list[str]
    worst_relative_diff: float  # max |onnx - torch| / max |torch| over outputs and batches
    batch_sizes: tuple[int, ...]
    seconds: float


class _WithAttention(nn.Module):
    """Heatmaps and the per-layer attention maps as a flat tuple of outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        heatmaps, attentions = self.model(image, return_attention=True)
        return (heatmaps, *attentions)


def metadata(card: ModelCard, model: nn.Module) -> dict[str, str]:
    """The facts a runtime needs, as ONNX metadata (string values)."""
    cfg = model.data_config
    facts = {
        "card": card.to_dict(),
        "input_size": list(cfg.image_size),
        "heatmap_size": list(cfg.heatmap_size),
        "heatmap_stride": cfg.codec().stride,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "keypoints": list(card.keypoints.names),
        "flip_pairs": [list(p) for p in card.keypoints.flip_pairs],
    }
    return {META_PREFIX + k: json.dumps(v) for k, v in facts.items()}


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    path: str | Path,
    attention: bool = False,
    verify: bool = True,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ExportReport:
    """Write `model` (eval mode, CPU) to `path` as ONNX with its card in the metadata, then verify it."""
    import onnx

    started = time.perf_counter()
    path = Path(path)
    model = model.eval().cpu()
    h, w = card.image_size
    layers = len(model(torch.zeros(1, 3, h, w), return_attention=True)[1]) if attention else 0
    outputs = ["heatmaps"] + [f"attention_{i}" for i in range(layers)]
    graph = (_WithAttention(model) if attention else model).eval()
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata(card, model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx.save(proto, str(partial))
    except OSError as err:
        raise ExportError(f"cannot write {path}: {err}") from err
    worst, sizes = 0.0, (1, 3)
    if verify:
        try:
            worst = verify_onnx(graph, partial, outputs, (h, w), sizes, tolerance, seed + 1)
        except ExportError:
            os.replace(partial, path.with_name(path.name + ".unverified"))
            raise
    os.replace(partial, path)
    return ExportReport(path, outputs, worst, sizes if verify else (), time.perf_counter() - started)


@torch.no_grad()
def verify_onnx(
    graph: nn.Module,
    path: str | Path,
    outputs: list[str],
    image_size: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 3),
    tolerance: float = 1e-4,
    seed: int = 1,
) -> float:
    """The worst relative difference between onnxruntime and PyTorch on fresh random inputs; ExportError
    when any output differs by more than `tolerance` x its max |value|."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batch_sizes:
        image = torch.randn(n, 3, *image_size, generator=generator)
        expected = graph(image)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = session.run(outputs, {"image": image.numpy()})
        for name, want, have in zip(outputs, expected, got):
            want = want.float().numpy()
            if have.shape != want.shape:
                raise ExportError(f"{path}: output {name} has shape {have.shape} at batch {n}, PyTorch {want.shape}")
            scale = max(float(np.abs(want).max()), 1e-12)
            relative = float(np.abs(have - want).max()) / scale
            if not np.isfinite(relative) or relative > tolerance:
                raise ExportError(
                    f"{path}: output {name} at batch {n} differs from PyTorch by {relative:.2e} of its max "
                    f"|value| ({scale:.3g}), more than the tolerance {tolerance:g}: the export is not faithful"
                )
            worst = max(worst, relative)
    return worst
