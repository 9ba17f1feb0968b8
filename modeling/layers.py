"""Primitives shared by the model families: one attention module, one mask builder, one feed-forward, initialisation.

Every family (BERT / RoBERTa / ALBERT / ELECTRA in encoder.py and electra.py, T5, BART) builds its blocks from
`Attention` and `FeedForward`. The module tree is ours, not transformers': q/k/v are one fused projection (`qkv`,
or `q` + `kv` for cross-attention), and a family's transformers adapter (its `HFAdapter`, declared beside its model)
splits and renames them at the export/import boundary (modeling/hf.py).

Shapes: B batch, Tq query length, Tk key length, D model width, N heads, K head width, F FFN width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation in one kernel forward and backward (ALBERT's 'gelu_new', T5 v1.1's 'gelu_tanh'),
    not the elementwise ops transformers' NewGELUActivation writes out: the same function up to float rounding."""
    return F.gelu(x, approximate="tanh")


def activation_fn(name: str):  # noqa: ANN201 - returns a tensor function
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return gelu_tanh
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


def sdpa_mask(
    keep: torch.Tensor | None,
    q_len: int,
    causal: bool,
    dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The additive SDPA mask: 0 where attending is allowed, the dtype's most negative number elsewhere.

    keep: (B, Tk) with 1 = attend, 0 = padding, or None; causal: a query attends to keys at or before its position
    (self-attention, Tk = Tq); bias: an additive (B|1, N, Tq, Tk) term added on top (T5's relative positions).
    Returns (B|1, 1|N, 1|Tq, Tk), or None when nothing is masked and there is no bias, so that SDPA takes its fast
    path (a causal `Attention` then passes `is_causal` itself: flash kernels apply on GPU).
    """
    if keep is None and (bias is None or not causal):
        return None if bias is None else bias.to(dtype)  # causality alone is the attention's is_causal
    ref = keep if keep is not None else bias
    assert ref is not None
    allowed = (
        torch.ones(q_len, q_len, dtype=torch.bool, device=ref.device).tril()[None, None] if causal else None
    )
    if keep is not None:
        pad = keep.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = pad if allowed is None else allowed & pad  # (B|1, 1, 1|Tq, Tk)
    assert allowed is not None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ref.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
    return mask if bias is None else bias.to(dtype) + mask


@dataclass
class QueryRows:
    """The positions a block computes its output at (`Attention.forward_at`, `BertLayer.forward_at`): the M
    positions where `selected` (B, T) is true, in row-major order (the order of `selected.reshape(-1).nonzero()`).

    at: (B, P) each row's selected positions, ascending, padded to P = the most any row has with position 0;
    rows: (M,) the real entries' indices into the flattened (B*P) `at`; flat: (M,) their indices into B*T.
    """

    at: torch.Tensor
    rows: torch.Tensor
    flat: torch.Tensor

    @staticmethod
    def of(selected: torch.Tensor) -> QueryRows:
        B, T = selected.shape
        counts = selected.sum(1)  # (B,)
        P = max(int(counts.max()), 1)  # one device sync, as nonzero() has anyway
        # A stable sort of 0 (selected) before 1 puts each row's selected positions first, in ascending order.
        at = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :P]  # (B, P)
        valid = torch.arange(P, device=selected.device)[None] < counts[:, None]  # (B, P)
        rows = valid.reshape(-1).nonzero().squeeze(1)  # (M,)
        base = torch.arange(B, device=selected.device)[:, None] * T
        return QueryRows(at, rows, (at + base).reshape(-1).index_select(0, rows))

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, ...) at the selected positions: (M, ...), in `flat`'s order (labels, a block's input)."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.flat)


def lookup_pair(
    embed: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor, **kw: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embed(a), embed(b)) from one call on both id tensors (an encoder-decoder's input and decoder ids into its
    shared table): the backward pass builds one dense V x D gradient of the table (zero-filled, rows added) instead
    of one per call plus their sum. kw: passed to `embed` (BART: sparse_grad=True)."""
    e = embed(torch.cat([a.reshape(-1), b.reshape(-1)]), **kw)  # (|a| + |b|, D)
    ea, eb = e.split([a.numel(), b.numel()])
    return ea.view(*a.shape, -1), eb.view(*b.shape, -1)


class Attention(nn.Module):
    """Multi-head attention through one `F.scaled_dot_product_attention` call, with its projections.

    Self-attention projects q, k, v with one fused `qkv` Linear(D, 3*N*K) (one matmul instead of three, forward and
    backward); cross-attention (`cross=True`) projects q from x with `q` and k, v from the other sequence with one
    fused `kv` Linear(D, 2*N*K). `out` projects back to D.

    scale: None = 1/sqrt(K) (BERT, BART); T5 uses 1.0. bias: projections with biases (T5 has none). causal: with no
    explicit mask, SDPA's `is_causal` (a mask from `sdpa_mask(..., causal=True)` already carries causality).
    dropout: on the attention probabilities, inside SDPA, while training.

    References: huggingface/transformers models/bert/modeling_bert.py (BertSelfAttention), models/t5/modeling_t5.py
    (T5Attention), models/bart/modeling_bart.py (BartAttention), whose logits the tests compare against; the fused
    projection as in Lightning-AI/litgpt litgpt/model.py (CausalSelfAttention's one `qkv` Linear).
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        head_dim: int | None = None,
        *,
        bias: bool = True,
        scale: float | None = None,
        dropout: float = 0.0,
        causal: bool = False,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or hidden // heads
        inner = heads * self.head_dim
        self.scale, self.dropout, self.causal, self.cross = scale, dropout, causal, cross
        if cross:
            self.q = nn.Linear(hidden, inner, bias=bias)
            self.kv = nn.Linear(hidden, 2 * inner, bias=bias)
        else:
            self.qkv = nn.Linear(hidden, 3 * inner, bias=bias)
        self.out = nn.Linear(inner, hidden, bias=bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, Tq, D); mask: additive (B|1, 1|N, 1|Tq, Tk) or None; kv: (B, Tk, D) for cross-attention."""
        B, Tq, _ = x.shape
        N, K = self.heads, self.head_dim
        if self.cross:
            assert kv is not None, "cross-attention needs kv"
            q = self.q(x).view(B, Tq, N, K).transpose(1, 2)  # (B, N, Tq, K)
            k, v = self.kv(kv).view(B, kv.shape[1], 2, N, K).permute(2, 0, 3, 1, 4)  # 2 x (B, N, Tk, K)
        else:
            q, k, v = self.qkv(x).view(B, Tq, 3, N, K).permute(2, 0, 3, 1, 4)  # 3 x (B, N, Tq, K)
        ctx = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None,
            scale=self.scale,
        )  # (B, N, Tq, K)
        return self.out(ctx.transpose(1, 2).reshape(B, Tq, N * K))  # (B, Tq, D)

    def forward_at(self, x: torch.Tensor, q: QueryRows, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention output at the positions `q` only: (M, D), the rows `q.flat` of `forward(x, mask)`.

        The fused projection runs at every position of x (B, T, D) (keys and values need them all; slicing its
        weight for the queries alone would read a parameter outside its module's call, which ZeRO-3's gathering
        does not see, for ~1/3 of one projection); SDPA's query rows and the output projection run at the
        selected positions (each row's P padded query slots; the padding is dropped before `out`).
        mask: a key mask (B|1, 1|N, 1, T) or None (not a per-query one)."""
        assert not self.cross and not self.causal, "forward_at is for encoder self-attention"
        assert mask is None or mask.shape[-2] == 1, "forward_at takes a key mask, not a per-query mask"
        B, T, _ = x.shape
        P = q.at.shape[1]
        N, K = self.heads, self.head_dim
        qkv = self.qkv(x).view(B, T, 3, N, K)
        query = (
            qkv[:, :, 0].gather(1, q.at[:, :, None, None].expand(B, P, N, K)).transpose(1, 2)
        )  # (B, N, P, K)
        k, v = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # 2 x (B, N, T, K)
        ctx = F.scaled_dot_product_attention(
            query, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )  # (B, N, P, K)
        return self.out(ctx.transpose(1, 2).reshape(B * P, N * K).index_select(0, q.rows))  # (M, D)


class FeedForward(nn.Module):
    """dropout(down(inner_dropout(act(up(x))))); gated: act(gate) * up, both from one fused `gate_up`
    Linear(D, 2F) whose first F rows are the gate (T5 v1.1's act(x wi_0) * (x wi_1))."""

    def __init__(
        self,
        hidden: int,
        inner: int,
        act: Callable[[torch.Tensor], torch.Tensor],
        dropout: float,
        *,
        inner_dropout: float = 0.0,
        bias: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.gated = gated
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=bias) if gated else None
        self.up = None if gated else nn.Linear(hidden, inner, bias=bias)
        self.down = nn.Linear(inner, hidden, bias=bias)
        self.act = act
        self.inner_dropout = nn.Dropout(inner_dropout)
        self.dropout = nn.Dropout(dropout)

    @property
    def in_proj(self) -> nn.Linear:
        """The input projection: `gate_up` (gated) or `up`."""
        proj = self.gate_up if self.gate_up is not None else self.up
        assert proj is not None
        return proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)  # 2 x (B, T, F)
            inner = self.act(gate) * up
        else:
            inner = self.act(self.in_proj(x))  # (B, T, F)
        return self.dropout(self.down(self.inner_dropout(inner)))  # (B, T, D)


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
