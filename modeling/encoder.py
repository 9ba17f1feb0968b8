"""BERT-family encoder with a sparse masked-language-modelling head.

Read top to bottom: embeddings -> blocks -> encoder -> MLM head -> the pretraining model.
Shapes: B batch, T sequence length, H hidden size, M masked positions in the batch, V vocabulary.
Module and parameter names equal transformers' BertForMaskedLM, so export is a key map (modeling/hf.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .layers import (
    FFNOutput,
    Intermediate,
    MultiHeadSelfAttention,
    activation_fn,
    init_bert_weights,
    padding_mask_to_sdpa,
)


class TiedEmbedding(nn.Embedding):
    """Token embedding that also projects hidden states onto the vocabulary (the tied MLM decoder).

    Both uses go through the module's call, so parameter-partitioning wrappers (ZeRO-3) see the weight used.
    """

    def forward(self, x: torch.Tensor, project: bool = False) -> torch.Tensor:
        return F.linear(x, self.weight) if project else super().forward(x)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = TiedEmbedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size > 0 else None
        )
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, H) + (T, H)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(positions)  # (T,) broadcast over B
            h = h + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(h))


class BertLayer(nn.Module):
    """One transformer block: post-LN (BERT) or pre-LN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_layer_norm
        self.attention = MultiHeadSelfAttention(
            cfg.hidden_size, cfg.num_heads, cfg.attention_dropout, cfg.hidden_dropout, cfg.layer_norm_eps
        )
        self.intermediate = Intermediate(cfg.hidden_size, cfg.intermediate_size)
        self.output = FFNOutput(
            cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout
        )
        self.act = activation_fn(cfg.activation)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dropout(self.output.dense(self.act(self.intermediate.dense(x))))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn_ln, ffn_ln = self.attention.output.LayerNorm, self.output.LayerNorm
        if self.pre_ln:
            h = h + self.attention.attend(attn_ln(h), mask)
            return h + self.ffn(ffn_ln(h))
        h = attn_ln(h + self.attention.attend(h, mask))  # (B, T, H)
        return ffn_ln(h + self.ffn(h))


class BertEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))
        self.checkpointing = cfg.activation_checkpointing
        self.checkpoint_every = cfg.checkpoint_every
        # Pre-LN stacks need a final norm; post-LN stacks end normalised already.
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_layer_norm else None
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            if self.checkpointing and self.training and i % self.checkpoint_every == 0:
                h = checkpoint(layer, h, mask, use_reentrant=False)
            else:
                h = layer(h, mask)
        return self.final_norm(h) if self.final_norm is not None else h


class BertModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = padding_mask_to_sdpa(attention_mask, h.dtype)  # (B, 1, 1, T) or None
        return self.encoder(h, mask)  # (B, T, H)


class PredictionTransform(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = activation_fn(cfg.activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class MLMPredictions(nn.Module):
    """transform -> projection onto the (tied) word embeddings + bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: TiedEmbedding) -> torch.Tensor:
        return embedding(self.transform(h), project=True) + self.bias  # (..., V)


class MLMHeadContainer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.predictions = MLMPredictions(cfg)


@dataclass
class MLMOutput:
    logits: torch.Tensor
    """(M, V) logits at the positions that carry a label, or (B, T, V) when no labels were given."""
    targets: torch.Tensor | None
    """(M,) the labels at those positions (None without labels)."""


class BertForPretraining(nn.Module):
    """BERT encoder + MLM head tied to the input embeddings.

    With labels, the head runs only at the M positions whose label is not -100: the vocabulary projection is
    most of the head's cost, and ~85% of positions carry no label.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.cls = MLMHeadContainer(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.cls.predictions(h, self.bert.embeddings.word_embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> MLMOutput:
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if labels is None:
            return MLMOutput(self.mlm_logits(h), None)  # (B, T, V)
        flat_labels = labels.reshape(-1)  # (B*T,)
        idx = (flat_labels != -100).nonzero().squeeze(1)  # (M,)
        selected = h.reshape(-1, h.shape[-1]).index_select(0, idx)  # (M, H)
        return MLMOutput(self.mlm_logits(selected), flat_labels.index_select(0, idx))  # (M, V), (M,)


def build_encoder(cfg: ModelConfig) -> BertForPretraining:
    return BertForPretraining(cfg)
