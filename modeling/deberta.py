"""DeBERTa (v1, v2, v3): disentangled attention over log-bucketed relative positions, and the Enhanced Mask Decoder.

References: microsoft/DeBERTa (`DeBERTa/deberta/disentangled_attention.py`, `DeBERTa/deberta/da_utils.py`,
`DeBERTa/deberta/bert.py`, `DeBERTa/apps/models/masked_language_model.py`; for v3 RTD `DeBERTa/apps/tasks/rtd_task.py`,
`DeBERTa/apps/models/replaced_token_detection_model.py`, `experiments/language_model/rtd_base.json`) and transformers
`models/deberta_v2/modeling_deberta_v2.py` (v2/v3) and `models/deberta/modeling_deberta.py` (v1).

Read top to bottom: relative positions -> the disentangled bias -> attention -> block -> conv -> embeddings ->
encoder -> model (+ Enhanced Mask Decoder) -> MLM head -> the pretraining model -> accounting -> registration.
Shapes: B batch, T sequence length, H hidden size, N heads, K head width, R rows of the relative table, M masked
positions in the batch, V vocabulary.

Three families share this file (the registry gives each its transformers classes; the first two a `model_type`):

    deberta     v2 / v3 (transformers DebertaV2ForMaskedLM, model_type 'deberta-v2'): separate q/k/v projections
                with biases, `share_att_key`, log buckets, LayerNorm'd relative table, optional conv after block 1.
                v3 is the v2 architecture (the presets deberta_v3_*); it differs in pretraining (RTD + GDES).
    deberta_v1  v1 (transformers DebertaForMaskedLM, model_type 'deberta'): one bias-free `in_proj` (q|k|v
                interleaved per head) + `q_bias` / `v_bias`, its own `pos_proj` (no bias) / `pos_q_proj`, no
                buckets, no relative LayerNorm, no conv.
    deberta_rtd DeBERTa-v3 pretraining: replaced-token detection with gradient-disentangled embedding sharing
                (`DebertaRTDForPretraining`, near the end: generator + discriminator, joint loss; the reference's
                decoupled updates are not done). Exports DebertaV2Model (discriminator, GDES delta merged, RTD
                head saved beside it) + DebertaV2ForMaskedLM (generator, in generator/).

Module and parameter names equal transformers' (non-legacy MLM head `lm_predictions.lm_head`, which is also the
reference's name), so export and import are the identity map. Scores go through one
`F.scaled_dot_product_attention` call whose additive mask is the disentangled bias (already divided by
sqrt(K * scale_factor), since SDPA scales only QK^T) with padded keys filled with the dtype's minimum.

Enhanced Mask Decoder (EMD), as the reference's `EnhancedMaskDecoder` does by default in MLM pretraining: with
`position_biased_input` false, z = absolute position embeddings (the raw table rows, no LayerNorm) are added to the
input of the last block, and the last block runs twice more (shared weights) with queries z + h_{L-1}, then the
previous step's output, over keys/values h_{L-1}; the MLM head reads the second output. With absolute positions in
the input it is the plain encoder output (as there). `model.enhanced_mask_decoder=false` gives the encoder path,
whose logits equal transformers' *ForMaskedLM (which has no EMD).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import hf
from .config import ModelConfig, ModelConfigError, check_standard_ffn
from .electra import (
    DiscriminatorStep,
    ElectraOutput,
    GeneratorStep,
    electra_output,
    generator_loss,
    rtd_loss,
    sample_replacements,
)
from .encoder import MLMOutput, TiedEmbedding, select_labelled
from .layers import activation_fn, init_bert_weights
from .registry import FamilySpec, HFAdapter, HFPart, register_family

# ---- relative positions ------------------------------------------------------------------------------------------


def make_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Log-bucketed relative positions: |d| < bucket_size/2 keep d; longer distances map to
    sign(d) * (mid + ceil(log(|d|/mid) / log((max_position-1)/mid) * (mid-1))), mid = bucket_size // 2.

    As transformers `models/deberta_v2/modeling_deberta_v2.py` `make_log_bucket_position` (float32, no clamping:
    |d| >= max_position gives buckets beyond +-(bucket_size - 1), which the attention clamps to the table's first /
    last row). microsoft/DeBERTa `DeBERTa/deberta/da_utils.py` clamps d to +-(max_position - 1) first: the two agree
    for |d| < max_position, and on the table row read for every d but d <= -max_position, where transformers (and
    so we) read row 0 and the reference row 1; only sequences longer than max_relative_positions meet it
    (tests/test_deberta.py pins both).
    """
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).type_as(relative_pos),
        torch.abs(relative_pos),
    )
    log_pos = (
        torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1))
        + mid
    )
    return torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign).to(torch.long)


def build_relative_position(
    query_size: int,
    key_size: int,
    bucket_size: int = -1,
    max_position: int = -1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(query_size, key_size) relative positions q - k, log-bucketed when bucket_size > 0 and max_position > 0.

    As microsoft/DeBERTa `DeBERTa/deberta/da_utils.py` `build_relative_position` and transformers
    `modeling_deberta_v2.build_relative_position` (which take sizes / layers and add a leading batch axis).
    """
    q_ids = torch.arange(query_size, dtype=torch.long, device=device)
    k_ids = torch.arange(key_size, dtype=torch.long, device=device)
    rel = q_ids[:, None] - k_ids[None, :]  # (Tq, Tk)
    if bucket_size > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, bucket_size, max_position)
    return rel


def max_relative(cfg: ModelConfig) -> int:
    """The effective `max_relative_positions` (-1 = max_position_embeddings, as transformers reads it)."""
    return cfg.max_relative_positions if cfg.max_relative_positions > 0 else cfg.max_position_embeddings


def rel_table_rows(cfg: ModelConfig) -> int:
    """Rows of the relative embedding table: 2 x position_buckets, or 2 x max_relative_positions without buckets."""
    return 2 * (cfg.position_buckets if cfg.position_buckets > 0 else max_relative(cfg))


def _span(cfg: ModelConfig, T: int) -> tuple[int, int]:
    """(span, first table row of the 2 x span rows indexed) for T tokens: with buckets all 2 x buckets rows
    (transformers v2: `rel_embeddings[0 : att_span * 2]`); without (v1), the 2 x min(T, max_relative_positions) rows
    around the table's centre (transformers v1 `compute_attention_span`; for v2 without buckets these are the rows
    its full table would be read at)."""
    if cfg.position_buckets > 0:
        return cfg.position_buckets, 0
    span = min(T, max_relative(cfg))
    return span, max_relative(cfg) - span


def relative_rows(cfg: ModelConfig, T: int) -> tuple[int, int]:
    """(first row, number of rows R) of the relative table that T tokens read. The index clamp(bucket(q - k) + span,
    0, 2 span - 1) grows with q - k, so its extremes are at q - k = -(T - 1) and T - 1 (a host computation, no
    device sync); a sequence shorter than the buckets reads 2T - 1 rows, not all 2 x buckets."""
    span, first = _span(cfg, T)
    ends = torch.tensor([-(T - 1), T - 1])
    if cfg.position_buckets > 0:
        ends = make_log_bucket_position(ends, cfg.position_buckets, max_relative(cfg))
    lo, hi = (ends + span).clamp(0, 2 * span - 1).tolist()
    return first + lo, hi - lo + 1


def relative_index(cfg: ModelConfig, T: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) row of the relative table for each query-key pair, counted from `relative_rows(cfg, T)[0]`: the
    reference's clamp(bucket(q - k) + span, 0, 2 span - 1) shifted by the rows that are never read."""
    span, first = _span(cfg, T)
    buckets = cfg.position_buckets
    rel = build_relative_position(T, T, buckets, max_relative(cfg), device)
    return torch.clamp(rel + span, 0, 2 * span - 1) - (relative_rows(cfg, T)[0] - first)


def pos_att_terms(cfg: ModelConfig) -> tuple[str, ...]:
    """The disentangled terms of `model.pos_att_type` ('c2p', 'p2c'), in a fixed order."""
    given = {t.strip() for t in cfg.pos_att_type.lower().split("|") if t.strip()}
    return tuple(t for t in ("c2p", "p2c") if t in given)


# ---- the disentangled bias -----------------------------------------------------------------------------------------


def disentangled_attention_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    pos_key: torch.Tensor | None,
    pos_query: torch.Tensor | None,
    index: torch.Tensor,
    scale_factor: int,
) -> torch.Tensor:
    """The c2p + p2c score terms, already divided by sqrt(K * scale_factor), as an additive (B, N, Tq, Tk) bias.

    q: (B, N, Tq, K) content queries; k: (B, N, Tk, K) content keys; pos_key / pos_query: (N, R, K) the relative
    table projected as keys (for c2p) / queries (for p2c), None = term off; index: (Tq, Tk) row of the table for
    each query-key pair. c2p[i, j] = q_i . pos_key[index[i, j]]; p2c[i, j] = k_j . pos_query[index[i, j]] (the
    reference's gather of pos_query @ k^T along rows; transformers gathers clamp(-r + span) of the transposed pair,
    the same rows since buckets are odd in q - k)
    As transformers `DisentangledSelfAttention.disentangled_attention_bias` (modeling_deberta_v2.py) and
    microsoft/DeBERTa `disentangled_attention.py`.
    """
    B, N, Tq, K = q.shape
    Tk = k.shape[2]
    score = q.new_zeros(())
    if pos_key is not None:
        c2p = torch.matmul(q, pos_key.transpose(-1, -2))  # (B, N, Tq, R)
        score = score + torch.gather(c2p, -1, index.expand(B, N, Tq, Tk))
    if pos_query is not None:
        p2c = torch.matmul(k, pos_query.transpose(-1, -2))  # (B, N, Tk, R)
        score = score + torch.gather(p2c, -1, index.t().expand(B, N, Tk, Tq)).transpose(-1, -2)
    return score / math.sqrt(K * scale_factor)


class RelativeContext:
    """What every block's attention reads about positions: the table rows used (B-free) and the index into them."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor) -> None:
        self.table = table  # (R, H), LayerNorm'd when model.norm_rel_ebd = 'layer_norm'
        self.index = index  # (T, T)


# ---- attention -------------------------------------------------------------------------------------------------------


class DisentangledSelfAttention(nn.Module):
    """q/k/v projections + relative-position projections; one SDPA call with the disentangled bias as its mask.

    v2/v3: `query_proj`, `key_proj`, `value_proj` (with biases); `pos_key_proj` / `pos_query_proj` unless
    share_att_key. v1: `in_proj` (no bias; rows q|k|v interleaved per head), `q_bias`, `v_bias`, `pos_proj` (no
    bias), `pos_q_proj`. Names as transformers' DisentangledSelfAttention of each version."""

    def __init__(self, cfg: ModelConfig, v1: bool) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.v1 = v1
        self.heads, self.head_dim = cfg.num_heads, H // cfg.num_heads
        self.terms = pos_att_terms(cfg) if cfg.relative_attention else ()
        self.scale_factor = 1 + len(pos_att_terms(cfg))
        self.share_att_key = cfg.share_att_key
        self.attn_dropout = cfg.attention_dropout
        self.pos_dropout = nn.Dropout(cfg.hidden_dropout)
        if v1:
            self.in_proj = nn.Linear(H, 3 * H, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(H))
            self.v_bias = nn.Parameter(torch.zeros(H))
            if "c2p" in self.terms:
                self.pos_proj = nn.Linear(H, H, bias=False)
            if "p2c" in self.terms:
                self.pos_q_proj = nn.Linear(H, H)
        else:
            self.query_proj = nn.Linear(H, H)
            self.key_proj = nn.Linear(H, H)
            self.value_proj = nn.Linear(H, H)
            if not cfg.share_att_key:
                if "c2p" in self.terms:
                    self.pos_key_proj = nn.Linear(H, H)
                if "p2c" in self.terms:
                    self.pos_query_proj = nn.Linear(H, H)

    def heads_of(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, N*K) -> (..., N, T, K)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-2, -3)

    def qkv(
        self, h: torch.Tensor, query_states: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, T, K) each; queries from `query_states` when given (the Enhanced Mask Decoder), else from h."""
        if self.v1:
            q, k, v = self.heads_of(self.in_proj(h)).chunk(3, dim=-1)  # per head: [q | k | v]
            if query_states is not None:
                q = self.heads_of(self.in_proj(query_states))[..., : self.head_dim]
            q = q + self.q_bias.view(self.heads, 1, self.head_dim)
            v = v + self.v_bias.view(self.heads, 1, self.head_dim)
            return q, k, v
        q_in = h if query_states is None else query_states
        return (
            self.heads_of(self.query_proj(q_in)),
            self.heads_of(self.key_proj(h)),
            self.heads_of(self.value_proj(h)),
        )

    def position_projections(self, table: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The relative table (R, H) as keys (c2p) and queries (p2c): (N, R, K) each, None for a term that is off."""
        table = self.pos_dropout(table)
        pos_key = pos_query = None
        if self.v1:
            if "c2p" in self.terms:
                pos_key = self.heads_of(self.pos_proj(table))
            if "p2c" in self.terms:
                pos_query = self.heads_of(self.pos_q_proj(table))
        elif self.share_att_key:
            if "c2p" in self.terms:
                pos_key = self.heads_of(self.key_proj(table))
            if "p2c" in self.terms:
                pos_query = self.heads_of(self.query_proj(table))
        else:
            if "c2p" in self.terms:
                pos_key = self.heads_of(self.pos_key_proj(table))
            if "p2c" in self.terms:
                pos_query = self.heads_of(self.pos_query_proj(table))
        return pos_key, pos_query

    def forward(
        self,
        h: torch.Tensor,
        pad: torch.Tensor | None,
        rel: RelativeContext | None,
        query_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h: (B, T, H), pad: (B, 1, 1, T) true at padded keys, or None -> context (B, T, H)."""
        B, T, H = h.shape
        q, k, v = self.qkv(h, query_states)  # (B, N, T, K)
        bias = None
        if rel is not None and self.terms:
            pos_key, pos_query = self.position_projections(rel.table)
            bias = disentangled_attention_bias(q, k, pos_key, pos_query, rel.index, self.scale_factor)
        if pad is not None:
            minimum = torch.finfo(q.dtype).min
            bias = (
                torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, minimum)
                if bias is None
                else bias.to(q.dtype).masked_fill(pad, minimum)  # fill, not add: no overflow to -inf
            )
        ctx = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if bias is None else bias.to(q.dtype),
            dropout_p=self.attn_dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(self.head_dim * self.scale_factor),
        )  # (B, N, T, K)
        return ctx.transpose(1, 2).reshape(B, T, H)


# ---- block ---------------------------------------------------------------------------------------------------------


class DenseNorm(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual) (transformers' DebertaV2SelfOutput / DebertaV2Output)."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class DebertaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, v1: bool) -> None:
        super().__init__()
        self.self = DisentangledSelfAttention(cfg, v1)  # `self`: transformers' name
        self.output = DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout)


class Intermediate(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class DebertaLayer(nn.Module):
    """Post-LN block; with `query_states` the queries (and the residual) come from them (the EMD)."""

    def __init__(self, cfg: ModelConfig, v1: bool) -> None:
        super().__init__()
        self.attention = DebertaAttention(cfg, v1)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(
            cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout
        )

    def forward(
        self,
        h: torch.Tensor,
        pad: torch.Tensor | None,
        rel: RelativeContext | None,
        query_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = h if query_states is None else query_states
        a = self.attention.output(self.attention.self(h, pad, rel, query_states), residual)  # (B, T, H)
        return self.output(self.intermediate(a), a)


class ConvLayer(nn.Module):
    """DeBERTa v2's convolution beside the first block: LayerNorm(block output + tanh(conv(embeddings))), padded
    positions zeroed (transformers modeling_deberta_v2.ConvLayer; conv_act 'tanh', conv_groups 1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        k = cfg.conv_kernel_size
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=(k - 1) // 2)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, embeddings: torch.Tensor, residual: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """embeddings, residual: (B, T, H); keep: (B, T, 1) 1 = token, 0 = padding."""
        out = self.conv(embeddings.transpose(1, 2)).transpose(1, 2) * keep  # (B, T, H)
        out = torch.tanh(self.dropout(out))
        return self.LayerNorm(residual + out) * keep


# ---- embeddings and encoder ----------------------------------------------------------------------------------------


class GDESEmbedding(nn.Module):
    """Gradient-disentangled embedding sharing (DeBERTa-v3): the discriminator's word embedding table is
    stop_gradient(generator's table) + `_weight`, a zero-initialised delta of its own (microsoft/DeBERTa
    `DeBERTa/apps/tasks/rtd_task.py` RTDModel, `embedding_sharing='gdes'`, `register_discriminator_fw_hook`; the
    parameter keeps the reference's name `_weight`).

    The lookup is linear in the table, so E[ids] = shared(ids).detach() + _weight[ids]: the generator's table is
    read through its own module call (ZeRO-3 gathers it there) and never receives a gradient from here."""

    def __init__(self, vocab_size: int, hidden: int, padding_idx: int) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self._weight = nn.Parameter(torch.zeros(vocab_size, hidden))

    def forward(self, input_ids: torch.Tensor, shared: nn.Module) -> torch.Tensor:
        """(B, T) ids, the generator's word embedding module -> (B, T, H)."""
        own = F.embedding(input_ids, self._weight, padding_idx=self.padding_idx)  # no gradient at the pad row
        return shared(input_ids).detach() + own


class DebertaEmbeddings(nn.Module):
    """word (+ absolute positions when position_biased_input) (+ token types) -> LayerNorm -> zero padding ->
    dropout. The position table also exists for the Enhanced Mask Decoder (the reference keeps it always). With
    `gdes` the word table is a `GDESEmbedding` over the generator's (the RTD discriminator)."""

    def __init__(self, cfg: ModelConfig, gdes: bool = False) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.position_biased_input = cfg.position_biased_input
        self.word_embeddings: nn.Module = (
            GDESEmbedding(cfg.vocab_size, H, cfg.pad_token_id)
            if gdes
            else TiedEmbedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)
        )
        needs_positions = cfg.position_biased_input or cfg.enhanced_mask_decoder
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, H) if needs_positions else None
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, H) if cfg.type_vocab_size > 0 else None
        self.LayerNorm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def absolute_positions(self, T: int, device: torch.device) -> torch.Tensor:
        """(T, H) rows 0..T-1 of the absolute position table."""
        assert self.position_embeddings is not None
        return self.position_embeddings(torch.arange(T, device=device))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        keep: torch.Tensor,
        shared: nn.Module | None = None,
    ) -> torch.Tensor:
        """`shared`: the generator's word embedding module, which a GDES table adds its delta to."""
        T = input_ids.shape[1]
        if shared is None:
            h = self.word_embeddings(input_ids)  # (B, T, H)
        else:
            h = self.word_embeddings(input_ids, shared)  # (B, T, H): sg(generator's) + delta
        if self.position_biased_input:
            h = h + self.absolute_positions(T, input_ids.device)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            h = h + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(h) * keep.to(h.dtype))


class DebertaEncoder(nn.Module):
    """Blocks sharing one relative embedding table (`rel_embeddings`, LayerNorm'd by `LayerNorm` with
    norm_rel_ebd), the optional conv after block 1, and the index of relative positions."""

    def __init__(self, cfg: ModelConfig, v1: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = nn.ModuleList(DebertaLayer(cfg, v1) for _ in range(cfg.num_layers))
        self.rel_embeddings = (
            nn.Embedding(rel_table_rows(cfg), cfg.hidden_size) if cfg.relative_attention else None
        )
        norm = cfg.relative_attention and cfg.norm_rel_ebd == "layer_norm"
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if norm else None
        self.conv = ConvLayer(cfg) if cfg.conv_kernel_size > 0 else None
        self.checkpointing = cfg.activation_checkpointing
        self.checkpoint_every = cfg.checkpoint_every

    def relative_context(self, T: int, device: torch.device) -> RelativeContext | None:
        if self.rel_embeddings is None:
            return None
        first, rows = relative_rows(self.cfg, T)
        table = self.rel_embeddings(torch.arange(first, first + rows, device=device))  # (R, H)
        index = relative_index(self.cfg, T, device)  # (T, T) in [0, R)
        if self.LayerNorm is not None:
            table = self.LayerNorm(table)
        return RelativeContext(table, index)

    def forward(
        self, e: torch.Tensor, pad: torch.Tensor | None, keep: torch.Tensor, rel: RelativeContext | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings e (B, T, H) -> (the last block's output, its input), both (B, T, H)."""
        h = before_last = e
        for i, block in enumerate(self.layer):
            before_last = h
            if self.checkpointing and self.training and i % self.checkpoint_every == 0:
                h = checkpoint(block, h, pad, rel, use_reentrant=False)
            else:
                h = block(h, pad, rel)
            if i == 0 and self.conv is not None:
                h = self.conv(e, h, keep)
        return h, before_last


class DebertaModel(nn.Module):
    """embeddings -> blocks (-> the Enhanced Mask Decoder when asked)."""

    def __init__(self, cfg: ModelConfig, v1: bool, gdes: bool = False) -> None:
        super().__init__()
        self.embeddings = DebertaEmbeddings(cfg, gdes)
        self.encoder = DebertaEncoder(cfg, v1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        enhanced_mask_decoder: bool = False,
        shared_embeddings: nn.Module | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, H): the encoder's output (= transformers' DebertaV2Model last_hidden_state at
        every unpadded position), or with `enhanced_mask_decoder` the EMD's (module docstring).
        `shared_embeddings`: the generator's word embeddings, for a GDES discriminator."""
        B, T = input_ids.shape
        if attention_mask is None:
            keep = torch.ones(B, T, 1, device=input_ids.device)
            pad = None
        else:
            keep = attention_mask[:, :, None].float()  # (B, T, 1)
            pad = ~attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T)
        e = self.embeddings(input_ids, token_type_ids, keep, shared_embeddings)  # (B, T, H)
        rel = self.encoder.relative_context(T, input_ids.device)
        h, before_last = self.encoder(e, pad, keep, rel)
        if not enhanced_mask_decoder:
            return h
        last = self.encoder.layer[-1]
        query = before_last + self.embeddings.absolute_positions(T, input_ids.device)  # z + h_{L-1}
        for _ in range(2):  # the reference's EnhancedMaskDecoder: [encoder.layer[-1] for _ in range(2)]
            query = last(before_last, pad, rel, query_states=query)
        return query


# ---- MLM head and the pretraining model ----------------------------------------------------------------------------


class LMPredictionHead(nn.Module):
    """dense -> act -> LayerNorm -> tied word embeddings + bias (microsoft/DeBERTa bert.py BertLMPredictionHead;
    transformers' non-legacy DebertaV2LMPredictionHead)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation_fn(cfg.activation)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: TiedEmbedding) -> torch.Tensor:
        return embedding(self.LayerNorm(self.act(self.dense(h))), project=True) + self.bias  # (..., V)


class LMPredictions(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.lm_head = LMPredictionHead(cfg)


class DebertaForPretraining(nn.Module):
    """DeBERTa + MLM head tied to the input embeddings; the head runs at labelled positions only (MLMOutput, the
    'mlm' task's output). v1 layout for family 'deberta_v1', v2/v3 otherwise."""

    def __init__(self, cfg: ModelConfig, v1: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.deberta = DebertaModel(cfg, v1)
        self.lm_predictions = LMPredictions(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))
        # The EMD acts only without absolute positions in the input (the reference's `position_biased_input` branch).
        self.use_emd = cfg.enhanced_mask_decoder and not cfg.position_biased_input

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        words = self.deberta.embeddings.word_embeddings
        assert isinstance(words, TiedEmbedding)
        return self.lm_predictions.lm_head(h, words)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) the encoder's output without the EMD (transformers' DebertaV2Model, which fine-tuning
        classes read), for a fine-tuning head."""
        return self.deberta(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> MLMOutput:
        emd = self.use_emd
        h = self.deberta(input_ids, attention_mask, token_type_ids, enhanced_mask_decoder=emd)  # (B, T, H)
        if labels is None:
            return MLMOutput(self.mlm_logits(h), None, h)  # (B, T, V)
        selected, targets, _ = select_labelled(h, labels)  # (M, H), (M,)
        return MLMOutput(self.mlm_logits(selected), targets, h)  # (M, V), (M,)


# ---- DeBERTa-v3 replaced-token detection with gradient-disentangled embedding sharing ------------------------------


def rtd_generator_config(cfg: ModelConfig) -> ModelConfig:
    """The RTD generator: the discriminator's width at `generator_layers` blocks (0 = half its depth; the
    reference's rtd_xsmall/small/base/large.json), a DeBERTa MLM with the Enhanced Mask Decoder."""
    layers = cfg.generator_layers or max(1, cfg.num_layers // 2)
    return dataclasses.replace(cfg, family="deberta", num_layers=layers, generator_layers=0)


def rtd_discriminator_config(cfg: ModelConfig) -> ModelConfig:
    """The RTD discriminator's encoder: the config's shape, no Enhanced Mask Decoder (it has no MLM head), so no
    absolute position table (position_biased_input is false for deberta_rtd)."""
    return dataclasses.replace(cfg, family="deberta", enhanced_mask_decoder=False, generator_layers=0)


class RTDHead(nn.Module):
    """The reference's replaced-token head (microsoft/DeBERTa `DeBERTa/apps/models/replaced_token_detection_model.py`
    `LMMaskPredictionHead`): LayerNorm(h + h[CLS]) -> dense -> act -> classifier, one logit per token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation_fn(cfg.activation)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.classifier = nn.Linear(cfg.hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T) logits."""
        seq = self.LayerNorm(h[:, :1, :] + h)  # the first ([CLS]) token's state added to every position
        return self.classifier(self.act(self.dense(seq))).squeeze(-1)


class RTDDiscriminator(nn.Module):
    """DeBERTa encoder with GDES word embeddings + the RTD head (the reference's ReplacedTokenDetectionModel)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.deberta = DebertaModel(rtd_discriminator_config(cfg), v1=False, gdes=True)
        self.mask_predictions = RTDHead(cfg)


class DebertaRTDForPretraining(nn.Module):
    """DeBERTa-v3 pretraining (family 'deberta_rtd'): a DeBERTa MLM generator (half depth, same width, with the
    Enhanced Mask Decoder) and a DeBERTa discriminator trained on replaced-token detection, sharing the word
    embeddings by GDES (`GDESEmbedding`: the discriminator sees stop_gradient(generator's table) + its delta).

    Reference: microsoft/DeBERTa `DeBERTa/apps/tasks/rtd_task.py` (RTDModel, `make_electra_data`, `get_loss_fn`),
    `apps/models/masked_language_model.py`, `apps/models/replaced_token_detection_model.py`,
    `experiments/language_model/rtd_base.json` (`embedding_sharing: gdes`) and `rtd.sh`.

    - Replacements as `make_electra_data`: at every masked position one token sampled from the generator's softmax
      (`topk_sampling(logits, topk=1, temp=1)` is `torch.multinomial(softmax(logits / 1), 1)`: plain sampling, not
      argmax and not Gumbel noise), without gradient; a position is "replaced" when the sample differs from the
      original (`(labels > 0) & (labels != new_input_ids)`), so a correct guess counts as original.
    - Decoupled updates (model.decoupled_training, the default as in the reference: rtd_task.py
      `get_decoupled_loss_fn`, two DistributedTrainers 'G' and 'D'): each step, the generator's MLM step over its
      parameters (`phase="generator"`: MLM mean at the masked positions, and the replacements sampled from it),
      then the discriminator's step over its own (`phase="discriminator"`: rtd_weight x RTD binary cross-entropy
      mean over the non-pad tokens of those replacements), whose GDES embeddings read the generator's table as
      that step left it. `phases` names them and `param_phase` puts each parameter in one: the trainer steps
      each phase's parameter groups alone (trainer/engine.py), each with its own gradient norm and clipping.
    - Joint (decoupled_training false, the reference's `get_loss_fn`): loss = generator MLM mean + rtd_weight x
      RTD mean, one step. With GDES the gradients each parameter sees are the same either way (the RTD loss
      reaches no generator parameter: its input is sampled without gradient and the shared table is detached);
      what differs is the order of the updates and the clipping norm. rtd_weight: the reference's `rtd_lambda`
      default 10 (rtd.sh passes none), set by the deberta_rtd presets.
    - The reference also shares the absolute position table by GDES; the discriminator never reads it
      (position_biased_input false, no EMD there), so cloze's discriminator has none and position_biased_input
      must stay false.

    Keys follow the reference's RTDModel: `generator.deberta.*`, `generator.lm_predictions.*`,
    `discriminator.deberta.*` (with `embeddings.word_embeddings._weight`, the delta), `discriminator.mask_predictions.*`.
    Returns `ElectraOutput` (modeling/electra.py), what trainer/losses.py's ElectraTask consumes.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.generator = DebertaForPretraining(rtd_generator_config(cfg))
        self.discriminator = RTDDiscriminator(cfg)
        self.discriminator.apply(lambda m: init_bert_weights(m, cfg.initializer_range))  # the delta stays 0

    def shared_embeddings(self) -> nn.Module:
        return self.generator.deberta.embeddings.word_embeddings

    def discriminator_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) the discriminator encoder's output (what fine-tuning starts from)."""
        return self.discriminator.deberta(
            input_ids, attention_mask, token_type_ids, shared_embeddings=self.shared_embeddings()
        )

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) the discriminator's encoder output (what DeBERTa-v3 fine-tunes; the generator only lends
        its word table through GDES)."""
        return self.discriminator_hidden(input_ids, attention_mask, token_type_ids)

    def mlm_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, V) masked-LM logits: the generator's (pseudo-perplexity)."""
        return self.generator(input_ids, None, attention_mask, token_type_ids).logits

    def discriminator_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) replaced-token logits of the discriminator alone."""
        return self.discriminator.mask_predictions(
            self.discriminator_hidden(input_ids, attention_mask, token_type_ids)
        )

    @property
    def phases(self) -> tuple[str, ...]:
        """The optimizer steps of one training step, in order: ("generator", "discriminator") when decoupled."""
        return ("generator", "discriminator") if self.config.decoupled_training else ()

    def param_phase(self, name: str) -> str:
        """Which phase's step updates parameter `name` (the GDES delta is the discriminator's)."""
        return "generator" if name.startswith("generator.") else "discriminator"

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        phase: str = "",
        rtd_labels: torch.Tensor | None = None,
    ) -> ElectraOutput | GeneratorStep | DiscriminatorStep:
        """Both halves (phase ""), or one half of a decoupled step: "generator" (input_ids masked, labels the
        originals at the masked positions) or "discriminator" (input_ids the generator's replacements, rtd_labels
        1 where replaced)."""
        if phase == "discriminator":
            assert rtd_labels is not None
            real = (
                attention_mask.bool()
                if attention_mask is not None
                else torch.ones_like(input_ids, dtype=torch.bool)
            )
            rtd_logits = self.discriminator_logits(input_ids, attention_mask, token_type_ids)
            return DiscriminatorStep(rtd_loss(rtd_logits, rtd_labels, real), rtd_logits, rtd_labels, real)
        assert labels is not None
        # Generator: MLM (with the EMD) at the masked positions only.
        gen = self.generator(input_ids, labels, attention_mask, token_type_ids)
        gen_logits, targets = gen.logits, gen.targets  # (M, V), (M,)
        assert targets is not None
        replaced = sample_replacements(gen_logits, input_ids, labels, attention_mask)  # make_electra_data
        if phase == "generator":
            return GeneratorStep(generator_loss(gen_logits, targets), gen_logits, targets, replaced)
        rtd_logits = self.discriminator_logits(replaced.input_ids, attention_mask, token_type_ids)  # (B, T)
        return electra_output(gen_logits, targets, rtd_logits, replaced, self.config.rtd_weight)


# ---- validation, accounting ----------------------------------------------------------------------------------------


def check_deberta(cfg: ModelConfig) -> None:
    """DeBERTa settings that cannot work, each named with what to do (FamilySpec.check_config)."""
    check_standard_ffn(cfg)
    family = f"model.family={cfg.family!r}"
    if cfg.position_buckets < 0:
        raise ModelConfigError(
            f"model.position_buckets={cfg.position_buckets}: use 0 for no bucketing (transformers' -1) or a "
            "positive count (v2/v3: 256)"
        )
    if cfg.max_relative_positions == 0 or cfg.max_relative_positions < -1:
        raise ModelConfigError(
            f"model.max_relative_positions={cfg.max_relative_positions}: use -1 (= max_position_embeddings) or a "
            "positive distance (v2/v3: 512)"
        )
    if cfg.relative_attention and cfg.position_buckets > 0:
        mx = max_relative(cfg)
        if cfg.position_buckets < 2 or cfg.position_buckets > mx or cfg.position_buckets // 2 >= mx - 1:
            raise ModelConfigError(
                f"model.position_buckets={cfg.position_buckets} cannot bucket relative distances up to "
                f"model.max_relative_positions={mx}: buckets must be >= 2 and <= max_relative_positions (with "
                "buckets/2 < max_relative_positions - 1); lower position_buckets or raise max_relative_positions "
                "(v2/v3: 256 and 512)"
            )
    bad_terms = {t.strip() for t in cfg.pos_att_type.lower().split("|") if t.strip()} - {"c2p", "p2c"}
    if bad_terms:
        raise ModelConfigError(
            f"model.pos_att_type={cfg.pos_att_type!r}: {', '.join(sorted(bad_terms))} is not supported; use "
            "'p2c|c2p', 'c2p', 'p2c' or ''"
        )
    if cfg.norm_rel_ebd not in ("none", "layer_norm"):
        raise ModelConfigError(f"model.norm_rel_ebd={cfg.norm_rel_ebd!r}: use 'layer_norm' or 'none'")
    if cfg.conv_kernel_size < 0 or (cfg.conv_kernel_size > 0 and cfg.conv_kernel_size % 2 == 0):
        raise ModelConfigError(
            f"model.conv_kernel_size={cfg.conv_kernel_size}: use 0 (no conv layer) or an odd kernel (v2: 3)"
        )
    head_dim = cfg.hidden_size // cfg.num_heads
    if cfg.embedding_size not in (0, cfg.hidden_size) or cfg.d_kv not in (0, head_dim):
        raise ModelConfigError(
            f"{family} needs model.embedding_size=0 and model.d_kv=0 (no factorised widths)"
        )
    for key in ("share_layers", "pre_layer_norm", "sentence_head"):
        if getattr(cfg, key):
            raise ModelConfigError(f"{family} has no model.{key}: set it to false")
    if cfg.activation_checkpointing and cfg.checkpoint_mode != "full":
        raise ModelConfigError(f"{family} checkpoints whole blocks only: set model.checkpoint_mode='full'")


def check_deberta_v1(cfg: ModelConfig) -> None:
    """deberta_v1: the DeBERTa checks, and none of the v2/v3 features."""
    check_deberta(cfg)
    v2_only = {
        "share_att_key": cfg.share_att_key,
        "position_buckets": cfg.position_buckets,
        "norm_rel_ebd": cfg.norm_rel_ebd != "none",
        "conv_kernel_size": cfg.conv_kernel_size,
    }
    on = [k for k, v in v2_only.items() if v]
    if on:
        raise ModelConfigError(
            f"model.family='deberta_v1' has no {', '.join(on)} (v2/v3 features): set model.share_att_key=false, "
            "model.position_buckets=0, model.norm_rel_ebd='none', model.conv_kernel_size=0, or use "
            "model.family='deberta'"
        )


def check_deberta_rtd(cfg: ModelConfig) -> None:
    """deberta_rtd: the DeBERTa checks plus its generator depth and no absolute positions in the input."""
    check_deberta(cfg)
    if not 0 <= cfg.generator_layers <= cfg.num_layers:
        raise ModelConfigError(
            f"model.generator_layers={cfg.generator_layers}: use 0 (= num_layers // 2, the reference's half depth) "
            f"or 1..model.num_layers={cfg.num_layers}"
        )
    if cfg.position_biased_input:
        raise ModelConfigError(
            "model.family='deberta_rtd' needs model.position_biased_input=false (DeBERTa-v3; the discriminator "
            "shares no absolute position table): set it to false, or train model.family='deberta' (MLM)"
        )


def _attention_params(cfg: ModelConfig, v1: bool) -> int:
    H = cfg.hidden_size
    terms = pos_att_terms(cfg) if cfg.relative_attention else ()
    if v1:
        return 3 * H * H + 2 * H + ("c2p" in terms) * H * H + ("p2c" in terms) * (H * H + H)
    pos = 0 if cfg.share_att_key else len(terms) * (H * H + H)
    return 3 * (H * H + H) + pos


def deberta_params(cfg: ModelConfig, v1: bool = False) -> int:
    """Trainable parameters of DebertaForPretraining(cfg, v1) (the word embeddings count once: the head is tied)."""
    H, inner = cfg.hidden_size, cfg.intermediate_size
    emb = cfg.vocab_size * H + cfg.type_vocab_size * H + 2 * H
    if cfg.position_biased_input or cfg.enhanced_mask_decoder:
        emb += cfg.max_position_embeddings * H
    block = _attention_params(cfg, v1) + (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H) + 2 * H
    enc = cfg.num_layers * block
    if cfg.relative_attention:
        enc += rel_table_rows(cfg) * H + (2 * H if cfg.norm_rel_ebd == "layer_norm" else 0)
    if cfg.conv_kernel_size > 0:
        enc += H * H * cfg.conv_kernel_size + H + 2 * H
    head = H * H + H + 2 * H + cfg.vocab_size
    return emb + enc + head


def deberta_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """Training FLOPs per token (3 x forward; modeling/flops.py conventions): per block the projections and FFN, the
    content scores and weighted sum (2 x 2 x T x H), and per disentangled term its projection of the R-row relative
    table (shared by the T tokens) and its (T x R) scores; the conv layer; the EMD's two extra passes of the last
    block (over every position); the MLM head on masked positions."""
    H, inner, V, T = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, seq_len
    n_terms = len(pos_att_terms(cfg)) if cfg.relative_attention else 0
    R = relative_rows(cfg, T)[1]
    block = 2 * (4 * H * H + 2 * H * inner) + 2 * 2 * T * H + n_terms * (2 * R * H * H / T + 2 * R * H)
    passes = cfg.num_layers + (2 if cfg.enhanced_mask_decoder and not cfg.position_biased_input else 0)
    conv = 2 * H * H * cfg.conv_kernel_size if cfg.conv_kernel_size > 0 else 0
    head = mask_fraction * 2 * (H * H + H * V)
    return 3.0 * (passes * block + conv + head)


def _rtd_head_params(cfg: ModelConfig) -> int:
    H = cfg.hidden_size
    return (H * H + H) + 2 * H + (H + 1)


def _mlm_head_params(cfg: ModelConfig) -> int:
    H = cfg.hidden_size
    return (H * H + H) + 2 * H + cfg.vocab_size


def deberta_rtd_params(cfg: ModelConfig) -> int:
    """DebertaRTDForPretraining(cfg): the generator (with its MLM head) + the discriminator (its word table is the
    GDES delta, the same size; no position table) with the RTD head instead of an MLM head."""
    disc = rtd_discriminator_config(cfg)
    return (
        deberta_params(rtd_generator_config(cfg))
        + deberta_params(disc)
        - _mlm_head_params(disc)
        + _rtd_head_params(cfg)
    )


def deberta_rtd_flops(
    cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15
) -> float:
    """Training FLOPs per token: the generator's (deberta_flops, with its EMD and masked-position head) + the
    discriminator encoder's + the RTD head at every token (3 x forward)."""
    H = cfg.hidden_size
    gen = deberta_flops(rtd_generator_config(cfg), seq_len, target_len, mask_fraction)
    disc = deberta_flops(rtd_discriminator_config(cfg), seq_len, target_len, 0.0)
    return gen + disc + 3.0 * 2 * (H * H + H)


# ---- transformers adapter ------------------------------------------------------------------------------------------


def _transformers() -> Any:
    from .hf import _transformers as load  # transformers is imported lazily (an export dependency)

    return load()


def _hf_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The arguments DebertaConfig and DebertaV2Config share (legacy=False: the reference's `lm_predictions` head):
    the BERT-style ones every encoder family exports, and DeBERTa's relative-position settings."""
    return dict(
        hf.encoder_kwargs(cfg),
        type_vocab_size=cfg.type_vocab_size,  # 0 = no token types (v3), which BertConfig-style families lack
        max_position_embeddings=cfg.max_position_embeddings,
        relative_attention=cfg.relative_attention,
        max_relative_positions=cfg.max_relative_positions,
        position_biased_input=cfg.position_biased_input,
        pos_att_type=[t.strip() for t in cfg.pos_att_type.lower().split("|") if t.strip()],
        legacy=False,
    )


def deberta_v2_config(cfg: ModelConfig) -> Any:
    return _transformers().DebertaV2Config(
        position_buckets=cfg.position_buckets if cfg.position_buckets > 0 else -1,
        share_att_key=cfg.share_att_key,
        norm_rel_ebd=cfg.norm_rel_ebd if cfg.relative_attention else "none",  # no table, nothing to normalise
        conv_kernel_size=cfg.conv_kernel_size,
        conv_act="tanh",
        **_hf_kwargs(cfg),
    )


def deberta_v1_config(cfg: ModelConfig) -> Any:
    return _transformers().DebertaConfig(**_hf_kwargs(cfg))


def keep_emd_positions(hf: Any, cfg: ModelConfig) -> None:
    """transformers builds no absolute position table when position_biased_input is false, but the EMD has one:
    give the exported model that table so that it is saved (transformers ignores it on load, as it does in the
    reference's own checkpoints: `_keys_to_ignore_on_load_unexpected = ['position_embeddings']`) and an import
    continues pretraining with it."""
    embeddings = hf.deberta.embeddings
    if embeddings.position_embeddings is None and cfg.enhanced_mask_decoder:
        embeddings.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)


def merge_gdes_delta(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook of the exported discriminator's word embeddings: weight = the generator's table
    (renamed onto `weight`) + the GDES delta (renamed onto `gdes_delta`), as the reference's forward hook builds it."""
    delta = state.pop(prefix + "gdes_delta", None)
    if delta is not None:
        state[prefix + "weight"] = state[prefix + "weight"] + delta


def fix_rtd_export(hf: Any, cfg: ModelConfig) -> None:
    """deberta_rtd's export parts before our weights load: the generator (DebertaV2ForMaskedLM) keeps its EMD
    position table (`keep_emd_positions`); the discriminator (DebertaV2Model) merges the GDES delta into its word
    embeddings on load and carries the RTD head as `mask_predictions` (the reference's name, which its released
    checkpoints carry too and transformers' DebertaV2ForMaskedLM ignores on load), so save_pretrained writes the
    head's weights into the same model.safetensors (docs/training.md: how to load them)."""
    if hasattr(hf, "lm_predictions"):
        keep_emd_positions(hf, rtd_generator_config(cfg))
        return
    hf.mask_predictions = RTDHead(cfg)
    hf.embeddings.word_embeddings.register_load_state_dict_pre_hook(merge_gdes_delta)


_RTD_GEN_KEEP = "generator.deberta.embeddings.word_embeddings.weight"
RTD_DISCRIMINATOR_PART = HFPart(
    "DebertaV2Model",
    lambda cfg: deberta_v2_config(rtd_discriminator_config(cfg)),
    rename=(
        ("discriminator.deberta.", ""),
        ("discriminator.deberta.embeddings.word_embeddings._weight", "embeddings.word_embeddings.gdes_delta"),
        ("discriminator.mask_predictions.", "mask_predictions."),
        (_RTD_GEN_KEEP, "embeddings.word_embeddings.weight"),
    ),
    # Every generator key but its word table (which the delta is added to).
    drop=(
        "generator.lm_predictions.",
        "generator.deberta.encoder.",
        "generator.deberta.embeddings.LayerNorm.",
        "generator.deberta.embeddings.position_embeddings.",
        "generator.deberta.embeddings.token_type_embeddings.",
    ),
)
RTD_GENERATOR_PART = HFPart(
    "DebertaV2ForMaskedLM",
    lambda cfg: deberta_v2_config(rtd_generator_config(cfg)),
    rename=(("generator.", ""),),
    drop=("discriminator.",),
    subdir="generator",
)


def _from_hf(raw: dict[str, Any], path: str, v1: bool) -> ModelConfig:
    """Our config for a transformers DeBERTa config.json (transformers' defaults for absent keys); the Enhanced
    Mask Decoder, which transformers does not record, is on (the reference's pretraining default)."""
    where = f"{path}/config.json"
    activation = hf.activation_from_hf(raw, path)
    H, N = raw["hidden_size"], raw["num_attention_heads"]
    unsupported = {
        "embedding_size": raw.get("embedding_size", H) != H,
        "attention_head_size": raw.get("attention_head_size", H // N) != H // N,
        "talking_head": bool(raw.get("talking_head", False)),
        "conv_act": raw.get("conv_act", "tanh") != "tanh",
        "conv_groups": raw.get("conv_groups", 1) != 1,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ModelConfigError(
            f"{where}: {', '.join(f'{k}={raw[k]!r}' for k in bad)} is not supported by cloze"
        )
    pos_att = raw.get("pos_att_type") or []
    if isinstance(pos_att, str):
        pos_att = pos_att.split("|")
    buckets = raw.get("position_buckets", -1)
    return ModelConfig(
        family="deberta_v1" if v1 else "deberta",
        vocab_size=raw["vocab_size"],
        hidden_size=H,
        num_layers=raw["num_hidden_layers"],
        num_heads=N,
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 512),
        type_vocab_size=raw.get("type_vocab_size", 0),
        hidden_dropout=raw.get("hidden_dropout_prob", 0.1),
        attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-7),
        initializer_range=raw.get("initializer_range", 0.02),
        activation=activation,
        pad_token_id=raw.get("pad_token_id") or 0,
        relative_attention=bool(raw.get("relative_attention", False)),
        position_buckets=buckets if buckets > 0 else 0,
        max_relative_positions=max(raw.get("max_relative_positions", -1), 0) or -1,
        share_att_key=bool(raw.get("share_att_key", False)) and not v1,
        pos_att_type="|".join(t.strip().lower() for t in pos_att),
        position_biased_input=bool(raw.get("position_biased_input", True)),
        norm_rel_ebd="none" if v1 else raw.get("norm_rel_ebd", "none"),
        conv_kernel_size=0 if v1 else raw.get("conv_kernel_size", 0),
    )


def deberta_v2_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return _from_hf(raw, path, v1=False)


def deberta_v1_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return _from_hf(raw, path, v1=True)


# ---- registration (modeling/registry.py) -------------------------------------------------------------------------

V3: dict[str, Any] = dict(
    family="deberta",
    vocab_size=128100,
    max_position_embeddings=512,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
    relative_attention=True,
    position_buckets=256,
    max_relative_positions=-1,
    share_att_key=True,
    pos_att_type="p2c|c2p",
    position_biased_input=False,
    norm_rel_ebd="layer_norm",
    conv_kernel_size=0,
)
"""What the deberta-v3 configs share (microsoft/deberta-v3-base config.json on the Hugging Face hub)."""

DEBERTA_PRESETS: dict[str, dict[str, Any]] = {
    "deberta_v3_xsmall": dict(**V3, hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536),
    "deberta_v3_small": dict(**V3, hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072),
    "deberta_v3_base": dict(**V3, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "deberta_v3_large": dict(**V3, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "tiny_deberta": dict(
        **{**V3, "vocab_size": 30522}, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512
    ),
}

register_family(
    FamilySpec(
        name="deberta",
        build=DebertaForPretraining,
        objectives=("mlm",),
        param_count=deberta_params,
        flops_per_token=deberta_flops,
        check_config=check_deberta,
        hf=HFAdapter(
            parts=(HFPart("DebertaV2ForMaskedLM", deberta_v2_config),),
            model_type="deberta-v2",
            from_hf_config=deberta_v2_from_hf,
            bare_prefix="deberta.",
            fix_hf_model=keep_emd_positions,
        ),
        presets=DEBERTA_PRESETS,
    )
)
RTD_PRESETS: dict[str, dict[str, Any]] = {
    f"{name}_rtd": {**values, "family": "deberta_rtd", "rtd_weight": 10.0}
    for name, values in DEBERTA_PRESETS.items()
}
"""deberta_v3_{xsmall,small,base,large}_rtd and tiny_deberta_rtd: the same shapes as DeBERTa-v3 RTD pretraining
(generator: half depth, same width; rtd_weight 10 = the reference's rtd_lambda)."""

register_family(
    FamilySpec(
        name="deberta_rtd",
        build=DebertaRTDForPretraining,
        objectives=("electra", "mlm", "wwm", "span"),
        param_count=deberta_rtd_params,
        flops_per_token=deberta_rtd_flops,
        check_config=check_deberta_rtd,
        hf=HFAdapter(parts=(RTD_DISCRIMINATOR_PART, RTD_GENERATOR_PART), fix_hf_model=fix_rtd_export),
        presets=RTD_PRESETS,
    )
)
register_family(
    FamilySpec(
        name="deberta_v1",
        build=lambda cfg: DebertaForPretraining(cfg, v1=True),
        objectives=("mlm",),
        param_count=lambda cfg: deberta_params(cfg, v1=True),
        flops_per_token=deberta_flops,
        check_config=check_deberta_v1,
        hf=HFAdapter(
            parts=(HFPart("DebertaForMaskedLM", deberta_v1_config),),
            model_type="deberta",
            from_hf_config=deberta_v1_from_hf,
            bare_prefix="deberta.",
            fix_hf_model=keep_emd_positions,
        ),
        presets={
            # microsoft/deberta-base (v1): GPT-2 BPE vocabulary, no buckets, no relative LayerNorm.
            "deberta_v1_base": {
                **V3,
                "family": "deberta_v1",
                "vocab_size": 50265,
                "position_buckets": 0,
                "share_att_key": False,
                "norm_rel_ebd": "none",
                "hidden_size": 768,
                "num_layers": 12,
                "num_heads": 12,
                "intermediate_size": 3072,
            }
        },
    )
)
