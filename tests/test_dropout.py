"""The model's dropout draws its CPU masks by NumPy with nn.Dropout's semantics: each element kept with
probability 1 - p and scaled by 1 / (1 - p), the same mask in the backward pass, the masks following torch's
global seed; "torch" masks are exactly F.dropout's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transpose.engine.config import TrainConfig
from transpose.models import create_model, set_dropout_masks
from transpose.models.dropout import Dropout, dropout
from transpose.models.transformer import PositionalSelfAttention


def test_elements_are_kept_with_probability_one_minus_p_and_scaled():
    p = 0.1
    x = torch.ones(64, 64, 64, requires_grad=True)
    out = dropout(x, p)
    kept = out > 0
    assert torch.allclose(out[kept], torch.tensor(1 / (1 - p)))
    frac = kept.double().mean().item()
    assert abs(frac - (1 - p)) < 4 * (p * (1 - p) / kept.numel()) ** 0.5  # within 4 sigma over 262k draws
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, out.detach())  # the backward pass applies the forward's mask


def test_masks_follow_the_global_seed_and_layout():
    x = torch.randn(4, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    again = dropout(x, 0.3)
    assert torch.equal(first, again)
    assert not torch.equal(first, dropout(x, 0.3))
    assert torch.allclose(first[first != 0], (x / 0.7)[first != 0])


def test_torch_masks_and_eval_mode_are_exactly_torchs():
    x = torch.randn(16, 33)
    module = Dropout(0.2)
    assert isinstance(module, nn.Dropout)
    module.dropout_masks = "torch"
    torch.manual_seed(9)
    ours = module(x)
    torch.manual_seed(9)
    assert torch.equal(ours, F.dropout(x, 0.2))
    assert torch.equal(module.eval()(x), x)
    assert torch.equal(dropout(x, 0.0), x)


def test_the_model_and_the_train_config_choose_the_source():
    model = create_model("transpose_r_tiny")
    sources = lambda: {m.dropout_masks for m in model.modules() if hasattr(m, "dropout_masks")}  # noqa: E731
    assert sources() == {"numpy"}
    assert any(isinstance(m, PositionalSelfAttention) for m in model.modules())
    set_dropout_masks(model, "torch")
    assert sources() == {"torch"}
    with pytest.raises(ValueError, match="dropout mask source 'cuda': use one of numpy, torch"):
        set_dropout_masks(model, "cuda")
    with pytest.raises(ValueError, match="dropout_masks: must be numpy or torch, got 'bernoulli'"):
        TrainConfig(dropout_masks="bernoulli")
