"""The benchmarked models and what they are checked against: names, expected GMACs, throughput targets, builds."""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor, nn

from transpose.models import create_model

from simple_baseline import SimpleBaselineRes50

PAPER_MODELS = ("transpose_r_a3", "transpose_r_a4", "transpose_h_s", "transpose_h_a4", "transpose_h_a6")
BASELINE_NAME = "simplebaseline_res50"
IMAGE_SIZE = (256, 192)
ATTENTION_MODEL = "transpose_h_a4"
# Paper-consistent multiply-add counts at 256x192 (GMACs) and the relative tolerance of the check.
EXPECTED_GMACS = MappingProxyType({"transpose_r_a4": 6.32, "transpose_h_a4": 17.21})
GMACS_TOLERANCE = 0.005
# Throughput targets (samples/s, batch 32, 2 threads) and the authors' implementation on this kind of machine.
TARGETS = MappingProxyType({"transpose_r_a4": 6.0, "transpose_h_a4": 2.2})
REFERENCE_THROUGHPUT = MappingProxyType({"transpose_r_a4": 3.09, "transpose_h_a4": 1.39})


def build_model(name: str, image_size: tuple[int, int] = IMAGE_SIZE) -> nn.Module:
    """A model in eval mode with seed-0 weights: a registered TransPose variant or the SimpleBaseline."""
    torch.manual_seed(0)
    model = SimpleBaselineRes50() if name == BASELINE_NAME else create_model(name, image_size=image_size)
    return model.eval()


def make_input(batch: int, image_size: tuple[int, int]) -> Tensor:
    """A seed-1 standard-normal NCHW batch of RGB images."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, *image_size, generator=generator)
