"""BART: post-LN encoder-decoder with learned positions (offset 2), GELU, LayerNorm on the embeddings, and an LM
head tied to the shared embeddings (+ a final logits bias).

References: facebookresearch/fairseq fairseq/models/bart/model.py (on fairseq/models/transformer, the original) and
huggingface/transformers src/transformers/models/bart/modeling_bart.py (BartForConditionalGeneration: our names and
the logits the tests compare against). Special ids are carried, not derived: `bos_token_id`, `pad_token_id` and
`eos_token_id` come from the dataset's manifest (cloze: <pad> 0, <s> 2, </s> 3) or from an imported config
(fairseq / transformers: <s> 0, <pad> 1, </s> 2); </s> is the decoder's start token, as in fairseq.

Shapes: B batch, S encoder length, T decoder length, D model width, V vocabulary.
Blocks are modeling/layers.py's `Attention` (fused qkv; cross-attention q + fused kv) and `FeedForward`; the adapter
at the bottom maps them onto transformers' BartForConditionalGeneration (model.encoder.layers.i.self_attn.q_proj...).
"""

from __future__ import annotations

import torch
from torch import nn

from . import flops, hf
from .config import ModelConfig
from .encoder import TiedEmbedding
from .layers import (
    Attention,
    FeedForward,
    activation_fn,
    init_bert_weights,
    lookup_pair,
    run_blocks,
    sdpa_mask,
)
from .registry import FamilySpec, HFAdapter, HFPart, register_family
from .t5 import Seq2SeqOutput

POSITION_OFFSET = 2  # fairseq's learned positions start at 2 (padding_idx + 1)


class BartLayer(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); [decoder: x = LN(x + cross(x, enc))]; x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig, is_decoder: bool) -> None:
        super().__init__()
        D, N, eps, p = cfg.hidden_size, cfg.num_heads, cfg.layer_norm_eps, cfg.attention_dropout
        self.self_attn = Attention(D, N, dropout=p, causal=is_decoder)
        self.self_attn_norm = nn.LayerNorm(D, eps=eps)
        self.cross_attn = Attention(D, N, dropout=p, cross=True) if is_decoder else None
        self.cross_attn_norm = nn.LayerNorm(D, eps=eps) if is_decoder else None
        act = activation_fn(cfg.activation)
        self.ffn = FeedForward(
            D, cfg.intermediate_size, act, cfg.hidden_dropout, inner_dropout=cfg.hidden_dropout
        )
        self.ffn_norm = nn.LayerNorm(D, eps=eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        enc: torch.Tensor | None,
        enc_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.self_attn_norm(h + self.dropout(self.self_attn(h, mask)))  # (B, T, D)
        if self.cross_attn is not None and self.cross_attn_norm is not None:
            assert enc is not None
            h = self.cross_attn_norm(h + self.dropout(self.cross_attn(h, enc_mask, enc)))
        return self.ffn_norm(h + self.ffn(h))


class BartStack(nn.Module):
    def __init__(self, cfg: ModelConfig, is_decoder: bool, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + POSITION_OFFSET, cfg.hidden_size)
        layers = cfg.decoder_layers if is_decoder else cfg.num_layers
        self.layers = nn.ModuleList(BartLayer(cfg, is_decoder) for _ in range(layers))
        self.layernorm_embedding = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.checkpointing = cfg.activation_checkpointing
        self.checkpoint_every = cfg.checkpoint_every

    def forward(
        self,
        ids: torch.Tensor,
        keep: torch.Tensor | None,
        enc: torch.Tensor | None = None,
        enc_keep: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeds: (B, T, D) = embed_tokens(ids) when the caller looked them up already (`BartForPretraining`)."""
        T = ids.shape[1]
        positions = torch.arange(POSITION_OFFSET, T + POSITION_OFFSET, device=ids.device)
        tokens = self.embed_tokens(ids) if embeds is None else embeds
        h = tokens + self.embed_positions(positions)  # (B, T, D)
        h = self.dropout(self.layernorm_embedding(h))
        mask = sdpa_mask(keep, T, self.is_decoder, h.dtype)  # None (decoder: is_causal) or (B, 1, 1, T)
        enc_mask = sdpa_mask(enc_keep, T, False, h.dtype) if self.is_decoder else None  # (B, 1, 1, S)
        return run_blocks(
            list(self.layers),
            h,
            mask,
            enc,
            enc_mask,
            checkpoint_every=self.checkpoint_every,
            enabled=self.checkpointing and self.training,
        )


class BartModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.shared = TiedEmbedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.encoder = BartStack(cfg, False, self.shared)
        self.decoder = BartStack(cfg, True, self.shared)


class BartForPretraining(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = BartModel(cfg)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        # One lookup of both id tensors with a sparse gradient (the tied head below always runs): the shared
        # table's gradient is the head's dense one plus these rows, not two more zero-filled V x D tensors and sums.
        enc_e, dec_e = lookup_pair(self.model.shared, input_ids, decoder_input_ids, sparse_grad=True)
        enc = self.model.encoder(input_ids, attention_mask, embeds=enc_e)  # (B, S, D)
        dec = self.model.decoder(decoder_input_ids, None, enc, attention_mask, embeds=dec_e)  # (B, T, D)
        logits = self.model.shared(dec, project=True) + self.final_logits_bias  # tied head: (B, T, V)
        return Seq2SeqOutput(logits, enc)


# ---- transformers adapter: BartForConditionalGeneration (modeling/hf.py applies the tables) ------------------------

_OURS, _THEIRS = "model.*.layers.*.", "model.*.layers.*."
BART_HF = HFAdapter(
    parts=(
        HFPart(
            "BartForConditionalGeneration",
            hf.bart_config,
            rename=(
                (_OURS + "self_attn.out.", _THEIRS + "self_attn.out_proj."),
                (_OURS + "self_attn_norm.", _THEIRS + "self_attn_layer_norm."),
                (_OURS + "cross_attn.q.", _THEIRS + "encoder_attn.q_proj."),
                (_OURS + "cross_attn.out.", _THEIRS + "encoder_attn.out_proj."),
                (_OURS + "cross_attn_norm.", _THEIRS + "encoder_attn_layer_norm."),
                (_OURS + "ffn.up.", _THEIRS + "fc1."),
                (_OURS + "ffn.down.", _THEIRS + "fc2."),
                (_OURS + "ffn_norm.", _THEIRS + "final_layer_norm."),
            ),
            fuse=(
                (_OURS + "self_attn.qkv.", tuple(_THEIRS + f"self_attn.{n}_proj." for n in "qkv")),
                (_OURS + "cross_attn.kv.", tuple(_THEIRS + f"encoder_attn.{n}_proj." for n in "kv")),
            ),
            tied={"lm_head.weight": "model.shared.weight"},
        ),
    ),
    model_type="bart",
    from_hf_config=hf.bart_from_hf,
)

register_family(
    FamilySpec(
        name="bart",
        build=BartForPretraining,
        objectives=("bart",),
        param_count=flops.bart_params,
        flops_per_token=flops.bart_flops,
        framing="bart",
        seq2seq=True,
        decoder_start="eos",
        hf=BART_HF,
    )
)
