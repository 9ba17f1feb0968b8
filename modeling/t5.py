"""T5 (v1.0 and v1.1): RMSNorm (pre-norm), relative position bias (one table per stack, computed once and shared by
its layers), a gated (v1.1: gated-GELU) or plain (v1.0: ReLU) feed-forward, no biases anywhere, an untied (v1.1) or
tied and rescaled (v1.0) LM head; unscaled attention scores.

References: google-research/text-to-text-transfer-transformer (the T5 recipe) on tensorflow/mesh
mesh_tensorflow/transformer/transformer.py + transformer_layers.py (the model), and its port that our names and
numerics are tested against, huggingface/transformers src/transformers/models/t5/modeling_t5.py
(T5ForConditionalGeneration, T5DenseActDense / T5DenseGatedActDense, T5PreTrainedModel._init_weights) with the
activations of src/transformers/activations.py (ACT2FN).

mT5 (family 'mt5', registered at the bottom) is this model: T5 v1.1 (gated-GELU, untied head, relative bias, no
dropout in pretraining) over a multilingual vocabulary of 250,112 pieces; its presets `mt5_small` / `mt5_base` follow
google-research/multilingual-t5 multilingual_t5/models/mt5_{small,base}.gin (shapes, dropout_rate 0) and
multilingual_t5/tasks.py (span corruption on mC4); it exports as transformers' MT5ForConditionalGeneration
(src/transformers/models/mt5/modeling_mt5.py: T5's module tree and key names under model_type 'mt5').

Shapes: B batch, S encoder length, T decoder length, D model width, N heads, K head width, F FFN width, V vocabulary.
Blocks are modeling/layers.py's `Attention` (fused qkv; cross-attention q + fused kv) and `FeedForward` (v1.1: one
fused wi_0|wi_1 projection); the adapter at the bottom maps them onto transformers' T5ForConditionalGeneration
(encoder.block.i.layer.j.SelfAttention.q, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import flops, hf
from .config import T5_ACTIVATIONS, ModelConfig, ModelConfigError
from .layers import Attention, FeedForward, gelu_tanh, lookup_pair, run_blocks, sdpa_mask
from .registry import FamilySpec, HFAdapter, HFPart, register_family


class T5LayerNorm(nn.Module):
    """RMSNorm: no mean subtraction, no bias; computed in fp32.

    When x and the weight share a dtype (fp32 training, or bf16 weights with bf16 activations) this is torch's fused
    `F.rms_norm` (one kernel forward and one backward, accumulating in fp32), not the six elementwise ops of
    transformers' T5LayerNorm (pow, mean, add, rsqrt, mul, mul) and their backward; the same function up to float
    rounding (tests/test_t5_fidelity.py, tests/test_model_throughput.py compare logits and gradients)."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(self.weight.dtype)


def relative_position_bucket(
    rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's buckets: exact for small distances, logarithmic up to max_distance."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = (
        max_exact
        + (
            torch.log(rel.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, rel, large)


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation (gelu_new): the tanh approximation, written out."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - 0.707107).div(0.282095 * math.sqrt(2.0))))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # Each as transformers/activations.py computes it (ACT2FN), so logits equal transformers' at fp32.
    "gelu_tanh": gelu_tanh,  # modeling/layers.py: one kernel, not _tanh_gelu's eight ops (T5 v1.1's activation)
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_python_tanh": _tanh_gelu,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_accurate": _tanh_gelu,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}
assert set(ACTIVATIONS) == set(T5_ACTIVATIONS)


class T5Block(nn.Module):
    """Pre-RMSNorm residual sublayers: self-attention, [decoder: cross-attention], feed-forward (gated in v1.1:
    act(x wi_0) * (x wi_1), transformers' T5DenseGatedActDense; plain in v1.0: act(x wi), T5DenseActDense)."""

    def __init__(self, cfg: ModelConfig, is_decoder: bool) -> None:
        super().__init__()
        D, N, K, eps = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.layer_norm_eps
        p = cfg.attention_dropout  # no biases; T5 does not scale scores (scale 1.0)
        self.self_attn = Attention(D, N, K, bias=False, scale=1.0, dropout=p, causal=is_decoder)
        self.self_attn_norm = T5LayerNorm(D, eps)
        self.cross_attn = (
            Attention(D, N, K, bias=False, scale=1.0, dropout=p, cross=True) if is_decoder else None
        )
        self.cross_attn_norm = T5LayerNorm(D, eps) if is_decoder else None
        self.ffn = FeedForward(
            D,
            cfg.intermediate_size,
            ACTIVATIONS[cfg.activation],
            cfg.hidden_dropout,
            inner_dropout=cfg.hidden_dropout,
            bias=False,
            gated=cfg.gated_ffn,
        )
        self.ffn_norm = T5LayerNorm(D, eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        enc: torch.Tensor | None,
        enc_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = h + self.dropout(self.self_attn(self.self_attn_norm(h), mask))  # (B, T, D)
        if self.cross_attn is not None and self.cross_attn_norm is not None:
            assert enc is not None
            h = h + self.dropout(self.cross_attn(self.cross_attn_norm(h), enc_mask, enc))
        return h + self.ffn(self.ffn_norm(h))


class T5Stack(nn.Module):
    """Embeddings -> blocks -> final RMSNorm. The relative position bias is one table per stack (transformers keeps
    it in the first block's self-attention), computed once per forward and shared by every layer."""

    def __init__(self, cfg: ModelConfig, is_decoder: bool, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        self.buckets, self.max_distance = (
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        self.relative_attention_bias = nn.Embedding(self.buckets, cfg.num_heads)
        layers = cfg.decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList(T5Block(cfg, is_decoder) for _ in range(layers))
        self.final_layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.checkpointing = cfg.activation_checkpointing
        self.checkpoint_every = cfg.checkpoint_every

    def position_bias(self, T: int, device: torch.device) -> torch.Tensor:
        """(1, N, T, T) additive bias of key position j for query position i (bidirectional in the encoder)."""
        rel = torch.arange(T, device=device)[None, :] - torch.arange(T, device=device)[:, None]
        buckets = relative_position_bucket(rel, not self.is_decoder, self.buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(
        self,
        ids: torch.Tensor,
        keep: torch.Tensor | None,
        enc: torch.Tensor | None = None,
        enc_keep: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeds: (B, T, D) = embed_tokens(ids) when the caller looked them up already (`T5ForPretraining`)."""
        T = ids.shape[1]
        h = self.dropout(self.embed_tokens(ids) if embeds is None else embeds)  # (B, T, D)
        mask = sdpa_mask(
            keep, T, self.is_decoder, h.dtype, self.position_bias(T, ids.device)
        )  # (B|1, N, T, T)
        enc_mask = sdpa_mask(enc_keep, T, False, h.dtype) if self.is_decoder else None  # (B, 1, 1, S)
        h = run_blocks(
            list(self.block),
            h,
            mask,
            enc,
            enc_mask,
            checkpoint_every=self.checkpoint_every,
            enabled=self.checkpointing and self.training,
        )
        return self.dropout(self.final_layer_norm(h))


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor
    """(B, T, V) decoder logits."""
    encoder_hidden: torch.Tensor


class T5ForPretraining(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder = T5Stack(cfg, False, self.shared)
        self.decoder = T5Stack(cfg, True, self.shared)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tied = cfg.tie_word_embeddings
        if self.tied:
            self.lm_head.weight = self.shared.weight
        self.init_weights()

    def init_weights(self) -> None:
        """T5's initialisation, as transformers' `T5PreTrainedModel._init_weights` (after Mesh TensorFlow): normal
        weights, each matrix scaled by its fan-in, times `initializer_factor` f; RMSNorm weights = f.

        The untied LM head (v1.1) gets std f * 1.0, as transformers initialises it (transformers 4: its own
        `lm_head` branch; transformers 5: tied to `shared` at init). T5X / Mesh TF give a separate logits layer a
        fan-in std of D^-0.5 instead; we follow transformers, which the tests compare against."""
        f, D, K, N, F_ = (
            self.config.initializer_factor,
            self.config.hidden_size,
            self.config.head_dim,
            self.config.num_heads,
            self.config.intermediate_size,
        )
        nn.init.normal_(self.shared.weight, std=f * 1.0)
        if not self.tied:
            nn.init.normal_(self.lm_head.weight, std=f * 1.0)
        for m in self.modules():
            if isinstance(m, T5LayerNorm):
                nn.init.constant_(m.weight, f * 1.0)
            elif isinstance(m, Attention):
                q, kv = (m.q.weight, m.kv.weight) if m.cross else m.qkv.weight.split((N * K, 2 * N * K))
                with torch.no_grad():  # q is scaled by the head width too (Mesh TF folds 1/sqrt(K) into it)
                    nn.init.normal_(q, std=f * (D * K) ** -0.5)
                    nn.init.normal_(kv, std=f * D**-0.5)
                nn.init.normal_(m.out.weight, std=f * (N * K) ** -0.5)
            elif isinstance(m, FeedForward):
                nn.init.normal_(m.in_proj.weight, std=f * D**-0.5)
                nn.init.normal_(m.down.weight, std=f * F_**-0.5)
            elif isinstance(m, T5Stack):
                nn.init.normal_(m.relative_attention_bias.weight, std=f * D**-0.5)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        # One lookup of both id tensors: one dense V x D gradient of `shared` instead of one per stack plus their
        # sum (three passes over V x D more a step; mT5's table is 250k x D).
        enc_e, dec_e = lookup_pair(self.shared, input_ids, decoder_input_ids)
        enc = self.encoder(input_ids, attention_mask, embeds=enc_e)  # (B, S, D)
        dec = self.decoder(decoder_input_ids, None, enc, attention_mask, embeds=dec_e)  # (B, T, D)
        if self.tied:
            dec = dec * self.config.hidden_size**-0.5  # T5 v1.0 rescales before a tied head
        return Seq2SeqOutput(self.lm_head(dec), enc)


def check_t5_config(cfg: ModelConfig) -> None:
    """T5's feed-forward takes any parameter-free transformers activation (FamilySpec.check_config)."""
    if cfg.activation not in T5_ACTIVATIONS:
        raise ModelConfigError(
            f"model.activation={cfg.activation!r} is not supported for model.family={cfg.family!r}; choose one of "
            f"{', '.join(T5_ACTIVATIONS)} (transformers' ACT2FN names; 'prelu' and 'xielu' carry learnable "
            "parameters and are not supported)"
        )
    if cfg.initializer_factor <= 0:
        raise ModelConfigError(f"model.initializer_factor must be > 0, got {cfg.initializer_factor}")


# ---- transformers adapter: T5ForConditionalGeneration (encoder block: layer.0 self-attention, layer.1 FFN; decoder
# block: layer.0 self, layer.1 cross, layer.2 FFN); modeling/hf.py applies the tables.


def _t5_names(stack: str, ffn_index: int) -> tuple[list[tuple[str, str]], list[tuple[str, tuple[str, ...]]]]:
    ours, theirs = f"{stack}.block.*.", f"{stack}.block.*.layer."
    rename = [
        (
            f"{stack}.relative_attention_bias.",
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.",
        ),
        (ours + "self_attn.out.", theirs + "0.SelfAttention.o."),
        (ours + "self_attn_norm.", theirs + "0.layer_norm."),
        (ours + "ffn.up.", theirs + f"{ffn_index}.DenseReluDense.wi."),
        (ours + "ffn.down.", theirs + f"{ffn_index}.DenseReluDense.wo."),
        (ours + "ffn_norm.", theirs + f"{ffn_index}.layer_norm."),
    ]
    fuse = [
        (ours + "self_attn.qkv.", tuple(theirs + f"0.SelfAttention.{n}." for n in "qkv")),
        (ours + "ffn.gate_up.", tuple(theirs + f"{ffn_index}.DenseReluDense.{n}." for n in ("wi_0", "wi_1"))),
    ]
    if stack == "decoder":
        rename += [
            (ours + "cross_attn.q.", theirs + "1.EncDecAttention.q."),
            (ours + "cross_attn.out.", theirs + "1.EncDecAttention.o."),
            (ours + "cross_attn_norm.", theirs + "1.layer_norm."),
        ]
        fuse.append((ours + "cross_attn.kv.", tuple(theirs + f"1.EncDecAttention.{n}." for n in "kv")))
    return rename, fuse


_ENC, _DEC = _t5_names("encoder", 1), _t5_names("decoder", 2)


def t5_adapter(
    hf_class: str, config: Callable[[ModelConfig], Any], model_type: str, from_hf: Callable[..., ModelConfig]
) -> HFAdapter:
    """The adapter of a transformers class with T5's module tree (T5ForConditionalGeneration,
    MT5ForConditionalGeneration): the same key tables under another class name, config and model_type."""
    return HFAdapter(
        parts=(HFPart(hf_class, config, rename=(*_ENC[0], *_DEC[0]), fuse=(*_ENC[1], *_DEC[1])),),
        model_type=model_type,
        from_hf_config=from_hf,
        fix_hf_model=hf.untie_t5_head,
        post_layer_norm_only=False,
    )


T5_HF = t5_adapter("T5ForConditionalGeneration", hf.t5_config, "t5", hf.t5_from_hf)
MT5_HF = t5_adapter("MT5ForConditionalGeneration", hf.mt5_config, "mt5", hf.mt5_from_hf)

for _name, _adapter in (("t5", T5_HF), ("mt5", MT5_HF)):
    register_family(
        FamilySpec(
            name=_name,
            build=T5ForPretraining,
            objectives=("t5",),
            param_count=flops.t5_params,
            flops_per_token=flops.t5_flops,
            framing="raw",
            seq2seq=True,
            decoder_start="pad",
            learned_positions=False,
            check_config=check_t5_config,
            hf=_adapter,
        )
    )
