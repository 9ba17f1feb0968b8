"""A toy model family and a toy objective registered from outside the package:
`cloze train --plugin tests.toy_family model.preset=toy` on shards written with objective `toy-nth`.

It shows (and tests/test_registry.py checks) that a family is one model + one `FamilySpec` + one training task,
with no production file changed: the plugin module is imported on every rank before the config is loaded, and
registering here is all the trainer needs. The model is a bag-of-embeddings masked-token predictor (embedding ->
GELU MLP -> logits tied to the embedding), trained on the same MLM shards as BERT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from data_pipeline.objectives import IGNORE, Packed, Vocab
from data_pipeline.registry import ObjectiveSpec, objective_names, register_objective, unregister_objective
from modeling import MLMOutput, ModelConfig
from modeling.encoder import select_labelled
from modeling.registry import FAMILIES, FamilySpec, register_family
from trainer.callbacks import Callback
from trainer.losses import TASKS, LossResult, Task, mlm_loss, register_task


class ToyForPretraining(nn.Module):
    """input_ids (B, T) -> embedding (B, T, H) -> GELU MLP -> logits over the vocabulary at labelled positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.intermediate_size), nn.GELU())
        self.out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        nn.init.normal_(self.embed.weight, std=cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> MLMOutput:
        h = self.embed(input_ids)  # (B, T, H)
        h = h + self.out(self.mlp(h))  # (B, T, H)
        if labels is None:
            return MLMOutput(h @ self.embed.weight.T, None, h)  # (B, T, V)
        selected, targets, _ = select_labelled(h, labels)  # (M, H), (M,)
        return MLMOutput(selected @ self.embed.weight.T, targets, h)  # (M, V)


def toy_params(cfg: ModelConfig) -> int:
    H, F_ = cfg.hidden_size, cfg.intermediate_size
    return cfg.vocab_size * H + (H * F_ + F_) + (F_ * H + H)


def toy_flops(cfg: ModelConfig, seq_len: int, target_len: int = 0, mask_fraction: float = 0.15) -> float:
    H, F_ = cfg.hidden_size, cfg.intermediate_size
    return 3.0 * (2 * 2 * H * F_ + mask_fraction * 2 * H * cfg.vocab_size)


class ToyTask(Task):
    """Masked-token cross-entropy (the loop's `train/loss`), nothing else."""

    name = "toy"
    keys = ("input_ids", "labels")

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"count": float((batch["labels"] != -100).sum())}

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
    ) -> LossResult:
        out = forward(input_ids=batch["input_ids"], labels=batch["labels"])
        return mlm_loss(out, baseline_id, norm)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s.get("count", 0.0), 1.0)
        return {
            "loss": s["loss_sum"] / n,
            "mlm_accuracy": s["correct"] / n,
            "masked_tokens": s.get("count", 0.0),
        }


TOY = FamilySpec(
    name="toy",
    build=ToyForPretraining,
    objectives=("mlm", "wwm", "span", "toy-nth"),
    param_count=toy_params,
    flops_per_token=toy_flops,
    presets={
        "toy": dict(
            family="toy", hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, hidden_dropout=0.0
        )
    },
)


@dataclass
class ToyNthParams:
    every: int = 5
    """Every `every`-th position after [CLS] is masked and predicted."""


class ToyNth:
    """The toy objective: mask every n-th token (no reference; it only exercises the registries)."""

    def __init__(self, vocab: Vocab, params: ToyNthParams) -> None:
        self.vocab, self.p = vocab, params

    def params(self) -> dict[str, Any]:
        return asdict(self.p)

    def __call__(self, seq: Packed, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = seq.tokens
        labels = np.full(len(tokens), IGNORE, dtype=np.int32)
        labels[:: self.p.every][1:] = tokens[:: self.p.every][1:]
        inputs = tokens.astype(np.int32, copy=True)
        inputs[labels != IGNORE] = self.vocab.mask
        return {"input_ids": inputs, "labels": labels}


TOY_NTH = ObjectiveSpec(
    name="toy-nth",
    params=ToyNthParams,
    build=lambda vocab, seq_len, o: ToyNth(vocab, ToyNthParams(**o)),
    packing="encoder",
    inspect_kind="masked",
)


def register_objective_too() -> None:
    """Register the toy objective (idempotent). Not done at import: tests that list the built-in objectives must
    not see it; the plugin entry point and the test that writes its shards call this."""
    if TOY_NTH.name not in objective_names():
        register_objective(TOY_NTH)


def unregister_objective_too() -> None:
    unregister_objective(TOY_NTH.name)


def register() -> None:
    """Register the toy family and its task (idempotent: a second import or call changes nothing)."""
    if "toy" not in FAMILIES:
        register_family(TOY)
    if "toy" not in TASKS:
        register_task("toy", lambda cfg: ToyTask())


register()


def callbacks() -> list[Callback]:
    """`--plugin tests.toy_family`: registering is the plugin's whole job (the family at import, the objective
    here, on every rank); it adds no callbacks."""
    register_objective_too()
    return []


__all__ = ["TOY", "TOY_NTH", "ToyForPretraining", "ToyNth", "ToyTask", "callbacks", "register"]
