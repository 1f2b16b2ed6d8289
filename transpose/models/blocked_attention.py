"""Attention with dropout on the probabilities that never keeps an L x L matrix (the training path on CPU).

    out = Dropout_p(softmax(q k^T / sqrt(d))) v        (the reference's nn.MultiheadAttention semantics)

PyTorch's CPU flash kernel has no dropout, so with dropout > 0 `F.scaled_dot_product_attention` falls back to the
math kernel, which stores every layer's [B, h, L, L] softmax and dropout mask for the backward pass, as the
reference does. Here the query rows are processed in tiles of about `tile_elements` scores (by default 2^18, or
256 query rows where rows are long: see `default_tile_elements`): the forward pass keeps
only q, k, v and the output; the backward pass recomputes each tile's probabilities (FlashAttention's recipe) and
regenerates its dropout mask, so the same mask is applied in both passes. A score is kept with probability
1 - p (to 2^-16) and then scaled by 1 / (1 - p), as `F.dropout`; a tile's draws come from a generator seeded with the
call's seed and the tile's number, which `keep_mask` reproduces for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transpose.models.dropout import MASK_SOURCES, draw_seed, keep_words

DEFAULT_TILE_ELEMENTS = 1 << 18  # scores per tile: 1 MB in float32, cache-sized on the CPUs measured
MIN_TILE_ROWS = 256  # fewer query rows a tile make its matrix products too thin to run at the GEMM rate


def default_tile_elements(length: int) -> int:
    """Scores per tile for rows of `length` keys: DEFAULT_TILE_ELEMENTS, or MIN_TILE_ROWS rows where that is more.
    At L = 3072 and 6912 (TransPose-H at 256x192 and 384x288) 256-row tiles ran the attention 1.2-1.45x and
    1.6-1.9x faster than the 85- and 37-row ones of 2^18 scores; at L <= 1024 the tiles are those of 2^18."""
    return max(DEFAULT_TILE_ELEMENTS, MIN_TILE_ROWS * length)


def tiles(n: int, length: int, tile_elements: int | None = None) -> list[tuple[slice, slice]]:
    """The (batch-head slice, query-row slice) tiles covering [n, length] query rows, each of about
    `tile_elements` scores (default: `default_tile_elements`; whole batch-heads when a few fit, else row blocks
    of one)."""
    tile_elements = tile_elements or default_tile_elements(length)
    rows = max(1, min(length, tile_elements // length))
    heads = max(1, tile_elements // (rows * length)) if rows == length else 1
    return [
        (slice(b, min(b + heads, n)), slice(r, min(r + rows, length)))
        for b in range(0, n, heads)
        for r in range(0, length, rows)
    ]


def _tile_keep(seed: int, number: int, like: Tensor, p: float, masks: str = "numpy") -> Tensor:
    """1.0 where the tile's score is kept (probability 1 - p), else 0.0, in `like`'s dtype, drawn from
    (seed, tile number): on CPU by NumPy (`transpose.models.dropout.keep_words`), about 4x faster than
    torch.rand there; elsewhere, or with masks="torch", by torch's generator on the tensor's device. A float
    mask multiplies about 7x faster than a bool one, which torch first converts."""
    if like.device.type == "cpu" and masks == "numpy":
        return torch.from_numpy(keep_words(seed, number, like.numel(), p)).view(like.shape).to(like.dtype)
    generator = torch.Generator(device=like.device).manual_seed(seed + number)
    uniform = torch.rand(like.shape, dtype=torch.float32, device=like.device, generator=generator)
    return (uniform >= p).to(like.dtype)


def keep_mask(
    seed: int, n: int, length: int, p: float, tile_elements: int | None = None,
    dtype: torch.dtype = torch.float32, masks: str = "numpy",
) -> Tensor:  # fmt: skip
    """The [n, L, L] dropout multiplier (0 or 1/(1-p)) that `blocked_attention(..., seed=seed)` applies."""
    out = torch.empty(n, length, length, dtype=dtype)
    for number, (b, r) in enumerate(tiles(n, length, tile_elements)):
        out[b, r] = _tile_keep(seed, number, out[b, r], p, masks) / (1.0 - p)
    return out


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, p: float, seed: int, tile_elements: int | None, masks: str
    ) -> Tensor:
        n, length, dim = q.shape
        q_scaled = q * dim**-0.5
        k_t = k.transpose(1, 2).contiguous()
        out = torch.empty(n, length, v.shape[-1], dtype=q.dtype, device=q.device)
        for number, (b, r) in enumerate(tiles(n, length, tile_elements)):
            probs = torch.softmax(torch.bmm(q_scaled[b, r], k_t[b]), dim=-1)  # [nb, rows, L]
            if p > 0:
                probs.mul_(_tile_keep(seed, number, probs, p, masks))
            torch.bmm(probs, v[b], out=out[b, r])
        if p > 0:
            out.div_(1.0 - p)
        ctx.save_for_backward(q_scaled, k_t, v, out)
        ctx.p, ctx.seed, ctx.tile_elements, ctx.masks = p, seed, tile_elements, masks
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_scaled, k_t, v, out = ctx.saved_tensors
        p, seed = ctx.p, ctx.seed
        n, length, dim = q_scaled.shape
        grad_out = grad_out.contiguous()
        v_t = v.transpose(1, 2).contiguous()
        # rowsum(dP * P) = dO . O; scaled by (1 - p) because the tiles below work with the unscaled mask
        delta = (grad_out * out).sum(-1, keepdim=True).mul_(1.0 - p)
        dq, dk_t, dv = torch.empty_like(q_scaled), torch.zeros_like(k_t), torch.zeros_like(v)
        for number, (b, r) in enumerate(tiles(n, length, ctx.tile_elements)):
            probs = torch.softmax(torch.bmm(q_scaled[b, r], k_t[b]), dim=-1)  # P of the forward pass
            grad = torch.bmm(grad_out[b, r], v_t[b])  # dL/dZ for Z = P * keep / (1 - p)
            if p > 0:
                keep = _tile_keep(seed, number, probs, p, ctx.masks)
                grad.mul_(keep)
                probs_kept = keep.mul_(probs)
            else:
                probs_kept = probs
            grad.sub_(delta[b, r]).mul_(probs)  # (1 - p) * dL/dS, S = q_scaled k^T
            dv[b] += torch.bmm(probs_kept.transpose(1, 2), grad_out[b, r])
            torch.bmm(grad, k_t[b].transpose(1, 2), out=dq[b, r])
            dk_t[b] += torch.bmm(q_scaled[b, r].transpose(1, 2), grad)
        inverse = 1.0 / (1.0 - p)
        dq.mul_(inverse * dim**-0.5)
        dk = dk_t.transpose(1, 2).mul_(inverse)
        return dq, dk, dv.mul_(inverse), None, None, None, None


def blocked_attention(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, seed: int | None = None,
    tile_elements: int | None = None, masks: str = "numpy",
) -> Tensor:  # fmt: skip
    """Dropout_p(softmax(q k^T / sqrt(d))) v for q, k, v [..., L, d], in tiles, differentiable.

    `seed` fixes the dropout masks (see `keep_mask`); by default one is drawn from torch's global generator, so a
    seeded (or resumed) run draws the same masks. `masks`: "numpy" (the CPU default) or "torch", the generator
    that draws them on CPU (see `transpose.models.dropout`).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if masks not in MASK_SOURCES:
        raise ValueError(f"masks {masks!r}: use one of {', '.join(MASK_SOURCES)}")
    if dropout_p > 0 and seed is None:
        seed = draw_seed()
    lead = q.shape[:-2]
    flat = [t.reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
    tile_elements = int(tile_elements) if tile_elements else None
    out = _BlockedAttention.apply(*flat, float(dropout_p), int(seed or 0), tile_elements, masks)
    return out.view(*lead, *out.shape[-2:])
