"""XLM (Lample & Conneau 2019, cross-lingual language model pretraining): an MLM / TLM encoder with language
embeddings.

References: facebookresearch/XLM xlm/model/transformer.py (`TransformerModel.fwd` as an encoder, non-causal:
embeddings + positions + languages -> layer_norm_emb -> dropout -> x padding mask; each layer post-LN attention ->
layer_norm1 -> FFN (lin1, GELU, lin2) -> layer_norm2 -> x padding mask; `PredLayer.proj` tied to the word
embeddings, with a bias), and its port whose names and logits the tests compare against, huggingface/transformers
src/transformers/models/xlm/modeling_xlm.py (`XLMModel`, `XLMWithLMHeadModel`, `XLMPredLayer`).

Shapes: B batch, T sequence length, H hidden size, M masked positions in the batch, V vocabulary.

Inputs beyond the encoders': `langs` (B, T), one language id per token (`model.languages` gives the id order; TLM
puts a sentence and its translation, each with its own language, in one row), and `position_ids` (B, T) (TLM restarts
positions at the second sentence; default 0..T-1). Without `langs`, no language embedding is added, as in the
reference and transformers (with one language there is no table at all). Without an attention mask, the first
(number of non-pad tokens) positions of each row are kept, as the reference's `lengths`.

Where the references differ from each other: transformers adds `token_type_ids` through the word embeddings; the
reference has no token types and neither do we. The reference initialises Linear layers with PyTorch's default,
transformers with N(0, init_std); we use N(0, model.initializer_range) (zero biases) and, as both do for the
embedding tables, N(0, H^-0.5) with a zero pad row. The FFN is always 4 x H wide (`hidden_dim = dim * 4` in both).

Blocks are cloze's post-LN `BertLayer` (modeling/encoder.py: fused-qkv `Attention` over SDPA, `FeedForward`); the
adapter at the bottom splits and renames them onto XLMWithLMHeadModel (`transformer.attentions.i.q_lin`, ...).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from . import flops, hf
from .config import ModelConfig, ModelConfigError
from .encoder import BertLayer, MLMOutput, TiedEmbedding, run_last_at, select_labelled
from .layers import QueryRows, init_bert_weights, sdpa_mask
from .registry import FamilySpec, HFAdapter, HFPart, register_family


class XLMLayer(BertLayer):
    """A post-LN block followed by the reference's `tensor *= mask` (padded positions are zeroed after each
    layer)."""

    def forward(  # type: ignore[override]
        self, h: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor | None
    ) -> torch.Tensor:
        h = super().forward(h, mask)  # (B, T, H)
        return h if keep is None else h * keep


class XLMModel(nn.Module):
    """Embeddings (words + positions + languages) -> LayerNorm -> dropout -> blocks, padding zeroed throughout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.pad_token_id = cfg.pad_token_id
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, H)
        self.lang_embeddings = nn.Embedding(cfg.n_langs, H) if cfg.n_langs > 1 else None
        self.embeddings = TiedEmbedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)
        self.layer_norm_emb = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(XLMLayer(cfg) for _ in range(cfg.num_layers))
        self.checkpointing = cfg.activation_checkpointing and cfg.checkpoint_mode == "full"
        self.checkpoint_every = cfg.checkpoint_every
        if cfg.activation_checkpointing and cfg.checkpoint_mode == "attention":
            for block in self.layers:
                cast(XLMLayer, block).checkpoint_attention = True

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        langs: torch.Tensor | None = None,
        q: QueryRows | None = None,
    ) -> torch.Tensor:
        """(B, T, H); with q, the last block at q's positions only (M, H), which must not be padding (labelled
        positions never are): the block's `* keep` is 1 there."""
        B, T = input_ids.shape
        if attention_mask is None:  # the reference's lengths: the non-pad tokens, counted from the left
            lengths = (input_ids != self.pad_token_id).sum(1)  # (B,)
            attention_mask = (torch.arange(T, device=input_ids.device)[None] < lengths[:, None]).long()
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)  # (T,) over B
        h = self.embeddings(input_ids) + self.position_embeddings(position_ids)  # (B, T, H)
        if langs is not None and self.lang_embeddings is not None:
            h = h + self.lang_embeddings(langs)
        keep = attention_mask[:, :, None].to(h.dtype)  # (B, T, 1)
        h = self.dropout(self.layer_norm_emb(h)) * keep
        mask = sdpa_mask(attention_mask, T, False, h.dtype)  # (B, 1, 1, T)
        return run_last_at(
            list(self.layers),
            h,
            mask,
            q,
            keep,
            checkpoint_every=self.checkpoint_every,
            enabled=self.checkpointing and self.training,
        )


class XLMPredLayer(nn.Module):
    """The reference's `PredLayer` (no adaptive softmax): `proj` = the word embeddings (tied) + this bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: TiedEmbedding) -> torch.Tensor:
        return embedding(h, project=True) + self.bias  # (..., V)


class XLMForPretraining(nn.Module):
    """XLM encoder + tied prediction layer, run at the labelled positions only (as the reference's `predict`, which
    scores the masked positions)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = XLMModel(cfg)
        self.pred_layer = XLMPredLayer(cfg)
        self.init_weights()

    def init_weights(self) -> None:
        """Linear N(0, initializer_range) with zero biases, unit LayerNorms (transformers' `init_std`); embedding
        tables N(0, H^-0.5) with a zero pad row (the reference's `Embedding`, transformers' `embed_init_std`)."""
        self.apply(lambda m: init_bert_weights(m, self.config.initializer_range))
        std = self.config.hidden_size**-0.5
        for m in self.transformer.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.pred_layer(h, self.transformer.embeddings)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) for a fine-tuning head. XLM has no token types (ignored) and here no language ids: no language
        embedding is added, as transformers' XLM classes do when called without `langs`."""
        return self.transformer(input_ids, attention_mask)

    def mlm_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, V) masked-LM logits (pseudo-perplexity); no token types, no language ids."""
        return self.forward(input_ids, attention_mask=attention_mask).logits

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        langs: torch.Tensor | None = None,
    ) -> MLMOutput:
        if labels is not None and self.config.last_layer_at_labels:
            q = QueryRows.of(labels != -100)
            h = self.transformer(input_ids, attention_mask, position_ids, langs, q)  # (M, H)
            return MLMOutput(self.mlm_logits(h), q.take(labels))  # (M, V), (M,)
        h = self.transformer(input_ids, attention_mask, position_ids, langs)  # (B, T, H)
        if labels is None:
            return MLMOutput(self.mlm_logits(h), None, h)  # (B, T, V)
        selected, targets, _ = select_labelled(h, labels)  # (M, H), (M,)
        return MLMOutput(self.mlm_logits(selected), targets, h)  # (M, V), (M,)


# ---- registration ----------------------------------------------------------------------------------------------


def check_xlm_config(cfg: ModelConfig) -> None:
    """What the reference's TransformerModel can be: an FFN 4 x H wide with GELU (erf) or ReLU, positions from 0,
    embeddings as wide as the model."""
    if cfg.activation not in ("gelu", "relu"):
        raise ModelConfigError(
            f"model.activation={cfg.activation!r}: XLM's feed-forward is 'gelu' (exact erf) or 'relu' "
            "(the reference's gelu_activation)"
        )
    if not cfg.gated_ffn:
        raise ModelConfigError("model.gated_ffn=false applies to model.family='t5' only: remove the key")
    if cfg.intermediate_size != 4 * cfg.hidden_size:
        raise ModelConfigError(
            f"model.intermediate_size={cfg.intermediate_size}: XLM's feed-forward is 4 x hidden_size = "
            f"{4 * cfg.hidden_size} wide (the reference's hidden_dim = dim * 4)"
        )
    if cfg.embedding_size not in (0, cfg.hidden_size) or cfg.position_offset or cfg.share_layers:
        raise ModelConfigError(
            "model.family='xlm' has no embedding_size, position_offset or share_layers: remove those keys"
        )


def _configure(cfg: ModelConfig) -> None:
    """XLM has no sentence-pair head (TLM puts the pair in one row, told apart by `langs` and `position_ids`)."""
    if cfg.sentence_head:
        raise ModelConfigError(
            "model.family='xlm' has no sentence-order / next-sentence head; write the shards without "
            "--sentence-task"
        )


def xlm_config(cfg: ModelConfig) -> Any:
    """transformers' XLMConfig of the same model: an MLM encoder (causal=False, no adaptive softmax, learned
    positions, GELU), language embeddings, the special ids of cloze's tokenizer."""
    langs = list(cfg.languages)
    return hf._transformers().XLMConfig(
        vocab_size=cfg.vocab_size,
        emb_dim=cfg.hidden_size,
        n_layers=cfg.num_layers,
        n_heads=cfg.num_heads,
        dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        gelu_activation=cfg.activation == "gelu",
        sinusoidal_embeddings=False,
        causal=False,
        asm=False,
        n_langs=cfg.n_langs,
        use_lang_emb=True,
        lang2id={name: i for i, name in enumerate(langs)} if langs else None,
        id2lang=dict(enumerate(langs)) if langs else None,
        lang_id=0,
        max_position_embeddings=cfg.max_position_embeddings,
        embed_init_std=cfg.hidden_size**-0.5,
        init_std=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        is_encoder=True,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        unk_index=cfg.unk_token_id,
        mask_index=cfg.mask_token_id,
        mask_token_id=cfg.mask_token_id,
    )


def xlm_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    """Our config of an XLM config.json (an MLM/TLM encoder: not causal, no adaptive softmax)."""
    where = f"{path}/config.json"
    for key, ok in (("causal", False), ("asm", False), ("is_encoder", True)):
        if raw.get(key, ok) != ok:
            raise hf.ExportError(
                f"{where}: {key}={raw[key]!r}; cloze's XLM is an encoder (causal=false, asm=false)"
            )
    n_langs = int(raw.get("n_langs", 1))
    if n_langs > 1 and not raw.get("use_lang_emb", True):
        raise hf.ExportError(f"{where}: use_lang_emb=false with {n_langs} languages is not supported")
    id2lang = raw.get("id2lang") or {}
    languages = (
        [str(id2lang.get(str(i), id2lang.get(i, f"lang{i}"))) for i in range(n_langs)] if n_langs > 1 else []
    )
    if n_langs == 1 and len(id2lang) == 1:
        languages = [str(next(iter(id2lang.values())))]
    H = raw.get("emb_dim", 2048)
    return ModelConfig(
        family="xlm",
        vocab_size=raw.get("vocab_size", raw.get("n_words", 30145)),
        hidden_size=H,
        num_layers=raw.get("n_layers", 12),
        num_heads=raw.get("n_heads", 16),
        intermediate_size=4 * H,
        max_position_embeddings=raw.get("max_position_embeddings", 512),
        hidden_dropout=raw.get("dropout", 0.1),
        attention_dropout=raw.get("attention_dropout", 0.1),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
        initializer_range=raw.get("init_std", 0.02),
        activation="gelu" if raw.get("gelu_activation", True) else "relu",
        languages=languages,
        pad_token_id=raw.get("pad_token_id", raw.get("pad_index", 2)),
        bos_token_id=raw.get("bos_token_id", raw.get("bos_index", 0)),
        eos_token_id=raw.get("eos_token_id", raw.get("eos_index", 1)),
        unk_token_id=raw.get("unk_index", 3),
        mask_token_id=raw.get("mask_index", 5),
    )


# ---- transformers adapter: XLMWithLMHeadModel (transformer.attentions.i.{q,k,v,out}_lin, layer_norm1.i, ffns.i.lin1
# / lin2, layer_norm2.i; pred_layer.proj tied to transformer.embeddings); modeling/hf.py applies the tables.

_OURS = "transformer.layers.*."
XLM_HF = HFAdapter(
    parts=(
        HFPart(
            "XLMWithLMHeadModel",
            xlm_config,
            rename=(
                (_OURS + "attention.out.", "transformer.attentions.*.out_lin."),
                (_OURS + "attention_norm.", "transformer.layer_norm1.*."),
                (_OURS + "ffn.up.", "transformer.ffns.*.lin1."),
                (_OURS + "ffn.down.", "transformer.ffns.*.lin2."),
                (_OURS + "ffn_norm.", "transformer.layer_norm2.*."),
                ("pred_layer.bias", "pred_layer.proj.bias"),
            ),
            fuse=(
                (
                    _OURS + "attention.qkv.",
                    tuple(f"transformer.attentions.*.{n}_lin." for n in "qkv"),
                ),
            ),
            tied={"pred_layer.proj.weight": "transformer.embeddings.weight"},
        ),
    ),
    model_type="xlm",
    from_hf_config=xlm_from_hf,
    bare_prefix="transformer.",
)

register_family(
    FamilySpec(
        name="xlm",
        build=XLMForPretraining,
        # "tlm": translation LM shards (sentence pairs, langs, restarting position_ids), written by the data pipeline
        objectives=("mlm", "wwm", "span", "tokens", "tlm"),
        param_count=flops.xlm_params,
        flops_per_token=flops.xlm_flops,
        check_config=check_xlm_config,
        configure=_configure,
        languages=True,
        hf=XLM_HF,
    )
)
