"""The tiled training attention equals the explicit formulation (softmax, dropout on the probabilities, @ v) in
value and gradient, keeps no L x L matrix for the backward pass, and is what the model trains with on CPU."""

from __future__ import annotations

import pytest
import torch

from transpose.engine.config import TrainConfig
from transpose.engine.trainer import apply_model_options
from transpose.models import create_model, set_attention
from transpose.models.blocked_attention import blocked_attention, keep_mask, tiles
from transpose.models.transformer import PositionalSelfAttention


def explicit(q, k, v, multiplier=None):
    """The reference's formulation: softmax(q k^T / sqrt(d)), times a dropout multiplier, @ v."""
    probs = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return (probs if multiplier is None else probs * multiplier) @ v


def _qkv(n, length, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(n, length, dim, generator=g, dtype=dtype)).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("masks", ["numpy", "torch"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize(("n", "length", "dim", "tile_elements"), [
    (6, 50, 16, 1000),  # row blocks of 20 rows, the last one short
    (5, 64, 8, 64 * 64 * 2),  # two whole batch-heads per tile, the last tile one
    (2, 37, 32, 1 << 20),  # everything in one tile
    (1, 1100, 8, None),  # the default for long rows: blocks of 256 rows, the last one short
])  # fmt: skip
def test_value_and_gradient_equal_the_explicit_formulation(p, n, length, dim, tile_elements, masks):
    q, k, v = _qkv(n, length, dim)
    out = blocked_attention(q, k, v, p, seed=11, tile_elements=tile_elements, masks=masks)
    multiplier = keep_mask(11, n, length, p, tile_elements, masks=masks) if p else None
    ref = explicit(q, k, v, multiplier)
    grad = torch.randn_like(out)
    ours, theirs = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    # float32 tolerance: 1e-5 of the largest magnitude (the two orders of summation round differently)
    assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
    for a, b in zip(ours, theirs, strict=True):
        assert b.abs().max() > 1e-3  # real gradients, not vanishing ones
        assert torch.allclose(a, b, atol=1e-5 * b.abs().max().item(), rtol=0), float((a - b).abs().max())


def test_default_tiles_hold_2_18_scores_or_256_rows_where_rows_are_long():
    assert tiles(64, 192) == [(slice(b, min(b + 7, 64)), slice(0, 192)) for b in range(0, 64, 7)]  # the default model
    assert {r.stop - r.start for _, r in tiles(64, 768)} == {341, 86}  # TransPose-R at 256x192: 2^18 scores
    for length in (3072, 6912):  # TransPose-H at 256x192 and 384x288: 256 rows, not 85 or 37
        layout = tiles(2, length)
        assert {r.stop - r.start for _, r in layout[:-1]} == {256}
        assert sum(r.stop - r.start for _, r in layout) == 2 * length


def test_float64_agrees_to_rounding_and_passes_gradcheck():
    q, k, v = _qkv(2, 12, 4, torch.float64)
    multiplier = keep_mask(3, 2, 12, 0.3, tile_elements=40, dtype=torch.float64)
    out = blocked_attention(q, k, v, 0.3, seed=3, tile_elements=40)
    assert torch.allclose(out, explicit(q, k, v, multiplier), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda *t: blocked_attention(*t, 0.3, seed=3, tile_elements=40), (q, k, v))


@pytest.mark.parametrize("masks", ["numpy", "torch"])
def test_dropout_keeps_each_score_with_probability_one_minus_p(masks):
    p, n, length = 0.1, 4, 256
    multiplier = keep_mask(7, n, length, p, tile_elements=10_000, masks=masks)
    kept = multiplier > 0
    assert torch.allclose(multiplier[kept], torch.tensor(1 / (1 - p)))
    frac = kept.double().mean().item()
    assert abs(frac - (1 - p)) < 4 * (p * (1 - p) / kept.numel()) ** 0.5  # within 4 sigma of 0.9 over 262k draws
    assert not torch.equal(
        multiplier, keep_mask(8, n, length, p, tile_elements=10_000, masks=masks)
    )  # the seed matters
    assert len(tiles(n, length, 10_000)) == n * 7  # 39 rows a tile: 7 tiles per batch-head


def test_the_masks_follow_the_global_seed():
    q, k, v = _qkv(2, 30, 8)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(blocked_attention(q, k, v, 0.2))
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], blocked_attention(q, k, v, 0.2))


def _saved_numels(fn) -> list[int]:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_training_attention_saves_no_l_by_l_matrix_and_the_explicit_one_does():
    batch, length, d, heads = 2, 300, 32, 4
    attention = PositionalSelfAttention(d, heads, dropout=0.1).train()
    x = torch.randn(batch, length, d, requires_grad=True)
    pos = torch.randn(1, length, d)
    fused = _saved_numels(lambda: attention(x, pos)[0].sum().backward())
    attention.attention = "explicit"
    explicit_sizes = _saved_numels(lambda: attention(x, pos)[0].sum().backward())
    scores = batch * heads * length * length
    assert max(fused) < length * length  # nothing as large as one head's L x L
    assert max(explicit_sizes) == scores  # the reference keeps softmax and mask of every head


def test_the_model_trains_through_the_tiled_path_with_the_same_gradients_as_the_explicit_one():
    """Whole model in training mode: with dropout 0 both formulations give the same gradients; with attention
    dropout on, the training forward keeps nothing L x L and a seeded run reproduces itself bit for bit."""
    torch.manual_seed(0)
    model = create_model("transpose_r_tiny", dropout=0.0, image_size=(160, 64)).train()
    x = torch.randn(2, 3, 160, 64)  # 20 x 8 = 160 tokens: no other dimension of the model is 160
    grads = {}
    for kind in ("fused", "explicit"):
        set_attention(model, kind)
        model.zero_grad()
        model(x).square().mean().backward()
        grads[kind] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(grads["fused"], grads["explicit"], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)

    set_attention(model, "fused")
    for m in model.modules():
        if isinstance(m, PositionalSelfAttention):
            m.dropout = 0.1

    def saved_shapes(kind: str) -> list[torch.Size]:
        set_attention(model, kind)
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
            outs.append(model(x))
        return shapes

    outs, tokens = [], (160 // 8) * (64 // 8)
    torch.manual_seed(1)
    fused = saved_shapes("fused")
    torch.manual_seed(1)
    assert all(shape[-2:] != (tokens, tokens) for shape in fused + saved_shapes("fused"))
    assert torch.equal(outs[0], outs[1])
    assert sum(shape[-2:] == (tokens, tokens) for shape in saved_shapes("explicit")) >= 2  # softmax and mask


def test_bad_arguments_are_explained():
    q, k, v = _qkv(1, 4, 2)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        blocked_attention(q, k, v, 1.0)
    with pytest.raises(ValueError, match="attention kind 'flash': use one of fused, explicit"):
        set_attention(create_model("transpose_r_tiny"), "flash")


def test_the_train_config_chooses_the_attention_and_the_masks():
    model = apply_model_options(
        create_model("transpose_r_tiny"), TrainConfig(attention="explicit", dropout_masks="torch")
    )
    attentions = [m for m in model.modules() if isinstance(m, PositionalSelfAttention)]
    assert attentions and {(m.attention, m.dropout_masks) for m in attentions} == {("explicit", "torch")}
    default = apply_model_options(create_model("transpose_r_tiny"), TrainConfig())
    assert {m.attention for m in default.modules() if isinstance(m, PositionalSelfAttention)} == {"fused"}
    with pytest.raises(ValueError, match="attention: must be fused or explicit, got 'flash'"):
        TrainConfig(attention="flash")
