"""Parameter and FLOP accounting for MFU.

FLOPs per token of a training step = 3 x forward FLOPs (backward costs twice the forward), counting a
multiply-add as 2 FLOPs; embedding lookups and elementwise ops are ignored (they are a few percent).
"""

from __future__ import annotations

from .config import ModelConfig


def encoder_params(cfg: ModelConfig) -> int:
    """Parameters of BertForPretraining (tied MLM decoder counted once)."""
    H, inner, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    emb = V * H + cfg.max_position_embeddings * H + cfg.type_vocab_size * H + 2 * H
    block = 4 * (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H) + 2 * H
    final = 2 * H if cfg.pre_layer_norm else 0
    head = H * H + H + 2 * H + V
    return emb + L * block + final + head


def encoder_train_flops_per_token(cfg: ModelConfig, seq_len: int, mask_fraction: float = 0.15) -> float:
    """Training FLOPs per input token (forward + backward) of the encoder with a sparse MLM head."""
    H, inner, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    dense = 2 * (4 * H * H + 2 * H * inner)  # q, k, v, o projections + FFN, per token per layer
    attn = 2 * 2 * seq_len * H  # scores + weighted sum, per token per layer
    head = mask_fraction * 2 * (H * H + H * V)  # transform + vocabulary projection at masked positions only
    return 3.0 * (L * (dense + attn) + head)
