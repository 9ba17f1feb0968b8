"""BERT-family encoders (BERT, RoBERTa, ALBERT) with a sparse masked-language-modelling head.

Read top to bottom: embeddings -> blocks -> encoder -> MLM head -> the pretraining model.
Shapes: B batch, T sequence length, H hidden size, E embedding size, M masked positions in the batch, V vocabulary.
Blocks are built from modeling/layers.py's `Attention` (one fused qkv projection) and `FeedForward`; the adapters at
the bottom of this file split and rename them onto transformers' BertForMaskedLM, RobertaForMaskedLM and
AlbertForMaskedLM at export / import (modeling/hf.py).

    BERT     post-LN blocks, learned positions, 2 token types
    RoBERTa  the same blocks; one token type; position ids offset by pad + 1
    XLM-R    RoBERTa (family 'xlm_roberta'), exported as XLMRobertaForMaskedLM
    ALBERT   embeddings of width E projected to H; one block's weights shared by every layer; gelu_tanh
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import flops, hf
from .config import ModelConfig
from .layers import (
    Attention,
    FeedForward,
    QueryRows,
    activation_fn,
    init_bert_weights,
    run_blocks,
    sdpa_mask,
)
from .registry import FamilySpec, HFAdapter, HFPart, register_family


class TiedEmbedding(nn.Embedding):
    """Token embedding that also projects hidden states onto the vocabulary (the tied MLM decoder).

    Both uses go through the module's call, so parameter-partitioning wrappers (ZeRO-3) see the weight used.

    `sparse_grad=True`, for a lookup whose model also runs the tied head in the same step (the pretraining
    forwards): the lookup's gradient is the rows it read (sparse), which autograd adds into the head's dense V x E
    gradient, instead of a second dense V x E gradient (zero-filled, rows added) and a full V x E sum of the two.
    Never for a lookup without the head (fine-tuning): the weight's gradient would be sparse alone, which fused
    AdamW refuses.
    """

    def forward(self, x: torch.Tensor, project: bool = False, sparse_grad: bool = False) -> torch.Tensor:
        if project:
            return F.linear(x, self.weight)
        return F.embedding(
            x,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            sparse_grad or self.sparse,
        )


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E = cfg.emb_size
        self.offset = cfg.position_offset
        self.word_embeddings = TiedEmbedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings + cfg.position_offset, E)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size > 0 else None
        self.LayerNorm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) positions offset..offset+T-1 for every row (a subclass may return (B, T))."""
        T = input_ids.shape[1]
        return torch.arange(self.offset, T + self.offset, device=input_ids.device)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, sparse_grad: bool = False
    ) -> torch.Tensor:
        """sparse_grad: the word lookup's gradient sparse (`TiedEmbedding`; only when the tied head also runs)."""
        T = input_ids.shape[1]
        positions = self.position_ids(input_ids)
        h = self.word_embeddings(input_ids, sparse_grad=sparse_grad) + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(T, dtype=torch.long, device=input_ids.device)  # (T,) over B
            h = h + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(h))


class BertLayer(nn.Module):
    """One transformer block: post-LN (BERT) or pre-LN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.pre_ln = cfg.pre_layer_norm
        self.attention = Attention(H, cfg.num_heads, dropout=cfg.attention_dropout)
        self.attention_norm = nn.LayerNorm(H, eps=eps)
        self.ffn = FeedForward(H, cfg.intermediate_size, activation_fn(cfg.activation), cfg.hidden_dropout)
        self.ffn_norm = nn.LayerNorm(H, eps=eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.checkpoint_attention = False  # set by the encoder for selective checkpointing

    def attend(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.checkpoint_attention and self.training:
            return checkpoint(self.attention, h, mask, use_reentrant=False)
        return self.attention(h, mask)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            h = h + self.dropout(self.attend(self.attention_norm(h), mask))
            return h + self.ffn(self.ffn_norm(h))
        h = self.attention_norm(h + self.dropout(self.attend(h, mask)))  # (B, T, H)
        return self.ffn_norm(h + self.ffn(h))

    def forward_at(self, h: torch.Tensor, mask: torch.Tensor | None, q: QueryRows) -> torch.Tensor:
        """forward(h, mask) at the positions `q` only: (M, H). The q/k/v projection reads every position of h (B, T,
        H); the rest of the block (attention rows, output projection, residual, norms, feed-forward) runs on M
        rows."""
        x = self.attention_norm(h) if self.pre_ln else h  # (B, T, H)
        if self.checkpoint_attention and self.training:
            a = checkpoint(self.attention.forward_at, x, q, mask, use_reentrant=False)
        else:
            a = self.attention.forward_at(x, q, mask)  # (M, H)
        r = q.take(h)  # (M, H) the residual at those positions
        if self.pre_ln:
            r = r + self.dropout(a)
            return r + self.ffn(self.ffn_norm(r))
        r = self.attention_norm(r + self.dropout(a))
        return self.ffn_norm(r + self.ffn(r))


def run_last_at(
    blocks: list[nn.Module],
    h: torch.Tensor,
    mask: torch.Tensor | None,
    q: QueryRows | None,
    *extra: object,
    checkpoint_every: int,
    enabled: bool,
) -> torch.Tensor:
    """`run_blocks` over the blocks, the last one at the positions `q` only (`BertLayer.forward_at`, (M, H)) when q
    is given; else every block at every position ((B, T, H))."""
    if q is None:
        return run_blocks(blocks, h, mask, *extra, checkpoint_every=checkpoint_every, enabled=enabled)
    h = run_blocks(blocks[:-1], h, mask, *extra, checkpoint_every=checkpoint_every, enabled=enabled)
    last = cast(BertLayer, blocks[-1])
    if enabled and (len(blocks) - 1) % checkpoint_every == 0:
        return cast(torch.Tensor, checkpoint(last.forward_at, h, mask, q, use_reentrant=False))
    return last.forward_at(h, mask, q)


class BertEncoder(nn.Module):
    """A stack of blocks. With share_layers (ALBERT) `layer` holds one block applied num_layers times."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(1 if cfg.share_layers else cfg.num_layers))
        self.checkpointing = cfg.activation_checkpointing and cfg.checkpoint_mode == "full"
        self.checkpoint_every = cfg.checkpoint_every
        if cfg.activation_checkpointing and cfg.checkpoint_mode == "attention":
            for block in self.layer:
                cast(BertLayer, block).checkpoint_attention = True
        # Pre-LN stacks need a final norm; post-LN stacks end normalised already.
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_layer_norm else None
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None, q: QueryRows | None = None) -> torch.Tensor:
        """(B, T, H) -> (B, T, H); with q, the last block at q's positions only: (M, H)."""
        blocks = [
            self.layer[0 if len(self.layer) == 1 else i] for i in range(self.num_layers)
        ]  # ALBERT: one, shared
        h = run_last_at(
            blocks,
            h,
            mask,
            q,
            checkpoint_every=self.checkpoint_every,
            enabled=self.checkpointing and self.training,
        )
        return self.final_norm(h) if self.final_norm is not None else h


class BertModel(nn.Module):
    """embeddings -> (projection E -> H when they differ) -> blocks.

    `with_embeddings=False` builds the blocks alone, to run over embeddings owned elsewhere (ELECTRA's generator
    and discriminator share one embedding module)."""

    def __init__(self, cfg: ModelConfig, with_embeddings: bool = True) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg) if with_embeddings else None
        self.embeddings_project = (
            nn.Linear(cfg.emb_size, cfg.hidden_size) if cfg.emb_size != cfg.hidden_size else None
        )
        self.encoder = BertEncoder(cfg)

    def encode(
        self, e: torch.Tensor, attention_mask: torch.Tensor | None, q: QueryRows | None = None
    ) -> torch.Tensor:
        """Blocks over embeddings e: (B, T, E) -> (B, T, H); with q, the last block at q's positions: (M, H)."""
        h = self.embeddings_project(e) if self.embeddings_project is not None else e
        return self.encoder(h, sdpa_mask(attention_mask, h.shape[1], False, h.dtype), q)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        sparse_grad: bool = False,
        q: QueryRows | None = None,
    ) -> torch.Tensor:
        """sparse_grad: see `TiedEmbedding` (the pretraining model passes True: its tied head always runs)."""
        assert self.embeddings is not None, "built without embeddings: call encode()"
        e = self.embeddings(input_ids, token_type_ids, sparse_grad=sparse_grad)
        return self.encode(e, attention_mask, q)  # (B, T, H), or (M, H) with q


class PredictionTransform(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.emb_size)
        self.LayerNorm = nn.LayerNorm(cfg.emb_size, eps=cfg.layer_norm_eps)
        self.act = activation_fn(cfg.activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class MLMPredictions(nn.Module):
    """transform (H -> E) -> projection onto the (tied) word embeddings + bias."""

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
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2) if cfg.sentence_head else None


@dataclass
class MLMOutput:
    logits: torch.Tensor
    """(M, V) logits at the positions that carry a label, or (B, T, V) when no labels were given."""
    targets: torch.Tensor | None
    """(M,) the labels at those positions (None without labels)."""
    hidden: torch.Tensor | None = None
    """(B, T, H) the encoder's output."""
    sentence_logits: torch.Tensor | None = None
    """(B, 2) sentence-order / next-sentence logits (models with a sentence head)."""


class Pooler(nn.Module):
    """tanh(dense(h[CLS])) as in BERT's pooler; feeds the SOP / NSP classifier."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.pool(h[:, 0])  # (B, H)

    def pool(self, cls: torch.Tensor) -> torch.Tensor:
        """(B, H) [CLS] states -> (B, H)."""
        return torch.tanh(self.dense(cls))


def select_labelled(h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, H) hidden states and (M,) labels at the positions whose label is not -100, and their flat indices."""
    flat_labels = labels.reshape(-1)  # (B*T,)
    idx = (flat_labels != -100).nonzero().squeeze(1)  # (M,)
    return h.reshape(-1, h.shape[-1]).index_select(0, idx), flat_labels.index_select(0, idx), idx


class BertForPretraining(nn.Module):
    """BERT / RoBERTa / ALBERT encoder + MLM head tied to the input embeddings.

    With labels, the head runs only at the M positions whose label is not -100: the vocabulary projection is
    most of the head's cost, and ~85% of positions carry no label.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.pooler = Pooler(cfg) if cfg.sentence_head else None
        self.cls = MLMHeadContainer(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        assert self.bert.embeddings is not None
        return self.cls.predictions(h, self.bert.embeddings.word_embeddings)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) the encoder's output, what a fine-tuning head reads (modeling/heads.py)."""
        return self.bert(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> MLMOutput:
        if labels is not None and self.config.last_layer_at_labels:
            return self.forward_at_labels(input_ids, labels, attention_mask, token_type_ids)
        h = self.bert(input_ids, attention_mask, token_type_ids, sparse_grad=True)  # (B, T, H); the head runs
        sentence = None
        if self.pooler is not None and self.cls.seq_relationship is not None:
            sentence = self.cls.seq_relationship(self.pooler(h))  # (B, 2)
        if labels is None:
            return MLMOutput(self.mlm_logits(h), None, h, sentence)  # (B, T, V)
        selected, targets, _ = select_labelled(h, labels)  # (M, H), (M,)
        return MLMOutput(self.mlm_logits(selected), targets, h, sentence)  # (M, V), (M,)

    def forward_at_labels(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> MLMOutput:
        """forward() with the last block at the labelled positions (and [CLS] with a sentence head) only
        (`model.last_layer_at_labels`): the same logits, targets and sentence logits; `hidden` is None."""
        T = labels.shape[1]
        at = labels != -100  # (B, T)
        if self.pooler is not None:
            at[:, 0] = True  # (a fresh tensor: `!=` made it)
        q = QueryRows.of(at)
        h = self.bert(input_ids, attention_mask, token_type_ids, sparse_grad=True, q=q)  # (M', H) at q.flat
        flat_labels = q.take(labels)  # (M',)
        if self.pooler is None or self.cls.seq_relationship is None:
            return MLMOutput(self.mlm_logits(h), flat_labels)  # (M, V), (M,)
        first = (q.flat % T == 0).nonzero().squeeze(1)  # (B,) each row's [CLS]
        sentence = self.cls.seq_relationship(self.pooler.pool(h.index_select(0, first)))  # (B, 2)
        keep = (flat_labels != -100).nonzero().squeeze(1)  # (M,)
        return MLMOutput(
            self.mlm_logits(h.index_select(0, keep)), flat_labels.index_select(0, keep), None, sentence
        )


# ---- registration (modeling/registry.py) -------------------------------------------------------------------------

_ENCODER_OBJECTIVES = ("mlm", "wwm", "span", "tokens")


def _roberta_positions(cfg: ModelConfig) -> None:
    """RoBERTa's positions start after the pad id (transformers' create_position_ids_from_input_ids)."""
    cfg.position_offset = cfg.pad_token_id + 1


# ---- transformers adapter: our keys -> transformers' (modeling/hf.py applies the tables) ---------------------------


def bert_layer_names(
    ours: str, theirs: str
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """(renames, fuses) of one `BertLayer` under `ours` onto transformers' BertLayer under `theirs` (BERT, RoBERTa,
    ELECTRA: `attention.self.query`, `attention.output.dense`, `intermediate.dense`, `output.LayerNorm`, ...)."""
    rename = (
        (ours + "attention.out.", theirs + "attention.output.dense."),
        (ours + "attention_norm.", theirs + "attention.output.LayerNorm."),
        (ours + "ffn.up.", theirs + "intermediate.dense."),
        (ours + "ffn.down.", theirs + "output.dense."),
        (ours + "ffn_norm.", theirs + "output.LayerNorm."),
    )
    qkv = tuple(theirs + f"attention.self.{n}." for n in ("query", "key", "value"))
    return rename, ((ours + "attention.qkv.", qkv),)


LAYER = "bert.encoder.layer.*."
BERT_LAYER_RENAME, BERT_LAYER_FUSE = bert_layer_names(LAYER, LAYER)
ROBERTA_LAYER_RENAME, ROBERTA_LAYER_FUSE = bert_layer_names(LAYER, "roberta.encoder.layer.*.")
ROBERTA_RENAME = (
    ("bert.", "roberta."),
    ("cls.predictions.transform.dense.", "lm_head.dense."),
    ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
    ("cls.predictions.bias", "lm_head.bias"),
    *ROBERTA_LAYER_RENAME,
)
ALBERT_LAYER = "albert.encoder.albert_layer_groups.0.albert_layers.0."  # the one shared layer
ALBERT_RENAME = (
    ("bert.embeddings_project.", "albert.encoder.embedding_hidden_mapping_in."),
    ("bert.embeddings.", "albert.embeddings."),
    ("bert.encoder.layer.0.attention.out.", ALBERT_LAYER + "attention.dense."),
    ("bert.encoder.layer.0.attention_norm.", ALBERT_LAYER + "attention.LayerNorm."),
    ("bert.encoder.layer.0.ffn.up.", ALBERT_LAYER + "ffn."),
    ("bert.encoder.layer.0.ffn.down.", ALBERT_LAYER + "ffn_output."),
    ("bert.encoder.layer.0.ffn_norm.", ALBERT_LAYER + "full_layer_layer_norm."),
    ("cls.predictions.transform.dense.", "predictions.dense."),
    ("cls.predictions.transform.LayerNorm.", "predictions.LayerNorm."),
    ("cls.predictions.bias", "predictions.bias"),
)
ALBERT_FUSE = (
    (
        "bert.encoder.layer.0.attention.qkv.",
        tuple(ALBERT_LAYER + f"attention.{n}." for n in ("query", "key", "value")),
    ),
)
# BertForMaskedLM-style exports carry no pooler / sentence classifier (BertForPreTraining would).
ENCODER_DROP = ("pooler.", "cls.seq_relationship.")

BERT_HF = HFAdapter(
    parts=(
        HFPart(
            "BertForMaskedLM",
            hf.bert_config,
            rename=BERT_LAYER_RENAME,
            fuse=BERT_LAYER_FUSE,
            drop=ENCODER_DROP,
            tied={
                "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias",
            },
        ),
    ),
    model_type="bert",
    from_hf_config=hf.bert_from_hf,
    bare_prefix="bert.",
)


def roberta_adapter(
    hf_class: str, config: Callable[[ModelConfig], Any], model_type: str, from_hf: Callable[..., ModelConfig]
) -> HFAdapter:
    """The adapter of a transformers class with RoBERTa's module tree (RobertaForMaskedLM, XLMRobertaForMaskedLM):
    the same key tables under another class name, config and model_type."""
    return HFAdapter(
        parts=(
            HFPart(
                hf_class,
                config,
                rename=ROBERTA_RENAME,
                fuse=ROBERTA_LAYER_FUSE,
                drop=ENCODER_DROP,
                tied={
                    "lm_head.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "lm_head.decoder.bias": "cls.predictions.bias",
                },
            ),
        ),
        model_type=model_type,
        from_hf_config=from_hf,
        bare_prefix="roberta.",
    )


ROBERTA_HF = roberta_adapter("RobertaForMaskedLM", hf.roberta_config, "roberta", hf.roberta_from_hf)
# XLM-R (Conneau et al. 2020; facebookresearch/fairseq examples/xlmr, transformers
# src/transformers/models/xlm_roberta/modeling_xlm_roberta.py): RoBERTa's model over a 250k sentencepiece vocabulary,
# trained with MLM on CC-100 in 100 languages, no language embeddings.
XLM_ROBERTA_HF = roberta_adapter(
    "XLMRobertaForMaskedLM", hf.xlm_roberta_config, "xlm-roberta", hf.xlm_roberta_from_hf
)
ALBERT_HF = HFAdapter(
    parts=(
        HFPart(
            "AlbertForMaskedLM",
            hf.albert_config,
            rename=ALBERT_RENAME,
            fuse=ALBERT_FUSE,
            drop=ENCODER_DROP,
            tied={
                "predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "predictions.decoder.bias": "cls.predictions.bias",
            },
        ),
    ),
    model_type="albert",
    from_hf_config=hf.albert_from_hf,
    bare_prefix="albert.",
)

for _name, _adapter, _configure in (
    ("bert", BERT_HF, None),
    ("roberta", ROBERTA_HF, _roberta_positions),
    ("xlm_roberta", XLM_ROBERTA_HF, _roberta_positions),
    ("albert", ALBERT_HF, None),
):
    register_family(
        FamilySpec(
            name=_name,
            build=BertForPretraining,
            objectives=_ENCODER_OBJECTIVES,
            param_count=flops.encoder_params,
            flops_per_token=flops.encoder_flops,
            configure=_configure,
            hf=_adapter,
        )
    )
