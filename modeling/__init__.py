"""Model families for autoencoding pretraining. Imports neither deepspeed nor torch.distributed."""

from __future__ import annotations

from torch import nn

from .bart import BartForPretraining
from .config import PRESETS, ModelConfig, ModelConfigError
from .electra import ElectraForPretraining, ElectraOutput
from .encoder import BertForPretraining, MLMOutput
from .t5 import Seq2SeqOutput, T5ForPretraining


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model for `cfg.family`."""
    if cfg.vocab_size <= 0:
        raise ModelConfigError(
            "model.vocab_size is 0: set it, or build through the trainer, which takes it from the dataset"
        )
    if cfg.family in ("bert", "roberta", "albert"):
        return BertForPretraining(cfg)
    if cfg.family == "electra":
        return ElectraForPretraining(cfg)
    if cfg.family == "t5":
        return T5ForPretraining(cfg)
    if cfg.family == "bart":
        return BartForPretraining(cfg)
    raise ModelConfigError(f"model.family={cfg.family!r} is not supported")


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelConfigError",
    "BertForPretraining",
    "MLMOutput",
    "ElectraForPretraining",
    "ElectraOutput",
    "T5ForPretraining",
    "BartForPretraining",
    "Seq2SeqOutput",
    "build_model",
]
