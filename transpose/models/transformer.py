"""Transformer encoder of TransPose (paper Appendix C): post-norm, DETR-style.

Changes from torch.nn.TransformerEncoderLayer:
    * the position embedding is added to queries and keys (never values) in every layer;
    * tokens are batch-first [B, L, d]; the position table is [1, L, d];
    * attention keeps no L x L matrix: F.scaled_dot_product_attention, or with dropout while training on CPU
      (where PyTorch's fused kernels have no dropout) the tiled `blocked_attention`; the explicit softmax path
      runs only when the caller asks for the head-averaged attention map (explanations) or for
      `set_attention(model, "explicit")`, the reference's formulation (benchmarks).
    * on CPU the dropout masks are drawn by NumPy (`transpose.models.dropout`: same semantics, a third of
      bernoulli_'s cost); `set_dropout_masks(model, "torch")` draws them with torch's generator.
Parameter names equal nn.MultiheadAttention's (in_proj_weight, in_proj_bias, out_proj), so reference
checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transpose.models.blocked_attention import blocked_attention
from transpose.models.dropout import Dropout

ATTENTION_KINDS = ("fused", "explicit")


class PositionalSelfAttention(nn.Module):
    """Multi-head self-attention with q = k = x + pos and v = x."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.1):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}")
        self.d_model = d_model
        self.nhead = nhead
        self.dropout = dropout
        self.attention = "fused"  # or "explicit": see set_attention
        self.dropout_masks = "numpy"  # or "torch": see transpose.models.dropout.set_dropout_masks
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: Tensor) -> Tensor:  # [B, L, d] -> [B, h, L, d/h]
        b, n, _ = t.shape
        return t.view(b, n, self.nhead, self.d_model // self.nhead).transpose(1, 2)

    def forward(self, x: Tensor, pos: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: [B, L, d]; pos: [1, L, d] or None. Returns (output [B, L, d], head-averaged weights [B, L, L] or None)."""
        d = self.d_model
        qk_in = x if pos is None else x + pos
        qk = F.linear(qk_in, self.in_proj_weight[: 2 * d], self.in_proj_bias[: 2 * d])
        v = F.linear(x, self.in_proj_weight[2 * d :], self.in_proj_bias[2 * d :])
        q, k = self._heads(qk[..., :d]), self._heads(qk[..., d:])
        v = self._heads(v)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights or self.attention == "explicit":
            scale = (d // self.nhead) ** -0.5
            attn = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)  # [B, h, L, L]
            weights = attn.mean(dim=1) if need_weights else None
            out = F.dropout(attn, p, training=self.training) @ v
        elif p > 0 and q.device.type == "cpu" and torch.is_grad_enabled():
            out = blocked_attention(q, k, v, dropout_p=p, masks=self.dropout_masks)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), weights


class TransformerEncoderLayer(nn.Module):
    """z = LN1(x + Drop(MHA(x+P, x+P, x))); x' = LN2(z + Drop(W2 Drop(ReLU(W1 z))))."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = PositionalSelfAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self_attn(x, pos, need_weights)
        x = self.norm1(x + self.dropout1(attended))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights


class TransformerEncoder(nn.Module):
    """A stack of post-norm layers, no final LayerNorm; xavier_uniform for every weight with dim > 1."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor | None, return_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        """x: [B, L, d]. Returns the tokens and, when asked, every layer's head-averaged map [B, L, L]."""
        maps = []
        for layer in self.layers:
            x, weights = layer(x, pos, need_weights=return_attention)
            if weights is not None:
                maps.append(weights)
        return x, maps


def set_attention(model: nn.Module, kind: str) -> nn.Module:
    """Switch every attention of `model` to `kind`: "fused" (the default: no L x L matrix kept) or "explicit"
    (softmax stored, then dropout, as the reference's nn.MultiheadAttention; for comparisons)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind {kind!r}: use one of {', '.join(ATTENTION_KINDS)}")
    for module in model.modules():
        if isinstance(module, PositionalSelfAttention):
            module.attention = kind
    return model
