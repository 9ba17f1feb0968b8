"""Longformer: RoBERTa with sliding-window attention plus global attention on chosen tokens, in memory linear in the
sequence length (Beltagy et al. 2020).

References: allenai/longformer `longformer/longformer.py` (`LongformerSelfAttention`, the `sliding_chunks` mode) and
transformers `models/longformer/modeling_longformer.py` (`LongformerSelfAttention`, `LongformerModel`
`_pad_to_window_size` and `_merge_to_attention_mask`, `create_position_ids_from_input_ids`), whose arithmetic this
file follows and whose `LongformerForMaskedLM` the export matches logit for logit (tests/test_longformer.py):

- `attention_window` (one per layer, or one for all): the full window w, even; a token attends to the w/2 tokens
  on each side of it and to itself (transformers' meaning).
- a global-attention mask (1 = global): a global token attends to every token and every token attends to it. The
  global rows are computed with their own projections (`query_global`, `key_global`, `value_global`); the other
  tokens see a global token's key and value through the ordinary projections, once (it is removed from their
  window). Padding is neither attended nor attending (its output rows are zero before the output projection).
- the sequence is padded to a multiple of every layer's window for the user (pad id, no attention), the output
  sliced back.
- positions as RoBERTa's `create_position_ids_from_input_ids`: the running count of non-pad tokens after the pad
  id; pads get the pad id's position.
- no n x n score matrix: queries in blocks of w/2 against the 3 blocks around them (a band mask keeps |i - j| <=
  w/2) and against the G global keys; the G global rows against all n keys. Memory and time O(n (1.5 w + G)).
  Dilation is not implemented (the reference's MLM path asserts it off).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import flops, hf
from .config import PRESETS, ModelConfig, ModelConfigError, check_standard_ffn
from .encoder import (
    ENCODER_DROP,
    ROBERTA_LAYER_FUSE,
    ROBERTA_RENAME,
    BertEmbeddings,
    BertForPretraining,
    BertLayer,
    MLMOutput,
    select_labelled,
)
from .layers import init_bert_weights, run_blocks
from .registry import FamilySpec, HFAdapter, HFPart, register_family

PAD, LOCAL, GLOBAL = 0, 1, 2
"""Per-token attention codes (transformers' merged attention mask: 0 padding, 1 local, 2 global)."""


def layer_windows(cfg: ModelConfig) -> list[int]:
    """The full window of each layer (`model.attention_window`: one value, or one per layer)."""
    w = list(cfg.attention_window)
    return w * cfg.num_layers if len(w) == 1 else w


def check_windows(cfg: ModelConfig) -> None:
    """Each window even, positive and no longer than the model's positions; one per layer or one for all."""
    w = list(cfg.attention_window)
    if len(w) not in (1, cfg.num_layers):
        raise ModelConfigError(
            f"model.attention_window has {len(w)} values for {cfg.num_layers} layers: give one for all layers or "
            "one per layer"
        )
    for x in w:
        if x <= 0 or x % 2:
            raise ModelConfigError(
                f"model.attention_window={x}: a window must be even and positive (it is the full window, w/2 "
                "tokens on each side; transformers' meaning)"
            )
        if x > cfg.max_position_embeddings:
            raise ModelConfigError(
                f"model.attention_window={x} is longer than the sequence the model takes "
                f"(model.max_position_embeddings={cfg.max_position_embeddings}); use a smaller window"
            )


def pad_multiple(cfg: ModelConfig) -> int:
    """Sequence lengths are padded to a multiple of this: every layer's full window divides it."""
    m = 1
    for w in layer_windows(cfg):
        m = m * w // math.gcd(m, w)
    return m


def attention_codes(
    attention_mask: torch.Tensor | None, global_attention_mask: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """(B, T) PAD / LOCAL / GLOBAL, as transformers' `attention_mask * (global_attention_mask + 1)`."""
    keep = torch.ones_like(like, dtype=torch.long) if attention_mask is None else attention_mask.long()
    if global_attention_mask is None:
        return keep
    return keep * (global_attention_mask.long() + 1)


def _global_index(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(B, G) positions of each row's global tokens in order (padded with other positions), (B, G) which of them are
    real, and G = the most global tokens of any row."""
    glob = code == GLOBAL
    G = int(glob.sum(1).max()) if glob.numel() else 0
    order = torch.sort((~glob).to(torch.int8), dim=1, stable=True).indices[:, :G]  # globals first, in order
    valid = torch.arange(G, device=code.device)[None, :] < glob.sum(1, keepdim=True)
    return order, valid, G


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, T, K) at positions index (B, G) -> (B, N, G, K)."""
    B, N, _, K = x.shape
    return x.gather(2, index[:, None, :, None].expand(B, N, index.shape[1], K))


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    code: torch.Tensor,
    one_sided: int,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Longformer attention of q, k, v (B, N, T, K) under `code` (B, T) with w = `one_sided` tokens on each side;
    `global_qkv`: the global projections (B, N, T, K) each, needed when `code` has GLOBAL tokens. T must be a
    multiple of w. Returns (B, N, T, K); rows of padding are zero."""
    B, N, T, K = q.shape
    w = one_sided
    if T % w:
        raise ValueError(f"sequence length {T} is not a multiple of the one-sided window {w}")
    nb, scale = T // w, 1.0 / math.sqrt(K)
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 at least (transformers' too)
    neg = torch.finfo(acc).min
    keep = code != PAD
    index, valid, G = _global_index(code)
    # Local scores: the queries of block b (w of them) against keys in blocks b-1, b, b+1 (3w, zero-padded ends).
    qb = (q * scale).view(B, N, nb, w, K)
    kw = F.pad(k, (0, 0, w, w)).unfold(2, 3 * w, w)  # (B, N, nb, K, 3w)
    vw = F.pad(v, (0, 0, w, w)).unfold(2, 3 * w, w).transpose(-1, -2)  # (B, N, nb, 3w, K)
    scores = (qb @ kw).to(acc)  # (B, N, nb, w, 3w)
    r = torch.arange(w, device=q.device)[:, None]
    c = torch.arange(3 * w, device=q.device)[None, :]
    band = (c - r >= 0) & (c - r <= 2 * w)  # key c of the 3 blocks is within w of query r of the middle one
    local_key = F.pad(code == LOCAL, (w, w), value=False).unfold(
        1, 3 * w, w
    )  # (B, nb, 3w): global keys come below
    scores = scores.masked_fill(~(band & local_key[:, None, :, None, :]), neg)
    if G:  # every query against the global keys (ordinary projections)
        kg, vg = _take(k, index), _take(v, index)  # (B, N, G, K)
        sg = ((q * scale) @ kg.transpose(-1, -2)).to(acc).view(B, N, nb, w, G)
        sg = sg.masked_fill(~valid[:, None, None, None, :], neg)
        scores = torch.cat([sg, scores], dim=-1)  # (B, N, nb, w, G + 3w)
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    probs = probs.masked_fill(~keep.view(B, 1, nb, w, 1), 0.0)  # padding attends to nothing
    probs = F.dropout(probs, p=dropout, training=training)
    out = probs[..., G:] @ vw  # (B, N, nb, w, K)
    if G:
        out = out + probs[..., :G] @ vg[:, :, None]
    out = out.reshape(B, N, T, K)
    if G:  # the global rows: their own projections, against every key that is not padding
        assert global_qkv is not None, "global tokens need the global projections"
        gq, gk, gv = global_qkv
        qg = _take(gq, index) * scale  # (B, N, G, K)
        s = (qg @ gk.transpose(-1, -2)).to(acc).masked_fill(~keep[:, None, None, :], neg)  # (B, N, G, T)
        p = F.dropout(torch.softmax(s, dim=-1).to(q.dtype), p=dropout, training=training)
        og = p @ gv  # (B, N, G, K)
        rows = torch.zeros_like(out).scatter(2, index[:, None, :, None].expand(B, N, G, K), og)
        out = torch.where((code == GLOBAL)[:, None, :, None], rows, out)
    return out


class LongformerSelfAttention(nn.Module):
    """Projections (local `qkv` fused, `global_qkv` fused, `out`) around `sliding_window_attention`."""

    def __init__(self, hidden: int, heads: int, window: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.one_sided, self.dropout = heads, window // 2, dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.global_qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, 3 N K) -> q, k, v each (B, N, T, K)."""
        B, T, three_h = x.shape
        K = three_h // 3 // self.heads
        q, k, v = (t.view(B, T, self.heads, K).transpose(1, 2) for t in x.chunk(3, dim=-1))
        return q, k, v

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.qkv(h))
        glob = self._split(self.global_qkv(h)) if bool((code == GLOBAL).any()) else None
        out = sliding_window_attention(
            q,
            k,
            v,
            code,
            self.one_sided,
            glob,
            self.dropout,
            self.training,
        )
        B, N, T, K = out.shape
        return self.out(out.transpose(1, 2).reshape(B, T, N * K))


class LongformerEmbeddings(BertEmbeddings):
    """RoBERTa's embeddings with transformers' position ids: the running count of non-pad tokens after the pad id."""

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        pad = self.word_embeddings.padding_idx
        assert pad is not None
        real = input_ids.ne(pad).long()
        return torch.cumsum(real, dim=1) * real + pad  # (B, T)


class LongformerForPretraining(BertForPretraining):
    """RoBERTa's encoder and MLM head with Longformer attention in every block (BertLayer with its `attention`
    replaced), the embeddings' positions counted over non-pad tokens, and the sequence padded to the windows."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.bert.embeddings = LongformerEmbeddings(cfg)
        for block, window in zip(self.bert.encoder.layer, layer_windows(cfg), strict=True):
            assert isinstance(block, BertLayer)
            block.attention = LongformerSelfAttention(  # type: ignore[assignment]
                cfg.hidden_size, cfg.num_heads, window, cfg.attention_dropout
            )
        self.multiple = pad_multiple(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) hidden states, the padding to the windows added and removed here."""
        T = input_ids.shape[1]
        for name, m in (("attention_mask", attention_mask), ("global_attention_mask", global_attention_mask)):
            if m is not None and m.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(m.shape)} but input_ids {tuple(input_ids.shape)}: one flag per token "
                    "(a global token beyond the sequence, or a mask of another batch)"
                )
        code = attention_codes(attention_mask, global_attention_mask, input_ids)
        extra = (-T) % self.multiple
        if extra:
            input_ids = F.pad(input_ids, (0, extra), value=self.config.pad_token_id)
            code = F.pad(code, (0, extra), value=PAD)
            if token_type_ids is not None:
                token_type_ids = F.pad(token_type_ids, (0, extra), value=0)
        assert self.bert.embeddings is not None
        h = self.bert.embeddings(input_ids, token_type_ids)
        enc = self.bert.encoder
        blocks = [enc.layer[i] for i in range(enc.num_layers)]
        h = run_blocks(
            blocks,
            h,
            code,
            checkpoint_every=enc.checkpoint_every,
            enabled=enc.checkpointing and self.training,
        )
        return h[:, :T]

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) for a fine-tuning head: global attention on the first token ([CLS]), as transformers'
        LongformerForSequenceClassification sets it when none is given."""
        glob = torch.zeros_like(input_ids)
        glob[:, 0] = 1
        return self.hidden(input_ids, attention_mask, glob, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
    ) -> MLMOutput:
        h = self.hidden(input_ids, attention_mask, global_attention_mask, token_type_ids)
        if labels is None:
            return MLMOutput(self.mlm_logits(h), None, h)  # (B, T, V)
        selected, targets, _ = select_labelled(h, labels)
        return MLMOutput(self.mlm_logits(selected), targets, h)


# ---- registration ----------------------------------------------------------------------------------------------


def _configure(cfg: ModelConfig) -> None:
    """RoBERTa's positions (after the pad id) and one token type."""
    cfg.position_offset = cfg.pad_token_id + 1
    cfg.type_vocab_size = 1


def _check(cfg: ModelConfig) -> None:
    check_standard_ffn(cfg)
    check_windows(cfg)


def longformer_config(cfg: ModelConfig) -> Any:
    return hf._transformers().LongformerConfig(
        attention_window=layer_windows(cfg),
        max_position_embeddings=cfg.max_position_embeddings + cfg.position_offset,
        **hf.encoder_kwargs(cfg),
    )


def longformer_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    cfg = hf.roberta_from_hf(raw, path)
    cfg.family = "longformer"
    w = raw.get("attention_window", 512)
    cfg.attention_window = list(w) if isinstance(w, list) else [int(w)]
    return cfg


_LAYER = "longformer.encoder.layer.*."
LONGFORMER_HF = HFAdapter(
    parts=(
        HFPart(
            "LongformerForMaskedLM",
            longformer_config,
            rename=tuple(
                (ours, theirs.replace("roberta.", "longformer.", 1)) for ours, theirs in ROBERTA_RENAME
            ),
            fuse=(
                *(
                    (ours, tuple(t.replace("roberta.", "longformer.", 1) for t in theirs))
                    for ours, theirs in ROBERTA_LAYER_FUSE
                ),
                (
                    "bert.encoder.layer.*.attention.global_qkv.",
                    tuple(_LAYER + f"attention.self.{n}_global." for n in ("query", "key", "value")),
                ),
            ),
            drop=ENCODER_DROP,
            tied={
                "lm_head.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "lm_head.decoder.bias": "cls.predictions.bias",
            },
        ),
    ),
    model_type="longformer",
    from_hf_config=longformer_from_hf,
    bare_prefix="longformer.",
)

register_family(
    FamilySpec(
        name="longformer",
        build=LongformerForPretraining,
        objectives=("mlm", "wwm", "span", "tokens"),
        param_count=flops.longformer_params,
        flops_per_token=flops.longformer_flops,
        check_config=_check,
        configure=_configure,
        hf=LONGFORMER_HF,
        presets={
            # allenai/longformer-base-4096: RoBERTa-base's shape, 4096 positions, window 512 in every layer
            "longformer_base_4096": {
                **PRESETS["roberta_base"],
                "family": "longformer",
                "max_position_embeddings": 4096,
                "attention_window": [512],
            },
        },
    )
)
