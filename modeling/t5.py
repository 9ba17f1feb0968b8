"""T5 (v1.0 and v1.1): RMSNorm (pre-norm), relative position bias (one table per stack, computed once and shared by
its layers), a gated (v1.1: gated-GELU) or plain (v1.0: ReLU) feed-forward, no biases anywhere, an untied (v1.1) or
tied and rescaled (v1.0) LM head; unscaled attention scores.

References: google-research/text-to-text-transfer-transformer (the T5 recipe) on tensorflow/mesh
mesh_tensorflow/transformer/transformer.py + transformer_layers.py (the model), and its port that our names and
numerics are tested against, huggingface/transformers src/transformers/models/t5/modeling_t5.py
(T5ForConditionalGeneration, T5DenseActDense / T5DenseGatedActDense, T5PreTrainedModel._init_weights) with the
activations of src/transformers/activations.py (ACT2FN).

Shapes: B batch, S encoder length, T decoder length, D model width, N heads, K head width, F FFN width, V vocabulary.
Names equal transformers' T5ForConditionalGeneration (shared, encoder.block.i.layer.j..., lm_head).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import flops, hf
from .config import T5_ACTIVATIONS, ModelConfig, ModelConfigError
from .layers import run_blocks
from .registry import FamilySpec, register_family


class T5LayerNorm(nn.Module):
    """RMSNorm: no mean subtraction, no bias; computed in fp32."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


class T5Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, has_bias_table: bool, bidirectional: bool) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.head_dim
        self.q = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.k = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.v = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.o = nn.Linear(inner, cfg.hidden_size, bias=False)
        self.dropout = cfg.attention_dropout
        self.bidirectional = bidirectional
        self.buckets, self.max_distance = (
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        self.relative_attention_bias = nn.Embedding(self.buckets, cfg.num_heads) if has_bias_table else None
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def position_bias(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """(1, N, q_len, k_len) from this layer's bias table."""
        assert self.relative_attention_bias is not None
        rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
        buckets = relative_position_bucket(rel, self.bidirectional, self.buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, Tq, D) queries; kv: (B, Tk, D) keys/values; bias: additive (B|1, N, Tq, Tk)."""
        B, Tq, _ = x.shape
        Tk = kv.shape[1]
        q = self.q(x).view(B, Tq, self.heads, self.head_dim).transpose(1, 2)  # (B, N, Tq, K)
        k = self.k(kv).view(B, Tk, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(kv).view(B, Tk, self.heads, self.head_dim).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )  # T5 does not scale scores
        return self.o(ctx.transpose(1, 2).reshape(B, Tq, self.heads * self.head_dim))


class T5SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, has_bias_table: bool, bidirectional: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_bias_table, bidirectional)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(h)
        return h + self.dropout(self.SelfAttention(x, x, bias))


class T5CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, False, True)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, h: torch.Tensor, enc: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.EncDecAttention(self.layer_norm(h), enc, enc_mask))


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation (gelu_new): the tanh approximation, written out."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - 0.707107).div(0.282095 * math.sqrt(2.0))))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # Each as transformers/activations.py computes it (ACT2FN), so logits equal transformers' at fp32.
    "gelu_tanh": _tanh_gelu,
    "gelu": F.gelu,
    "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
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


class T5DenseGatedAct(nn.Module):
    """T5 v1.1: wo(act(x wi_0) * (x wi_1)) (transformers' T5DenseGatedActDense, feed_forward_proj='gated-<act>')."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.wi_1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi_0(x)) * self.wi_1(x)))  # (B, T, F) -> (B, T, D)


class T5DenseAct(nn.Module):
    """T5 v1.0: wo(act(x wi)) (transformers' T5DenseActDense, feed_forward_proj='<act>', 'relu' for T5 v1.0)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wi = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi(x))))  # (B, T, F) -> (B, T, D)


class T5FFLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.DenseReluDense: nn.Module = T5DenseGatedAct(cfg) if cfg.gated_ffn else T5DenseAct(cfg)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.DenseReluDense(self.layer_norm(h)))


class T5Block(nn.Module):
    def __init__(self, cfg: ModelConfig, is_decoder: bool, has_bias_table: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        parts: list[nn.Module] = [T5SelfAttentionLayer(cfg, has_bias_table, bidirectional=not is_decoder)]
        if is_decoder:
            parts.append(T5CrossAttentionLayer(cfg))
        parts.append(T5FFLayer(cfg))
        self.layer = nn.ModuleList(parts)

    def forward(
        self, h: torch.Tensor, bias: torch.Tensor, enc: torch.Tensor | None, enc_mask: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.layer[0](h, bias)
        if self.is_decoder:
            assert enc is not None and enc_mask is not None
            h = self.layer[1](h, enc, enc_mask)
        return self.layer[-1](h)


def additive_mask(
    keep: torch.Tensor | None, B: int, q_len: int, k_len: int, causal: bool, device, dtype
) -> torch.Tensor:
    """(B|1, 1, q_len, k_len): 0 where attending is allowed, a large negative number elsewhere."""
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
    if keep is not None:
        allowed = allowed & keep.bool()[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class T5Stack(nn.Module):
    def __init__(self, cfg: ModelConfig, is_decoder: bool, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        layers = cfg.decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList(T5Block(cfg, is_decoder, has_bias_table=(i == 0)) for i in range(layers))
        self.final_layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.checkpointing = cfg.activation_checkpointing
        self.checkpoint_every = cfg.checkpoint_every

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        enc: torch.Tensor | None = None,
        enc_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T = ids.shape
        h = self.dropout(self.embed_tokens(ids))  # (B, T, D)
        first = cast(T5SelfAttentionLayer, cast(T5Block, self.block[0]).layer[0]).SelfAttention
        # The position bias is computed once, by the first layer's table, and shared by every layer of the stack.
        bias = first.position_bias(T, T, ids.device) + additive_mask(
            mask, B, T, T, self.is_decoder, ids.device, h.dtype
        )
        enc_mask = None
        if self.is_decoder:
            assert enc is not None
            enc_mask = additive_mask(enc_keep, B, T, enc.shape[1], False, ids.device, h.dtype)
        h = run_blocks(
            list(self.block),
            h,
            bias,
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
            elif isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=f * (D * K) ** -0.5)
                nn.init.normal_(m.k.weight, std=f * D**-0.5)
                nn.init.normal_(m.v.weight, std=f * D**-0.5)
                nn.init.normal_(m.o.weight, std=f * (N * K) ** -0.5)
                if m.relative_attention_bias is not None:
                    nn.init.normal_(m.relative_attention_bias.weight, std=f * D**-0.5)
            elif isinstance(m, T5DenseGatedAct):
                nn.init.normal_(m.wi_0.weight, std=f * D**-0.5)
                nn.init.normal_(m.wi_1.weight, std=f * D**-0.5)
                nn.init.normal_(m.wo.weight, std=f * F_**-0.5)
            elif isinstance(m, T5DenseAct):
                nn.init.normal_(m.wi.weight, std=f * D**-0.5)
                nn.init.normal_(m.wo.weight, std=f * F_**-0.5)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        enc = self.encoder(input_ids, attention_mask)  # (B, S, D)
        dec = self.decoder(decoder_input_ids, None, enc, attention_mask)  # (B, T, D)
        if self.tied:
            dec = dec * self.config.hidden_size**-0.5  # T5 v1.0 rescales before a tied head
        return Seq2SeqOutput(self.lm_head(dec), enc)


def check_t5_config(cfg: ModelConfig) -> None:
    """T5's feed-forward takes any parameter-free transformers activation (FamilySpec.check_config)."""
    if cfg.activation not in T5_ACTIVATIONS:
        raise ModelConfigError(
            f"model.activation={cfg.activation!r} is not supported for model.family='t5'; choose one of "
            f"{', '.join(T5_ACTIVATIONS)} (transformers' ACT2FN names; 'prelu' and 'xielu' carry learnable "
            "parameters and are not supported)"
        )
    if cfg.initializer_factor <= 0:
        raise ModelConfigError(f"model.initializer_factor must be > 0, got {cfg.initializer_factor}")


register_family(
    FamilySpec(
        name="t5",
        build=T5ForPretraining,
        objectives=("t5",),
        param_count=flops.t5_params,
        flops_per_token=flops.t5_flops,
        framing="raw",
        seq2seq=True,
        decoder_start="pad",
        learned_positions=False,
        check_config=check_t5_config,
        hf=hf.T5_HF,
    )
)
