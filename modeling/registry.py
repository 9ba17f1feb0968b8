"""The family registry: one `FamilySpec` per model family, registered once, beside its model file.

Nothing outside a registry branches on a family's name: the trainer, FLOPs accounting, transformers export/import
and fine-tuning ask `get_family(cfg.family)` for what they need (the pattern of torchtitan's `TrainSpec`,
torchtitan/protocols/train_spec.py, with its `state_dict_adapter` for the transformers boundary).

Built-in families register where their model lives: bert / roberta / albert in encoder.py, electra in electra.py,
t5 in t5.py, bart in bart.py (importing `modeling` registers them). A plugin registers its own with
`register_family(FamilySpec(...))` plus its training task with `trainer.losses.register_task` (docs/extending.md).

This module imports nothing but modeling/config.py (every family module imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import PRESETS, ModelConfig, ModelConfigError, check_standard_ffn


@dataclass(frozen=True)
class HFPart:
    """One transformers model an export writes (ELECTRA writes two: discriminator, then generator)."""

    hf_class: str
    """transformers class name, e.g. 'BertForMaskedLM'."""
    config: Callable[[ModelConfig], Any]
    """Our config -> the transformers config object of the same architecture."""
    rename: tuple[tuple[str, str], ...] = ()
    """(ours, theirs) key renames; a name ending in '.' renames a prefix, otherwise one exact key; a '*' stands for
    one dotted component (a layer index) and is carried over, in order, to the '*'s of the other name. The longest
    matching pattern wins."""
    fuse: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(ours, (theirs, ...)) fused projections, patterns as in `rename`: export splits our tensor along dim 0 into
    equal chunks named theirs in order (e.g. 'qkv.' -> 'query.', 'key.', 'value.'); import concatenates them back."""
    drop: tuple[str, ...] = ()
    """Prefixes of our keys this transformers model does not hold."""
    tied: dict[str, str] = field(default_factory=dict)
    """transformers key -> our key it copies (tied heads that have no key of their own here)."""
    subdir: str = ""
    """Where the export writes it, under the export directory ('' = the directory itself)."""


@dataclass(frozen=True)
class HFAdapter:
    """The family's transformers boundary: export classes and weight-name maps, and (optionally) import."""

    parts: tuple[HFPart, ...]
    """What an export writes; `parts[0]` is the model an import reads back."""
    model_type: str = ""
    """transformers `config.json` `model_type` that `config_from_hf` maps to this family ('' = export only)."""
    from_hf_config: Callable[[dict[str, Any], str], ModelConfig] | None = None
    """(raw config.json, its path for messages) -> our ModelConfig; None = export only."""
    bare_prefix: str = ""
    """Key prefix that a bare encoder checkpoint (e.g. BertModel) lacks; `load_hf` adds it."""
    fix_hf_model: Callable[[Any, ModelConfig], None] | None = None
    """Adjusts the freshly built transformers model before our weights are loaded into it (T5 v1.1's untied head)."""
    post_layer_norm_only: bool = True
    """transformers' class has no pre-LN variant: an export of model.pre_layer_norm=true is refused."""


@dataclass(frozen=True)
class FamilySpec:
    """Everything the rest of cloze needs to know about one model family."""

    name: str
    """The value of `model.family`."""
    build: Callable[[ModelConfig], nn.Module]
    """The pretraining model (config -> module)."""
    objectives: tuple[str, ...]
    """Shard objectives it trains on (data_pipeline/objectives.py names); the first is its own pretraining one."""
    param_count: Callable[[ModelConfig], int]
    """Trainable parameters of `build(cfg)`, each shared tensor counted once (modeling/flops.py)."""
    flops_per_token: Callable[[ModelConfig, int, int, float], float]
    """(cfg, seq_len, target_len, mask_fraction) -> training FLOPs per input token, for MFU (modeling/flops.py)."""
    framing: str = "encoder"
    """Packing kind of its pretraining data (data_pipeline/packing.py): 'encoder', 'raw' (T5) or 'bart'."""
    seq2seq: bool = False
    """An encoder-decoder (text to text): fine-tunes by generating label words, is scored by seq2seq loss."""
    decoder_start: str = ""
    """Encoder-decoders: the special token the decoder starts from ('pad' for T5, 'eos' for BART)."""
    learned_positions: bool = True
    """Positions come from a table of model.max_position_embeddings rows (T5's relative bias has no limit)."""
    check_config: Callable[[ModelConfig], None] = check_standard_ffn
    """Family-specific validation of a ModelConfig, called from its `__post_init__`; raises ModelConfigError."""
    configure: Callable[[ModelConfig], None] | None = None
    """Fix-up once the dataset's special ids are in the config (RoBERTa: positions start after the pad id)."""
    check_dataset: Callable[[ModelConfig, str, str], None] | None = None
    """(cfg, the dataset's tokenizer sha256, the dataset's directory) -> raises ModelConfigError when the model
    cannot train on that dataset for a family reason (DistilBERT: a teacher trained with another tokenizer)."""
    languages: bool = False
    """The model embeds a language id per token (XLM): the run takes `model.languages` from the datasets'
    manifests when it is empty, and the loader gives every sample a `langs` member in those ids."""
    hf: HFAdapter | None = None
    """transformers export/import; None = the family cannot be exported."""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Size presets it adds to `modeling.config.PRESETS` (each names `family`)."""


FAMILIES: dict[str, FamilySpec] = {}
"""The registered families, by name, in registration order."""


def register_family(spec: FamilySpec, replace: bool = False) -> FamilySpec:
    """Register `spec` (and its presets); registering a taken name is an error unless `replace`."""
    if spec.name in FAMILIES and not replace and FAMILIES[spec.name] is not spec:
        raise ModelConfigError(f"model family {spec.name!r} is registered twice; pick another name")
    for preset, values in spec.presets.items():
        if values.get("family") != spec.name:
            raise ModelConfigError(f"preset {preset!r} of family {spec.name!r} must set family={spec.name!r}")
        PRESETS[preset] = values
    FAMILIES[spec.name] = spec
    return spec


def get_family(name: str) -> FamilySpec:
    """The registered family `name`; an unknown name is an error listing the registered ones."""
    spec = FAMILIES.get(name)
    if spec is None:
        raise ModelConfigError(
            f"model.family={name!r} is not registered; choose one of {', '.join(FAMILIES)} "
            "(a plugin registers its own with modeling.registry.register_family, see docs/extending.md)"
        )
    return spec


def family_for_model_type(model_type: str) -> FamilySpec | None:
    """The family whose transformers adapter imports `config.json` `model_type`, if any."""
    for spec in FAMILIES.values():
        if spec.hf is not None and spec.hf.from_hf_config is not None and spec.hf.model_type == model_type:
            return spec
    return None


__all__ = [
    "FamilySpec",
    "HFAdapter",
    "HFPart",
    "FAMILIES",
    "register_family",
    "get_family",
    "family_for_model_type",
]
