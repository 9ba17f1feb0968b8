"""Model families for autoencoding pretraining. Imports neither deepspeed nor torch.distributed."""

from __future__ import annotations

from torch import nn

from .config import PRESETS, ModelConfig, ModelConfigError, model_config_from_dict
from .encoder import BertForPretraining, MLMOutput


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model for `cfg.family`."""
    if cfg.vocab_size <= 0:
        raise ModelConfigError(
            "model.vocab_size is 0: set it, or build through the trainer, which takes it from the dataset"
        )
    if cfg.family == "bert":
        return BertForPretraining(cfg)
    raise ModelConfigError(f"model.family={cfg.family!r} is not supported")


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelConfigError",
    "model_config_from_dict",
    "BertForPretraining",
    "MLMOutput",
    "build_model",
]
