"""Model families for autoencoding pretraining. Imports neither deepspeed nor torch.distributed.

Importing the package registers the built-in families (modeling/registry.py): each model file registers its own."""

from __future__ import annotations

from torch import nn

from .bart import BartForPretraining
from .config import PRESETS, ModelConfig, ModelConfigError
from .deberta import DebertaForPretraining
from .distilbert import DistilBertForPretraining, DistillationModel
from .electra import ElectraForPretraining, ElectraOutput
from .encoder import BertForPretraining, MLMOutput
from .longformer import LongformerForPretraining
from .registry import FamilySpec, get_family, register_family
from .t5 import Seq2SeqOutput, T5ForPretraining
from .xlm import XLMForPretraining


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model for `cfg.family` (its registered FamilySpec.build)."""
    if cfg.vocab_size <= 0:
        raise ModelConfigError(
            "model.vocab_size is 0: set it, or build through the trainer, which takes it from the dataset"
        )
    return get_family(cfg.family).build(cfg)


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelConfigError",
    "BertForPretraining",
    "MLMOutput",
    "DebertaForPretraining",
    "DistilBertForPretraining",
    "DistillationModel",
    "ElectraForPretraining",
    "ElectraOutput",
    "LongformerForPretraining",
    "T5ForPretraining",
    "BartForPretraining",
    "XLMForPretraining",
    "Seq2SeqOutput",
    "build_model",
    "FamilySpec",
    "get_family",
    "register_family",
]
