"""BART: post-LN encoder-decoder with learned positions (offset 2), GELU, LayerNorm on the embeddings, and an LM
head tied to the shared embeddings (+ a final logits bias).

References: facebookresearch/fairseq fairseq/models/bart/model.py (on fairseq/models/transformer, the original) and
huggingface/transformers src/transformers/models/bart/modeling_bart.py (BartForConditionalGeneration: our names and
the logits the tests compare against). Special ids are carried, not derived: `bos_token_id`, `pad_token_id` and
`eos_token_id` come from the dataset's manifest (cloze: <pad> 0, <s> 2, </s> 3) or from an imported config
(fairseq / transformers: <s> 0, <pad> 1, </s> 2); </s> is the decoder's start token, as in fairseq.

Shapes: B batch, S encoder length, T decoder length, D model width, V vocabulary.
Names equal transformers' BartForConditionalGeneration (model.shared, model.encoder.layers.i.self_attn.q_proj...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import flops, hf
from .config import ModelConfig
from .encoder import TiedEmbedding
from .layers import activation_fn, init_bert_weights, run_blocks
from .registry import FamilySpec, register_family
from .t5 import Seq2SeqOutput, additive_mask

POSITION_OFFSET = 2  # fairseq's learned positions start at 2 (padding_idx + 1)


class BartAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_heads, D // cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D) for _ in range(4))
        self.dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, Tq, D = x.shape
        Tk = kv.shape[1]
        q = self.q_proj(x).view(B, Tq, self.heads, self.head_dim).transpose(1, 2)  # (B, N, Tq, K)
        k = self.k_proj(kv).view(B, Tk, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv).view(B, Tk, self.heads, self.head_dim).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(ctx.transpose(1, 2).reshape(B, Tq, D))


class BartLayer(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); [decoder: x = LN(x + cross(x, enc))]; x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig, is_decoder: bool) -> None:
        super().__init__()
        D, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.self_attn = BartAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(D, eps=eps)
        self.encoder_attn = BartAttention(cfg) if is_decoder else None
        self.encoder_attn_layer_norm = nn.LayerNorm(D, eps=eps) if is_decoder else None
        self.fc1 = nn.Linear(D, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, D)
        self.final_layer_norm = nn.LayerNorm(D, eps=eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.act = activation_fn(cfg.activation)

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        enc: torch.Tensor | None,
        enc_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.self_attn_layer_norm(h + self.dropout(self.self_attn(h, h, mask)))
        if self.encoder_attn is not None and self.encoder_attn_layer_norm is not None:
            assert enc is not None
            h = self.encoder_attn_layer_norm(h + self.dropout(self.encoder_attn(h, enc, enc_mask)))
        return self.final_layer_norm(h + self.dropout(self.fc2(self.dropout(self.act(self.fc1(h))))))


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
    ) -> torch.Tensor:
        B, T = ids.shape
        positions = torch.arange(POSITION_OFFSET, T + POSITION_OFFSET, device=ids.device)
        h = self.embed_tokens(ids) + self.embed_positions(positions)  # (B, T, D)
        h = self.dropout(self.layernorm_embedding(h))
        needs_mask = self.is_decoder or keep is not None
        mask = additive_mask(keep, B, T, T, self.is_decoder, ids.device, h.dtype) if needs_mask else None
        enc_mask = None
        if self.is_decoder and enc_keep is not None and enc is not None:
            enc_mask = additive_mask(enc_keep, B, T, enc.shape[1], False, ids.device, h.dtype)
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
        enc = self.model.encoder(input_ids, attention_mask)  # (B, S, D)
        dec = self.model.decoder(decoder_input_ids, None, enc, attention_mask)  # (B, T, D)
        logits = self.model.shared(dec, project=True) + self.final_logits_bias  # tied head: (B, T, V)
        return Seq2SeqOutput(logits, enc)


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
        hf=hf.BART_HF,
    )
)
