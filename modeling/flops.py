"""Parameter and FLOP accounting for every family, for MFU (tests check the counts against built models).

Training FLOPs = 3 x forward FLOPs (backward costs twice the forward); a multiply-add is 2 FLOPs; embedding lookups,
norms and elementwise ops are ignored (a few percent). Attention adds 2 x 2 x T x width per token per layer
(scores and the weighted sum). Heads that run on masked positions only are scaled by the mask fraction, and so is
an encoder's last block but its q/k/v projection (`model.last_layer_at_labels`): the FLOPs executed.
"""

from __future__ import annotations

from .config import ModelConfig
from .registry import get_family


def _encoder_block(H: int, inner: int) -> int:
    return 4 * (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H) + 2 * H


def _bert_embeddings(cfg: ModelConfig) -> int:
    E = cfg.emb_size
    return (
        cfg.vocab_size + cfg.max_position_embeddings + cfg.position_offset + cfg.type_vocab_size
    ) * E + 2 * E


def _bert_trunk(cfg: ModelConfig) -> int:
    """Projection (when E != H) + blocks (+ final norm), without embeddings."""
    H, E = cfg.hidden_size, cfg.emb_size
    proj = E * H + H if E != H else 0
    blocks = (1 if cfg.share_layers else cfg.num_layers) * _encoder_block(H, cfg.intermediate_size)
    return proj + blocks + (2 * H if cfg.pre_layer_norm else 0)


def _mlm_head(cfg: ModelConfig) -> int:
    H, E = cfg.hidden_size, cfg.emb_size
    sentence = (H * H + H) + (2 * H + 2) if cfg.sentence_head else 0  # pooler + SOP/NSP classifier
    return H * E + E + 2 * E + cfg.vocab_size + sentence  # transform dense + LayerNorm + bias (decoder tied)


def _t5_stack(cfg: ModelConfig, decoder: bool) -> int:
    D, inner, F = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size
    attn = 4 * D * inner + D  # q, k, v, o + RMSNorm
    ffn = (3 if cfg.gated_ffn else 2) * D * F + D  # wi_0, wi_1 (gated) or wi, wo + RMSNorm
    layers = cfg.decoder_layers if decoder else cfg.num_layers
    per_layer = attn * (2 if decoder else 1) + ffn
    return layers * per_layer + cfg.relative_attention_num_buckets * cfg.num_heads + D


def _bart_stack(cfg: ModelConfig, decoder: bool) -> int:
    D, inner = cfg.hidden_size, cfg.intermediate_size
    attn = 4 * (D * D + D) + 2 * D
    ffn = D * inner + inner + inner * D + D + 2 * D
    layers = cfg.decoder_layers if decoder else cfg.num_layers
    return (cfg.max_position_embeddings + 2) * D + 2 * D + layers * (attn * (2 if decoder else 1) + ffn)


def param_count(cfg: ModelConfig) -> int:
    """Trainable parameters of build_model(cfg), each shared tensor counted once (the family's `param_count`)."""
    return get_family(cfg.family).param_count(cfg)


def encoder_params(cfg: ModelConfig) -> int:
    """BERT / RoBERTa / ALBERT with the MLM head (and the SOP/NSP head when present)."""
    return _bert_embeddings(cfg) + _bert_trunk(cfg) + _mlm_head(cfg)


def longformer_params(cfg: ModelConfig) -> int:
    """RoBERTa's, plus each layer's global q/k/v projections."""
    H = cfg.hidden_size
    return encoder_params(cfg) + cfg.num_layers * 3 * (H * H + H)


def xlm_params(cfg: ModelConfig) -> int:
    """XLM: word, position (and, with more than one language, language) embeddings + their LayerNorm, post-LN
    blocks, the prediction layer's bias (its weight is the word embeddings)."""
    H, V = cfg.hidden_size, cfg.vocab_size
    langs = cfg.n_langs * H if cfg.n_langs > 1 else 0
    embeddings = (V + cfg.max_position_embeddings) * H + langs + 2 * H
    return embeddings + cfg.num_layers * _encoder_block(H, cfg.intermediate_size) + V


def electra_params(cfg: ModelConfig) -> int:
    gen = cfg.generator()
    disc_head = cfg.hidden_size * cfg.hidden_size + cfg.hidden_size + cfg.hidden_size + 1
    return _bert_embeddings(cfg) + _bert_trunk(gen) + _mlm_head(gen) + _bert_trunk(cfg) + disc_head


def t5_params(cfg: ModelConfig) -> int:
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return cfg.vocab_size * cfg.hidden_size + _t5_stack(cfg, False) + _t5_stack(cfg, True) + head


def bart_params(cfg: ModelConfig) -> int:
    return cfg.vocab_size * cfg.hidden_size + _bart_stack(cfg, False) + _bart_stack(cfg, True)


def _encoder_matmul_per_token(cfg: ModelConfig, T: int, last_fraction: float = 1.0) -> float:
    """Forward FLOPs per token through the blocks (applied num_layers times even when weights are shared).
    last_fraction: the share of positions at which the last block runs its attention rows, output projection and
    feed-forward (`model.last_layer_at_labels`: the mask fraction); its q/k/v projection runs everywhere."""
    H, inner, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    proj = 2 * cfg.emb_size * H if cfg.emb_size != H else 0
    qkv = 2 * 3 * H * H
    rest = 2 * (H * H + 2 * H * inner) + 2 * 2 * T * H  # out, FFN; scores and weighted sum
    return proj + L * (qkv + rest) - (1.0 - last_fraction) * rest


def _last_fraction(cfg: ModelConfig, mask_fraction: float) -> float:
    """The last block's share of positions in a pretraining step (see `_encoder_matmul_per_token`)."""
    # A distillation step (DistilBERT with a teacher) runs the student's last block everywhere (its losses read
    # every position).
    return mask_fraction if cfg.last_layer_at_labels and not cfg.teacher else 1.0


def train_flops_per_token(
    cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15
) -> float:
    """Training FLOPs per input token (the family's `flops_per_token`). Encoder-decoders: per encoder token, with
    the decoder's work on `target_len` tokens per sequence of `seq_len` included."""
    return get_family(cfg.family).flops_per_token(cfg, seq_len, target_len, mask_fraction)


def encoder_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """BERT / RoBERTa / ALBERT: the MLM head (and, by default, the last block but its q/k/v projection) runs on
    masked positions only."""
    return _bert_flops(cfg, seq_len, mask_fraction, _last_fraction(cfg, mask_fraction))


def _bert_flops(cfg: ModelConfig, seq_len: int, mask_fraction: float, last_fraction: float) -> float:
    H, E, V = cfg.hidden_size, cfg.emb_size, cfg.vocab_size
    head = mask_fraction * 2 * (H * E + E * V)
    return 3.0 * (_encoder_matmul_per_token(cfg, seq_len, last_fraction) + head)


def longformer_flops(
    cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15
) -> float:
    """RoBERTa's with each token's attention over its window (w + 1 keys) instead of the whole sequence; global
    tokens (a few per sequence) are not counted."""
    w = max(cfg.attention_window) if cfg.attention_window else seq_len
    return _bert_flops(cfg, min(seq_len, w + 1), mask_fraction, 1.0)  # every block at every position


def xlm_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """XLM: the blocks on every token, the (tied) prediction layer on the masked positions only."""
    head = mask_fraction * 2 * cfg.hidden_size * cfg.vocab_size
    return 3.0 * (_encoder_matmul_per_token(cfg, seq_len, _last_fraction(cfg, mask_fraction)) + head)


def electra_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """Generator (MLM head on masked positions) + discriminator (RTD head on every position)."""
    H, E, V = cfg.hidden_size, cfg.emb_size, cfg.vocab_size
    gen = cfg.generator()
    gen_head = mask_fraction * 2 * (gen.hidden_size * E + E * V)
    disc_head = 2 * (H * H + H)
    return 3.0 * (
        _encoder_matmul_per_token(gen, seq_len, _last_fraction(gen, mask_fraction))
        + gen_head
        + _encoder_matmul_per_token(cfg, seq_len)
        + disc_head
    )


def _seq2seq_flops(cfg: ModelConfig, seq_len: int, target_len: int, inner: int, ffn_mats: int) -> float:
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    ffn = ffn_mats * 2 * D * F
    S, T = seq_len, max(target_len, 1)
    enc = S * cfg.num_layers * (2 * 4 * D * inner + ffn + 2 * 2 * S * inner)
    dec = T * cfg.decoder_layers * (2 * 8 * D * inner + ffn + 2 * 2 * T * inner + 2 * 2 * S * inner)
    head = T * 2 * D * V
    return 3.0 * (enc + dec + head) / S


def t5_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """T5: heads of width d_kv; a gated FFN has three matrices."""
    return _seq2seq_flops(cfg, seq_len, target_len, cfg.num_heads * cfg.head_dim, 3 if cfg.gated_ffn else 2)


def bart_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    """BART: attention as wide as the model, an ungated FFN."""
    return _seq2seq_flops(cfg, seq_len, target_len, cfg.hidden_size, 2)


# Dense bf16 peak FLOP/s of known accelerators (tensor cores, no sparsity); override with trainer settings.
PEAK_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
}


def peak_flops_for(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a GPU by its torch.cuda.get_device_name(), if known."""
    name = device_name.upper()
    if "H100" in name:
        return PEAK_FLOPS["H100 PCIe" if "PCIE" in name else "H100 SXM"]
    for key, value in PEAK_FLOPS.items():
        if key.upper() in name:
            return value
    return None
