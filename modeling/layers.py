"""Primitives shared by the model families: attention through SDPA, feed-forward, initialisation.

Parameter names follow Hugging Face transformers' BERT modules (`attention.self.query`, `output.LayerNorm`, ...)
so that export to transformers is a key map, not surgery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def activation_fn(name: str):  # noqa: ANN201 - returns a tensor function
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


class SelfAttentionProjections(nn.Module):
    """The q/k/v projections (named as transformers' `BertSelfAttention`)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class AttentionOutput(nn.Module):
    def __init__(self, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)


class MultiHeadSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention; one SDPA call, no loop over heads.

    On GPU, SDPA dispatches to flash / memory-efficient kernels when there is no explicit mask; with a padding
    mask it uses the memory-efficient kernel.
    """

    def __init__(
        self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.attn_dropout = attn_dropout
        # `self` is the name transformers uses for this submodule; it maps 1:1 on export.
        self.self = SelfAttentionProjections(hidden)
        self.output = AttentionOutput(hidden, eps, hidden_dropout)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention without the output projection's residual/norm. x: (B, T, H) -> (B, T, H)."""
        B, T, H = x.shape
        proj = self.self
        # (B, T, H) -> (B, heads, T, head_dim)
        q = proj.query(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = proj.key(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = proj.value(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, heads, T, head_dim)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)
        return self.output.dropout(self.output.dense(ctx))


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)


class FFNOutput(nn.Module):
    def __init__(self, inner: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)


def padding_mask_to_sdpa(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) with 1 = attend, 0 = padding  ->  additive (B, 1, 1, T) mask for SDPA, or None if no padding."""
    if attention_mask is None:
        return None
    keep = attention_mask.to(torch.bool)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: N(0, std) for linear and embedding weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def run_blocks(
    blocks: list[nn.Module], h: torch.Tensor, *args: object, checkpoint_every: int, enabled: bool
) -> torch.Tensor:
    """h = block(h, *args) for each block; when `enabled`, every `checkpoint_every`-th block is recomputed in the
    backward pass instead of keeping its activations (non-reentrant, so it composes with ZeRO-3)."""
    for i, block in enumerate(blocks):
        if enabled and i % checkpoint_every == 0:
            h = checkpoint(block, h, *args, use_reentrant=False)
        else:
            h = block(h, *args)
    return h
