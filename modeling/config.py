"""Model configuration: one typed dataclass and named size presets.

Size presets live here, in code; run recipes (YAML in configs/) name a preset and override fields:

    model:
      preset: bert_base
      num_layers: 4          # overrides the preset's 12
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cloze_errors import ClozeError


class ModelConfigError(ClozeError, ValueError):
    """A model configuration value that cannot work; the message names the key to change."""

    same_on_every_rank = True


@dataclass
class ModelConfig:
    """Architecture of an encoder (BERT family)."""

    family: str = "bert"
    """Model family: 'bert', 'roberta', 'albert' (encoders), 'electra' (generator + discriminator), 'deberta'
    (v2/v3), 'deberta_v1', 'distilbert' (a student, distilled when model.teacher is set), 'xlm_roberta', 'xlm'
    (multilingual encoders), 't5', 'mt5', 'bart' (encoder-decoders), or one a plugin registered
    (modeling/registry.py)."""
    preset: str = ""
    """Name of the size preset the other fields started from ('' = none). See `PRESETS`."""
    vocab_size: int = 30522
    """Vocabulary size. 0 = take it from the dataset's tokenizer at build time."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table holds."""
    type_vocab_size: int = 2
    """Number of token-type (segment) embeddings; 0 disables them."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings, attention output and FFN output."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights (BERT, RoBERTa, ALBERT, ELECTRA, BART); T5 ignores it
    and uses `initializer_factor`."""
    initializer_factor: float = 1.0
    """T5: the factor of T5's fan-in initialisation (transformers' `T5Config.initializer_factor`, default 1.0):
    embeddings std factor, q std factor*(D*K)^-0.5, k/v/wi std factor*D^-0.5, o std factor*(N*K)^-0.5, wo std
    factor*F^-0.5, RMSNorm weights = factor. Keep it 1.0 to pretrain as T5 did."""
    activation: str = "gelu"
    """FFN activation. Encoders and BART: 'gelu' (exact erf), 'gelu_tanh' or 'relu'. T5: any of `T5_ACTIVATIONS`
    (transformers' ACT2FN names without learnable parameters, plus 'gelu_tanh'); with `gated_ffn` this is the
    activation of transformers' `feed_forward_proj='gated-<act>'` (T5 v1.1: 'gelu_tanh', v1.0: 'relu' ungated)."""
    gated_ffn: bool = True
    """T5 only: the gated feed-forward of T5 v1.1, wo(act(x wi_0) * (x wi_1)) (transformers' 'gated-<act>');
    false = T5 v1.0's wo(act(x wi)) (transformers' '<act>', e.g. 'relu'). The other families never gate and
    refuse false."""
    pre_layer_norm: bool = False
    """Pre-LN blocks (LayerNorm before attention/FFN) instead of BERT's post-LN."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~1/3 more compute)."""
    checkpoint_every: int = 1
    """With activation_checkpointing: checkpoint every k-th block (1 = all blocks)."""
    pad_token_id: int = 0
    """Id of the padding token (filled from the dataset's manifest at build time)."""
    bos_token_id: int = 2
    """Id of <s> (BART frames every sequence as `<s> ... </s>`; filled from the manifest, exported as transformers'
    `bos_token_id`)."""
    eos_token_id: int = 3
    """Id of </s> (BART's decoder start; filled from the manifest)."""
    checkpoint_mode: str = "full"
    """With activation_checkpointing: 'full' (whole blocks) or 'attention' (only attention is recomputed)."""
    embedding_size: int = 0
    """Width of the token embeddings when it differs from hidden_size (ALBERT, ELECTRA); 0 = hidden_size."""
    share_layers: bool = False
    """One set of block weights used by every layer (ALBERT's cross-layer sharing)."""
    sentence_head: bool = False
    """A pooler on [CLS] + 2-way classifier for sentence-order (SOP) or next-sentence (NSP) prediction; set
    automatically when the dataset holds sentence pairs."""
    last_layer_at_labels: bool = True
    """Encoders (BERT, RoBERTa, XLM-R, ALBERT, the DistilBERT student's MLM step, ELECTRA's generator, XLM): with
    labels, the last block runs its attention rows, output projection and feed-forward at the labelled positions only
    (plus [CLS] with a sentence head); its q/k/v projection still runs at every position. The loss reads nothing
    else, so
    the result is the same computation (equal to rounding); false = the last block at every position, as
    transformers computes it (for an A/B, or to read `MLMOutput.hidden` of every position with labels)."""
    position_offset: int = 0
    """Added to position ids (RoBERTa: pad id + 1); the position table has max_position_embeddings + offset rows."""
    # ELECTRA
    generator_fraction: float = 0.25
    """ELECTRA: the generator's hidden size, heads and FFN width as a fraction of the discriminator's."""
    rtd_weight: float = 50.0
    """ELECTRA: weight of the replaced-token-detection loss against the generator's MLM loss (ELECTRA: 50;
    DeBERTa-v3 RTD, family 'deberta_rtd': its presets and configs/tiny-deberta-rtd.yaml set 10, the reference's
    `rtd_lambda`)."""
    generator_layers: int = 0
    """DeBERTa-v3 RTD (family 'deberta_rtd'): the generator's blocks; 0 = num_layers // 2 (the reference's
    rtd_*.json: half depth, same width)."""
    decoupled_training: bool = True
    """DeBERTa-v3 RTD (family 'deberta_rtd' only): the reference's decoupled updates (its default,
    `--decoupled_training true`, rtd_task.py `get_decoupled_loss_fn`): each step, the generator's MLM step, then the
    discriminator's RTD step on the generator's samples, each over its own parameters with its own gradient
    clipping. false = one joint loss (MLM + rtd_weight x RTD) and one step for both (`get_loss_fn`). ELECTRA's
    reference always trains jointly: family 'electra' ignores this."""
    # encoder-decoders
    num_decoder_layers: int = 0
    """T5/BART decoder blocks (0 = num_layers)."""
    d_kv: int = 0
    """T5: width of each attention head (0 = hidden_size / num_heads)."""
    relative_attention_num_buckets: int = 32
    """T5: relative position buckets (shared across the layers of a stack)."""
    relative_attention_max_distance: int = 128
    """T5: distances beyond this share the last bucket."""
    tie_word_embeddings: bool = True
    """Tie the LM head to the input embeddings (BERT, BART; T5 v1.1 unties them)."""
    # DeBERTa (modeling/deberta.py; names and meanings as in transformers' DebertaV2Config). Read by
    # family 'deberta' (v2/v3) and 'deberta_v1' only; the defaults are DeBERTa-v3's.
    relative_attention: bool = True
    """DeBERTa: disentangled attention over relative positions (c2p / p2c terms, `pos_att_type`)."""
    position_buckets: int = 256
    """DeBERTa: log-bucketed relative positions: distances up to position_buckets/2 keep their own bucket, longer
    ones share log-spaced buckets up to max_relative_positions (v2/v3: 256). 0 = no bucketing (v1; transformers'
    -1); must be <= the effective max_relative_positions."""
    max_relative_positions: int = -1
    """DeBERTa: the longest relative distance with its own embedding (-1 = max_position_embeddings, as the v3
    configs write it)."""
    share_att_key: bool = True
    """DeBERTa v2/v3: the relative-position projections reuse the content query/key projections; false = their own
    `pos_key_proj` / `pos_query_proj` (v1: `pos_proj` / `pos_q_proj`, always separate)."""
    pos_att_type: str = "p2c|c2p"
    """DeBERTa: the disentangled terms, '|'-separated: 'c2p' (content to position), 'p2c' (position to content);
    '' = none. Scores are scaled by 1/sqrt(head_dim * (1 + number of terms))."""
    position_biased_input: bool = False
    """DeBERTa: add absolute position embeddings to the input (false for v1-base/v2/v3: positions enter only through
    relative attention and the Enhanced Mask Decoder)."""
    norm_rel_ebd: str = "layer_norm"
    """DeBERTa v2/v3: 'layer_norm' = LayerNorm the relative embedding table before use; 'none' (v1)."""
    conv_kernel_size: int = 0
    """DeBERTa v2: kernel of the convolution layer (tanh, one group) after the first block; 0 = none (v3). Odd."""
    enhanced_mask_decoder: bool = True
    """DeBERTa MLM pretraining: the Enhanced Mask Decoder of microsoft/DeBERTa (apps/models/masked_language_model.py,
    on by default there): absolute positions are added to the last block's input, which then runs the last block
    twice more (shared weights) as queries over it; the MLM head reads that. It only acts when
    position_biased_input is false (as in the reference). transformers' *ForMaskedLM has no EMD: its logits equal
    ours with this false (the encoder path)."""

    # DistilBERT distillation (modeling/distilbert.py, trainer/losses.py DistillTask). Read by family 'distilbert'
    # only; the defaults are the reference's training command (transformers examples/research_projects/distillation
    # README: train.py --alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0 --temperature 2.0 --mlm).
    teacher: str = ""
    """DistilBERT: the frozen teacher, a cloze run directory (its config.yaml + newest checkpoint) or a transformers
    directory of BertForMaskedLM / RobertaForMaskedLM (config.json + *.safetensors). '' = no teacher: the student
    trains with MLM alone (as after an import from DistilBertForMaskedLM)."""
    student_layers: list[int] = field(default_factory=lambda: [0, 2, 4, 7, 9, 11])
    """DistilBERT: the teacher's blocks the student's blocks start from, in order (one per student block: its
    length must equal model.num_layers); the reference's choice for 12 -> 6 (scripts/extract_distilbert.py)."""
    alpha_ce: float = 5.0
    """DistilBERT: weight of the distillation loss T^2 x KL(teacher/T || student/T)."""
    alpha_mlm: float = 2.0
    """DistilBERT: weight of the student's masked-LM cross-entropy."""
    alpha_cos: float = 1.0
    """DistilBERT: weight of the cosine loss between the student's and the teacher's last hidden states."""
    temperature: float = 2.0
    """DistilBERT: softmax temperature T of the distillation loss (> 0)."""
    restrict_ce_to_mask: bool = False
    """DistilBERT: the distillation loss over the masked positions only; false = over every non-pad token (the
    reference's default)."""

    init_from: str = ""
    """A transformers directory (`cloze export`, `cloze convert --to-long`, a downloaded model) whose weights start a
    fresh run (not a resumed one); its family and shapes must be this model's. '' = random initialisation."""

    # Longformer (modeling/longformer.py). Read by family 'longformer' only.
    attention_window: list[int] = field(default_factory=lambda: [512])
    """Longformer: the full sliding window of each layer (even; w/2 tokens on each side), one value for all layers or
    one per layer (transformers' `attention_window`; 512 in longformer-base-4096)."""

    # XLM (modeling/xlm.py). Read by family 'xlm' only.
    languages: list[str] = field(default_factory=list)
    """XLM: the language names, in language-id order (transformers' `XLMConfig.id2lang`; a batch's `langs` holds
    these ids, one per token); more than one adds a language embedding table. [] = one unnamed language."""
    unk_token_id: int = 1
    """Id of <unk> (cloze's tokenizer layout: 1); written as XLMConfig `unk_index` by an XLM export."""
    mask_token_id: int = 6
    """Id of [MASK] (cloze's tokenizer layout: 6); written as XLMConfig `mask_index` / `mask_token_id` by an XLM
    export."""

    def __post_init__(self) -> None:
        from .registry import get_family  # registry imports this module

        spec = get_family(self.family)  # unknown family: an error listing the registered ones
        if self.checkpoint_mode not in ("full", "attention"):
            raise ModelConfigError(
                f"model.checkpoint_mode={self.checkpoint_mode!r}: use 'full' or 'attention'"
            )
        if not 0.0 < self.generator_fraction <= 1.0:
            raise ModelConfigError(
                f"model.generator_fraction must be in (0, 1], got {self.generator_fraction}"
            )
        if (
            self.embedding_size < 0
            or self.num_decoder_layers < 0
            or self.d_kv < 0
            or self.position_offset < 0
        ):
            raise ModelConfigError(
                "model.embedding_size, num_decoder_layers, d_kv and position_offset must be >= 0"
            )
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ModelConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ModelConfigError(
                f"model.vocab_size must be >= 0 (0 = from the tokenizer), got {self.vocab_size}"
            )
        if self.hidden_size % self.num_heads and not self.d_kv:
            raise ModelConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}; "
                "change one of them"
            )
        if len(set(self.languages)) != len(self.languages):
            raise ModelConfigError(f"model.languages names a language twice: {self.languages}")
        spec.check_config(self)  # the family's own checks (T5: its activations)
        if self.checkpoint_every < 1:
            raise ModelConfigError(f"model.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ModelConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_kv or self.hidden_size // self.num_heads

    @property
    def n_langs(self) -> int:
        """XLM: the number of languages (at least 1)."""
        return max(1, len(self.languages))

    @property
    def emb_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    @property
    def is_seq2seq(self) -> bool:
        from .registry import get_family

        return get_family(self.family).seq2seq

    def generator(self) -> ModelConfig:
        """ELECTRA's generator: the discriminator's shape scaled by generator_fraction, same embeddings."""
        f = self.generator_fraction
        heads = max(1, round(self.num_heads * f))
        hidden = max(heads, round(self.hidden_size * f / heads) * heads)
        return dataclasses.replace(
            self,
            family="bert",
            hidden_size=hidden,
            num_heads=heads,
            intermediate_size=max(1, round(self.intermediate_size * f)),
            embedding_size=self.emb_size,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The preset `name` with `overrides` applied, e.g. `ModelConfig.from_preset('tiny', num_layers=2)`."""
        if name not in PRESETS:
            raise ModelConfigError(f"model.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
        values = dict(PRESETS[name])
        values.update(overrides)
        values["preset"] = name
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_standard_ffn(cfg: ModelConfig) -> None:
    """The feed-forward every family but T5 has: an ungated 'gelu', 'gelu_tanh' or 'relu' (FamilySpec.check_config)."""
    if cfg.activation not in ("gelu", "gelu_tanh", "relu"):
        raise ModelConfigError(
            f"model.activation={cfg.activation!r}: use 'gelu', 'gelu_tanh' or 'relu' for model.family={cfg.family!r}"
        )
    if not cfg.gated_ffn:
        raise ModelConfigError(
            f"model.gated_ffn=false applies to model.family='t5' only; {cfg.family!r} has no gated "
            "feed-forward: remove the key"
        )


T5_ACTIVATIONS = (
    "gelu_tanh",
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_python",
    "gelu_python_tanh",
    "gelu_fast",
    "gelu_accurate",
    "gelu_10",
    "quick_gelu",
    "relu",
    "relu2",
    "relu6",
    "leaky_relu",
    "silu",
    "swish",
    "mish",
    "hardswish",
    "laplace",
    "sqrtsoftplus",
    "sigmoid",
    "tanh",
    "linear",
)
"""T5's feed-forward activations: 'gelu_tanh' (ours: the tanh-approximate GELU of T5 v1.1, = transformers'
'gelu_new') and every parameter-free name of transformers' ACT2FN (transformers/activations.py), computed as there."""

T5_V1_1: dict[str, Any] = dict(
    family="t5", activation="gelu_tanh", gated_ffn=True, layer_norm_eps=1e-6, tie_word_embeddings=False
)
"""What every T5 v1.1 size shares: gated-GELU (tanh form) feed-forward, untied LM head (T5's own initialisation is
`initializer_factor`, default 1.0)."""
NO_DROPOUT: dict[str, Any] = dict(hidden_dropout=0.0, attention_dropout=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    # A few-hundred-thousand-parameter BERT that trains on 2 CPU cores in minutes.
    "tiny": dict(
        family="bert",
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        intermediate_size=512,
        max_position_embeddings=512,
    ),
    "bert_mini": dict(family="bert", hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "bert_small": dict(family="bert", hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
    "bert_base": dict(family="bert", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "bert_large": dict(family="bert", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "roberta_base": dict(
        family="roberta",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        type_vocab_size=1,
        position_offset=1,
        layer_norm_eps=1e-5,
    ),
    "albert_base": dict(
        family="albert",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        embedding_size=128,
        share_layers=True,
        activation="gelu_tanh",
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),
    "electra_small": dict(
        family="electra",
        hidden_size=256,
        num_layers=12,
        num_heads=4,
        intermediate_size=1024,
        embedding_size=128,
        generator_fraction=0.25,
    ),
    "electra_base": dict(
        family="electra",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        generator_fraction=1 / 3,
    ),
    # T5 v1.1 pretrains without dropout.
    "t5_small": dict(
        **T5_V1_1, hidden_size=512, num_layers=8, num_heads=6, d_kv=64, intermediate_size=1024, **NO_DROPOUT
    ),
    "t5_base": dict(
        **T5_V1_1, hidden_size=768, num_layers=12, num_heads=12, d_kv=64, intermediate_size=2048, **NO_DROPOUT
    ),
    "bart_base": dict(
        family="bart",
        hidden_size=768,
        num_layers=6,
        num_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
        layer_norm_eps=1e-5,
    ),
    # mT5 (google-research/multilingual-t5, multilingual_t5/models/mt5_{small,base}.gin and transformers'
    # google/mt5-{small,base} config.json): T5 v1.1's shapes over a 250,112-token vocabulary, no dropout in
    # pretraining (the gin files set dropout_rate = 0.0; tasks.py trains on mC4).
    "mt5_small": dict(
        **{**T5_V1_1, "family": "mt5"},
        vocab_size=250112,
        hidden_size=512,
        num_layers=8,
        num_heads=6,
        d_kv=64,
        intermediate_size=1024,
        **NO_DROPOUT,
    ),
    "mt5_base": dict(
        **{**T5_V1_1, "family": "mt5"},
        vocab_size=250112,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        d_kv=64,
        intermediate_size=2048,
        **NO_DROPOUT,
    ),
    # XLM-R (Conneau et al. 2020, fairseq examples/xlmr; transformers FacebookAI/xlm-roberta-{base,large}): RoBERTa's
    # shapes over a 250,002-token sentencepiece vocabulary.
    "xlmr_base": dict(
        family="xlm_roberta",
        vocab_size=250002,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        type_vocab_size=1,
        position_offset=1,
        layer_norm_eps=1e-5,
    ),
    "xlmr_large": dict(
        family="xlm_roberta",
        vocab_size=250002,
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        intermediate_size=4096,
        type_vocab_size=1,
        position_offset=1,
        layer_norm_eps=1e-5,
    ),
    # XLM (facebookresearch/XLM): a base-sized MLM/TLM encoder, BERT-base's shape (768 wide, 12 layers, 12 heads,
    # FFN 4 x 768 as the reference always has); the released XLM-15 (xlm-mlm-tlm-xnli15-1024) is 1024 wide with
    # 8 heads, XLM-17/100 are 1280 wide with 16 layers. The vocabulary and languages come from the data.
    "xlm_base": dict(
        family="xlm",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    ),
    "tiny_t5": dict(**T5_V1_1, hidden_size=128, num_layers=2, num_heads=4, d_kv=32, intermediate_size=256),
    "tiny_bart": dict(
        family="bart",
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        intermediate_size=512,
        layer_norm_eps=1e-5,
    ),
    "tiny_electra": dict(
        family="electra",
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        intermediate_size=512,
        generator_fraction=0.5,
    ),
}


__all__ = ["ModelConfig", "ModelConfigError", "PRESETS", "T5_ACTIVATIONS", "check_standard_ffn"]
