"""Losses and their metrics. Metrics are returned as sums so they can be summed over micro-batches and ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modeling import MLMOutput


@dataclass
class LossResult:
    loss: torch.Tensor
    """Mean loss of this micro-batch (what backward runs on)."""
    sums: dict[str, float]
    """Additive statistics: loss_sum, correct, count (and baseline_correct when a baseline id is given)."""


def mlm_loss(out: MLMOutput, baseline_id: int | None = None) -> LossResult:
    assert out.targets is not None, "mlm_loss needs labels"
    logits = out.logits.float()  # (M, V)
    targets = out.targets  # (M,)
    if targets.numel() == 0:
        loss = logits.sum() * 0.0
        return LossResult(loss, {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "baseline_correct": 0.0})
    loss = F.cross_entropy(logits, targets)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum().item()
        sums = {
            "loss_sum": loss.item() * targets.numel(),
            "correct": float(correct),
            "count": float(targets.numel()),
        }
        if baseline_id is not None:
            sums["baseline_correct"] = float((targets == baseline_id).sum().item())
    return LossResult(loss, sums)
