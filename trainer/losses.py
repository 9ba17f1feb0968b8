"""Losses and their metrics, one task per family. Metrics are sums so that micro-batches and ranks add up.

| task    | families              | batch keys used                                      | metrics (eval adds baseline_accuracy for mlm) |
|---------|-----------------------|------------------------------------------------------|-----------------------------------------------|
| mlm     | bert, roberta, albert | input_ids, labels, attention_mask?                   | loss, mlm_accuracy                            |
| electra | electra               | input_ids, labels, attention_mask?                   | loss, gen_loss, rtd_loss, mlm_accuracy, rtd_accuracy, replaced_fraction |
| seq2seq | t5, bart              | input_ids, decoder_input_ids, labels, attention_mask? | loss, seq2seq_accuracy                        |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modeling import MLMOutput


@dataclass
class LossResult:
    loss: torch.Tensor
    """Mean loss of this micro-batch (what backward runs on)."""
    sums: dict[str, float]
    """Additive statistics; `Task.summarize` turns their totals into metrics."""


def _inputs(batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in keys if k in batch}


def mlm_loss(out: MLMOutput, baseline_id: int | None = None) -> LossResult:
    assert out.targets is not None, "mlm_loss needs labels"
    logits = out.logits.float()  # (M, V)
    targets = out.targets  # (M,)
    if targets.numel() == 0:
        return LossResult(
            logits.sum() * 0.0, {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "baseline_correct": 0.0}
        )
    loss = F.cross_entropy(logits, targets)
    with torch.no_grad():
        n = float(targets.numel())
        sums = {
            "loss_sum": loss.item() * n,
            "correct": float((logits.argmax(-1) == targets).sum()),
            "count": n,
        }
        sums["baseline_correct"] = float((targets == baseline_id).sum()) if baseline_id is not None else 0.0
    return LossResult(loss, sums)


class Task:
    name = ""
    keys: tuple[str, ...] = ()

    def __call__(
        self, forward: Any, batch: dict[str, torch.Tensor], baseline_id: int | None = None
    ) -> LossResult:
        raise NotImplementedError

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError


class MLMTask(Task):
    """MLM, plus sentence-order / next-sentence prediction when the batch carries sentence labels."""

    name = "mlm"
    keys = ("input_ids", "labels", "attention_mask", "token_type_ids")

    def __call__(
        self, forward: Any, batch: dict[str, torch.Tensor], baseline_id: int | None = None
    ) -> LossResult:
        out = forward(**_inputs(batch, self.keys))
        r = mlm_loss(out, baseline_id)
        if out.sentence_logits is not None and "sentence_label" in batch:
            target = batch["sentence_label"]
            sentence_loss = F.cross_entropy(out.sentence_logits.float(), target)
            r.loss = r.loss + sentence_loss
            with torch.no_grad():
                n = float(target.numel())
                r.sums.update(
                    sentence_loss_sum=sentence_loss.item() * n,
                    sentence_count=n,
                    sentence_correct=float((out.sentence_logits.argmax(-1) == target).sum()),
                )
        return r

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s.get("count", 0.0), 1.0)
        out = {
            "loss": s["loss_sum"] / n,
            "mlm_accuracy": s["correct"] / n,
            "masked_tokens": s.get("count", 0.0),
        }
        if "baseline_correct" in s:
            out["baseline_accuracy"] = s["baseline_correct"] / n
        if s.get("sentence_count"):
            k = s["sentence_count"]
            out["sentence_loss"] = s["sentence_loss_sum"] / k
            out["sentence_accuracy"] = s["sentence_correct"] / k
            out["loss"] += out["sentence_loss"]
        return out


class ElectraTask(Task):
    """Generator MLM + weighted replaced-token detection, both from one forward of the combined model."""

    name = "electra"
    keys = ("input_ids", "labels", "attention_mask", "token_type_ids")

    def __call__(
        self, forward: Any, batch: dict[str, torch.Tensor], baseline_id: int | None = None
    ) -> LossResult:
        out = forward(**_inputs(batch, self.keys))
        with torch.no_grad():
            m = float(out.targets.numel())
            real = out.real
            n = float(real.sum())
            rtd_pred = (out.rtd_logits.float() > 0).float()
            sums = {
                "loss_sum": out.loss.item(),
                "steps": 1.0,
                "gen_loss_sum": out.gen_loss.item() * m,
                "correct": float((out.gen_logits.argmax(-1) == out.targets).sum()),
                "count": m,
                "rtd_loss_sum": out.rtd_loss.item() * n,
                "rtd_correct": float((rtd_pred == out.rtd_labels)[real].sum()),
                "rtd_count": n,
                "replaced": float(out.rtd_labels[real].sum()),
            }
            if baseline_id is not None:
                sums["baseline_correct"] = float((out.targets == baseline_id).sum())
        return LossResult(out.loss, sums)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        m, n = max(s["count"], 1.0), max(s["rtd_count"], 1.0)
        out = {
            "loss": s["loss_sum"] / max(s["steps"], 1.0),
            "gen_loss": s["gen_loss_sum"] / m,
            "rtd_loss": s["rtd_loss_sum"] / n,
            "mlm_accuracy": s["correct"] / m,
            "rtd_accuracy": s["rtd_correct"] / n,
            "replaced_fraction": s["replaced"] / n,
            "masked_tokens": s["count"],
        }
        if "baseline_correct" in s:
            out["baseline_accuracy"] = s["baseline_correct"] / m
        return out


class Seq2SeqTask(Task):
    """Teacher-forced cross-entropy over the target tokens (labels -100 are ignored)."""

    name = "seq2seq"
    keys = ("input_ids", "decoder_input_ids", "attention_mask")

    def __call__(
        self, forward: Any, batch: dict[str, torch.Tensor], baseline_id: int | None = None
    ) -> LossResult:
        logits = forward(**_inputs(batch, self.keys)).logits.float()  # (B, T, V)
        labels = batch["labels"]  # (B, T)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        with torch.no_grad():
            keep = labels != -100
            n = float(keep.sum())
            sums = {
                "loss_sum": loss.item() * n,
                "correct": float((logits.argmax(-1) == labels)[keep].sum()),
                "count": n,
            }
        return LossResult(loss, sums)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s["count"], 1.0)
        return {"loss": s["loss_sum"] / n, "seq2seq_accuracy": s["correct"] / n, "target_tokens": s["count"]}


def task_for(family: str) -> Task:
    if family in ("bert", "roberta", "albert"):
        return MLMTask()
    if family == "electra":
        return ElectraTask()
    if family in ("t5", "bart"):
        return Seq2SeqTask()
    raise ValueError(f"no training task for model.family={family!r}")


# Which dataset objectives each family trains on (checked before anything starts).
COMPATIBLE = {
    "bert": ("mlm", "wwm", "span", "tokens"),
    "roberta": ("mlm", "wwm", "span", "tokens"),
    "albert": ("mlm", "wwm", "span", "tokens"),
    "electra": ("electra", "mlm", "wwm", "span", "tokens"),
    "t5": ("t5",),
    "bart": ("bart",),
}
