"""Losses and their metrics, one task per family (registered in `TASKS`, keyed by model.family). Metrics are sums so that micro-batches and ranks add up.

| task    | families              | batch keys used                                      | metrics (eval adds baseline_accuracy for mlm) |
|---------|-----------------------|------------------------------------------------------|-----------------------------------------------|
| mlm     | bert, roberta, albert, deberta, deberta_v1 | input_ids, labels, attention_mask? | loss, mlm_accuracy             |
| electra | electra, deberta_rtd  | input_ids, labels, attention_mask?                   | loss, gen_loss, rtd_loss, mlm_accuracy, rtd_accuracy, replaced_fraction |
| seq2seq | t5, bart              | input_ids, decoder_input_ids, labels, attention_mask? | loss, seq2seq_accuracy                        |
| distill | distilbert with model.teacher (without: mlm) | input_ids, labels, attention_mask? | loss, ce_loss, mlm_loss, cos_loss, mlm_accuracy, teacher_mlm_accuracy |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modeling import MLMOutput, ModelConfig

from .config import ConfigError


@dataclass
class LossResult:
    loss: torch.Tensor
    """What backward runs on: each term's summed loss over this micro-batch divided by that term's denominator
    (`norm`), or by this micro-batch's own target count when no `norm` is given (a plain mean)."""
    sums: dict[str, float]
    """Additive statistics; `Task.summarize` turns their totals into metrics."""
    carry: dict[str, torch.Tensor] | None = None
    """A phased task (`Task.phases`): this micro-batch's input to the next phase."""
    correct: torch.Tensor | None = None
    """(M,) bool: the argmax is the target, at each MLM target (computed once, reused by `position_kind_sums`)."""


def _inputs(batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in keys if k in batch}


def _denominator(norm: dict[str, float] | None, key: str, local: float) -> float:
    """The divisor of a loss term's sum: the step's global one from `norm`, else this micro-batch's own count."""
    return norm[key] if norm is not None else max(local, 1.0)


def mlm_loss(
    out: MLMOutput, baseline_id: int | None = None, norm: dict[str, float] | None = None
) -> LossResult:
    assert out.targets is not None, "mlm_loss needs labels"
    logits = out.logits.float()  # (M, V)
    targets = out.targets  # (M,)
    if targets.numel() == 0:
        empty = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        if baseline_id is not None:
            empty["baseline_correct"] = 0.0
        return LossResult(logits.sum() * 0.0, empty)
    n = float(targets.numel())
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    loss = loss_sum / _denominator(norm, "count", n)
    with torch.no_grad():
        correct = logits.argmax(-1) == targets
        sums = {"loss_sum": loss_sum.item(), "correct": float(correct.sum()), "count": n}
        if baseline_id is not None:
            sums["baseline_correct"] = float((targets == baseline_id).sum())
    return LossResult(loss, sums, correct=correct)


class Task:
    """A family's training loss. Each loss term is a sum over its targets divided by a denominator: the step's
    global target count of that term when the loop passes `norm` (fairseq / Megatron: every token of the global
    batch weighs the same, whatever micro-batch or rank it lands in), else this micro-batch's own count."""

    name = ""
    keys: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    """The optimizer steps of one training step, in order, when more than one (DeBERTa-v3's decoupled
    generator/discriminator updates): the loop runs every micro-batch through phase i (`__call__(..., phase=)`,
    whose LossResult.carry is that micro-batch's input to phase i + 1), then steps phase i's parameters
    (Engine.step(phase=)). Empty: one forward/backward per micro-batch and one step. Evaluation never passes a
    phase."""
    mask_id: int | None = None
    """The [MASK] id (the dataset's special token): MLM metrics split by position kind when set (see
    `position_kind_sums`)."""

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Targets per loss term in `batch`, read from the batch alone (before any forward); the keys of `norm`.
        The same keys on every rank for the same data."""
        raise NotImplementedError

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
        phase: str = "",
    ) -> LossResult:
        raise NotImplementedError

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError


class MLMTask(Task):
    """MLM, plus sentence-order / next-sentence prediction when the batch carries sentence labels."""

    name = "mlm"
    keys: tuple[str, ...] = ("input_ids", "labels", "attention_mask", "token_type_ids")

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """MLM: masked targets (labels != -100); SOP / NSP: sentences (one label per sequence)."""
        out = {"count": float((batch["labels"] != -100).sum())}
        if "sentence_label" in batch:
            out["sentence_count"] = float(batch["sentence_label"].numel())
        return out

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
        phase: str = "",
    ) -> LossResult:
        out = forward(**_inputs(batch, self.keys))
        r = mlm_loss(out, baseline_id, norm)
        r.sums.update(
            position_kind_sums(batch, out.logits, out.targets, self.mask_id, baseline_id, correct=r.correct)
        )
        if out.sentence_logits is not None and "sentence_label" in batch:
            target = batch["sentence_label"]
            n = float(target.numel())
            sentence_sum = F.cross_entropy(out.sentence_logits.float(), target, reduction="sum")
            r.loss = r.loss + sentence_sum / _denominator(norm, "sentence_count", n)
            with torch.no_grad():
                r.sums.update(
                    sentence_loss_sum=sentence_sum.item(),
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
        out.update(position_kind_metrics(s))
        return out


def _rtd_sums(
    logits: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, rtd_loss: torch.Tensor
) -> dict[str, float]:
    """The discriminator's replaced-token statistics over the non-pad positions (joint or decoupled)."""
    n = float(real.sum())
    pred = (logits.float() > 0).float()
    return {
        "rtd_loss_sum": rtd_loss.item() * n,
        "rtd_correct": float((pred == labels)[real].sum()),
        "rtd_count": n,
        "replaced": float(labels[real].sum()),
    }


class LongformerMLMTask(MLMTask):
    """MLM with Longformer's global-attention mask passed on when the batch carries one (written by `cloze shards
    --global-tokens`); without it every token attends locally."""

    keys = (*MLMTask.keys, "global_attention_mask")


class ElectraTask(Task):
    """Generator MLM + weighted replaced-token detection, both from one forward of the combined model (joint), or
    in two phases with a step after each (decoupled: DeBERTa-v3's default)."""

    name = "electra"
    keys = ("input_ids", "labels", "attention_mask", "token_type_ids")

    def __init__(self, rtd_weight: float = 50.0, decoupled: bool = False) -> None:
        self.rtd_weight = rtd_weight
        """model.rtd_weight: the logged loss is gen_loss + rtd_weight x rtd_loss, as the model weighs them."""
        self.phases = ("generator", "discriminator") if decoupled else ()
        """DeBERTa-v3's decoupled updates (model.decoupled_training): a generator step, then a discriminator step."""

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Generator MLM: masked targets; RTD: every non-pad token (ELECTRA weighs its sigmoid loss by input_mask,
        google-research/electra pretrain/pretrain_helpers.py + run_pretraining.py `_get_discriminator_output`)."""
        mask = batch.get("attention_mask")
        real = float(mask.sum()) if mask is not None else float(batch["input_ids"].numel())
        return {"count": float((batch["labels"] != -100).sum()), "rtd_count": real}

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
        phase: str = "",
    ) -> LossResult:
        if phase == "generator":
            return self._generator_step(forward, batch, baseline_id, norm)
        if phase == "discriminator":
            return self._discriminator_step(forward, batch, norm)
        out = forward(**_inputs(batch, self.keys))
        m = float(out.targets.numel())
        real = out.real
        n = float(real.sum())
        loss = out.loss
        if norm is not None:
            # The model returns each term's mean over this micro-batch; mean x local count = the term's sum.
            gen, rtd = out.gen_loss * (m / norm["count"]), out.rtd_loss * (n / norm["rtd_count"])
            loss = gen + self.rtd_weight * rtd
        with torch.no_grad():
            sums = {"loss_sum": out.loss.item(), "steps": 1.0}
            sums.update(self._generator_sums(batch, out.gen_logits, out.targets, out.gen_loss, baseline_id))
            sums.update(_rtd_sums(out.rtd_logits, out.rtd_labels, real, out.rtd_loss))
        return LossResult(loss, sums)

    def _generator_sums(
        self,
        batch: dict[str, torch.Tensor],
        logits: torch.Tensor,
        targets: torch.Tensor,
        gen_loss: torch.Tensor,
        baseline_id: int | None,
    ) -> dict[str, float]:
        """The generator's MLM statistics at the masked positions (joint or decoupled)."""
        m = float(targets.numel())
        correct = logits.argmax(-1) == targets
        sums = {"gen_loss_sum": gen_loss.item() * m, "correct": float(correct.sum()), "count": m}
        if baseline_id is not None:
            sums["baseline_correct"] = float((targets == baseline_id).sum())
        sums.update(position_kind_sums(batch, logits, targets, self.mask_id, baseline_id, correct=correct))
        return sums

    def _generator_step(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None,
        norm: dict[str, float] | None,
    ) -> LossResult:
        """Decoupled phase 1 (rtd_task.py `g_loss_fn`): the generator's MLM loss; carries its replacements."""
        out = forward(**_inputs(batch, self.keys), phase="generator")
        m = float(out.targets.numel())
        loss = out.loss * (m / norm["count"]) if norm is not None else out.loss
        with torch.no_grad():
            sums = {"loss_sum": out.loss.item(), "steps": 1.0}
            sums.update(self._generator_sums(batch, out.gen_logits, out.targets, out.loss, baseline_id))
        carry = {"input_ids": out.replaced.input_ids, "rtd_labels": out.replaced.labels}
        carry.update(_inputs(batch, ("attention_mask", "token_type_ids")))
        return LossResult(loss, sums, carry)

    def _discriminator_step(
        self, forward: Any, batch: dict[str, torch.Tensor], norm: dict[str, float] | None
    ) -> LossResult:
        """Decoupled phase 2 (rtd_task.py `d_loss_fn`): rtd_weight x the discriminator's RTD loss on the
        generator's replacements (`batch`: the generator phase's carry)."""
        out = forward(**batch, phase="discriminator")
        n = float(out.real.sum())
        loss = self.rtd_weight * (out.loss * (n / norm["rtd_count"]) if norm is not None else out.loss)
        with torch.no_grad():
            sums = {"loss_sum": self.rtd_weight * out.loss.item()}
            sums.update(_rtd_sums(out.rtd_logits, out.rtd_labels, out.real, out.loss))
        return LossResult(loss, sums)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        m, n = max(s["count"], 1.0), max(s["rtd_count"], 1.0)
        out = {
            # The true token means over everything summed (what the normalised loss trains on).
            "loss": s["gen_loss_sum"] / m + self.rtd_weight * s["rtd_loss_sum"] / n,
            "gen_loss": s["gen_loss_sum"] / m,
            "rtd_loss": s["rtd_loss_sum"] / n,
            "mlm_accuracy": s["correct"] / m,
            "rtd_accuracy": s["rtd_correct"] / n,
            "replaced_fraction": s["replaced"] / n,
            "masked_tokens": s["count"],
        }
        if "baseline_correct" in s:
            out["baseline_accuracy"] = s["baseline_correct"] / m
        out.update(position_kind_metrics(s))
        return out


class Seq2SeqTask(Task):
    """Teacher-forced cross-entropy over the target tokens (labels -100 are ignored)."""

    name = "seq2seq"
    keys = ("input_ids", "decoder_input_ids", "attention_mask")

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Target tokens (labels != -100)."""
        return {"count": float((batch["labels"] != -100).sum())}

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
        phase: str = "",
    ) -> LossResult:
        logits = forward(**_inputs(batch, self.keys)).logits.float()  # (B, T, V)
        labels = batch["labels"]  # (B, T)
        keep = labels != -100
        n = float(keep.sum())
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        loss = loss_sum / _denominator(norm, "count", n)
        with torch.no_grad():
            sums = {
                "loss_sum": loss_sum.item(),
                "correct": float((logits.argmax(-1) == labels)[keep].sum()),
                "count": n,
            }
        return LossResult(loss, sums)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s["count"], 1.0)
        return {"loss": s["loss_sum"] / n, "seq2seq_accuracy": s["correct"] / n, "target_tokens": s["count"]}


class DistillTask(Task):
    """DistilBERT's distillation loss (transformers examples/research_projects/distillation/distiller.py `step`):

        alpha_ce x T^2 x KL(softmax(teacher/T) || softmax(student/T))   over the non-pad tokens (or the masked ones)
      + alpha_mlm x cross-entropy of the student at the masked positions
      + alpha_cos x (1 - cos(student's, teacher's last hidden state))  over the non-pad tokens

    The reference averages each term over its rows in one batch (KLDivLoss 'batchmean', CrossEntropyLoss and
    CosineEmbeddingLoss 'mean'). Here, as every cloze task does, each term is its sum over this micro-batch divided
    by the global count of its rows (`counts`: 'count' masked, 'ce_count' distillation rows, 'cos_count' non-pad),
    so that a token weighs the same on every micro-batch and rank; with one micro-batch on one rank it is the
    reference's value (tests/test_distilbert.py). The reference's own on-the-fly masking (token-frequency-smoothed,
    exponent 0.7) is not ported: the student reads the dataset's masking (data_pipeline/objectives.py)."""

    name = "distill"
    keys = ("input_ids", "labels", "attention_mask")

    def __init__(self, cfg: ModelConfig) -> None:
        self.alpha_ce, self.alpha_mlm, self.alpha_cos = cfg.alpha_ce, cfg.alpha_mlm, cfg.alpha_cos
        self.temperature = cfg.temperature
        self.restrict_ce_to_mask = cfg.restrict_ce_to_mask

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        masked = float((batch["labels"] != -100).sum())
        mask = batch.get("attention_mask")
        real = float(mask.sum()) if mask is not None else float(batch["input_ids"].numel())
        return {"count": masked, "ce_count": masked if self.restrict_ce_to_mask else real, "cos_count": real}

    def __call__(
        self,
        forward: Any,
        batch: dict[str, torch.Tensor],
        baseline_id: int | None = None,
        norm: dict[str, float] | None = None,
        phase: str = "",
    ) -> LossResult:
        out = forward(**_inputs(batch, self.keys))
        T = self.temperature
        s_ce, t_ce = out.student_ce.float(), out.teacher_ce.float()  # (R, V)
        ce_sum = F.kl_div(F.log_softmax(s_ce / T, -1), F.softmax(t_ce / T, -1), reduction="sum") * T**2
        logits, targets = out.logits.float(), out.targets  # (M, V), (M,)
        mlm_sum = F.cross_entropy(logits, targets, reduction="sum")
        s_h, t_h = out.student_hidden.float(), out.teacher_hidden.float()  # (C, H)
        cos_sum = F.cosine_embedding_loss(s_h, t_h, s_h.new_ones(s_h.shape[0]), reduction="sum")
        m, r, c = float(targets.numel()), float(s_ce.shape[0]), float(s_h.shape[0])
        loss = (
            self.alpha_ce * ce_sum / _denominator(norm, "ce_count", r)
            + self.alpha_mlm * mlm_sum / _denominator(norm, "count", m)
            + self.alpha_cos * cos_sum / _denominator(norm, "cos_count", c)
        )
        with torch.no_grad():
            correct = logits.argmax(-1) == targets
            sums = {
                "ce_loss_sum": ce_sum.item(),
                "mlm_loss_sum": mlm_sum.item(),
                "cos_loss_sum": cos_sum.item(),
                "count": m,
                "ce_count": r,
                "cos_count": c,
                "correct": float(correct.sum()),
                "teacher_correct": float((out.teacher_logits.argmax(-1) == targets).sum()),
            }
            if baseline_id is not None:
                sums["baseline_correct"] = float((targets == baseline_id).sum())
            sums.update(
                position_kind_sums(batch, logits, targets, self.mask_id, baseline_id, correct=correct)
            )
        return LossResult(loss, sums)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        m, r, c = (max(s.get(k, 0.0), 1.0) for k in ("count", "ce_count", "cos_count"))
        out = {
            "ce_loss": s["ce_loss_sum"] / r,
            "mlm_loss": s["mlm_loss_sum"] / m,
            "cos_loss": s["cos_loss_sum"] / c,
            "mlm_accuracy": s["correct"] / m,
            "teacher_mlm_accuracy": s["teacher_correct"] / m,
            "masked_tokens": s.get("count", 0.0),
        }
        out["loss"] = (
            self.alpha_ce * out["ce_loss"]
            + self.alpha_mlm * out["mlm_loss"]
            + self.alpha_cos * out["cos_loss"]
        )
        if "baseline_correct" in s:
            out["baseline_accuracy"] = s["baseline_correct"] / m
        out.update(position_kind_metrics(s))
        return out


class XLMMLMTask(MLMTask):
    """MLM / TLM for XLM (facebookresearch/XLM xlm/trainer.py `mlm_step`: the model reads `langs` and `positions`):
    each token's language id (`langs`) and position (`position_ids`, restarting at a TLM pair's second sentence) are
    passed on when the batch carries them; XLM has no token types."""

    keys = (*(k for k in MLMTask.keys if k != "token_type_ids"), "langs", "position_ids")


TaskFactory = Callable[[ModelConfig], Task]
"""The model's config -> a fresh training task for it."""

TASKS: dict[str, TaskFactory] = {}
"""Each registered model family's training task, by family name (the trainer's half of modeling/registry.py:
losses stay in trainer/, which modeling/ never imports)."""


def register_task(family: str, factory: TaskFactory) -> None:
    """The training task of model family `family` (a plugin registers its own family's here too)."""
    TASKS[family] = factory


def task_for(model: ModelConfig | str, rtd_weight: float | None = None) -> Task:
    """The family's task. `model` is the model's config or just its family name; `rtd_weight` overrides
    model.rtd_weight (ELECTRA's weight of the replaced-token detection loss)."""
    cfg = ModelConfig(family=model) if isinstance(model, str) else model
    if rtd_weight is not None:
        cfg = dataclasses.replace(cfg, rtd_weight=rtd_weight)
    factory = TASKS.get(cfg.family)
    if factory is None:
        raise ConfigError(
            f"model.family={cfg.family!r} has no training task; registered: {', '.join(TASKS)} "
            "(register one with trainer.losses.register_task)"
        )
    return factory(cfg)


register_task("bert", lambda cfg: MLMTask())
register_task("roberta", lambda cfg: MLMTask())
register_task("xlm_roberta", lambda cfg: MLMTask())
register_task("xlm", lambda cfg: XLMMLMTask())
register_task("albert", lambda cfg: MLMTask())
register_task("longformer", lambda cfg: LongformerMLMTask())
register_task("electra", lambda cfg: ElectraTask(cfg.rtd_weight))
register_task("deberta", lambda cfg: MLMTask())
register_task("deberta_v1", lambda cfg: MLMTask())
register_task("deberta_rtd", lambda cfg: ElectraTask(cfg.rtd_weight, decoupled=cfg.decoupled_training))
register_task("t5", lambda cfg: Seq2SeqTask())
register_task("mt5", lambda cfg: Seq2SeqTask())
register_task("bart", lambda cfg: Seq2SeqTask())
register_task("distilbert", lambda cfg: DistillTask(cfg) if cfg.teacher else MLMTask())


POSITION_KINDS = {"mask": "[MASK]", "random": "random", "kept": "unchanged"}
"""The kinds of MLM target positions under BERT's 80/10/10 corruption (google-research/bert
create_pretraining_data.py `create_masked_lm_predictions`): replaced by [MASK], by a random token, or left as is."""


def position_kind_sums(
    batch: dict[str, torch.Tensor],
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask_id: int | None,
    baseline_id: int | None = None,
    correct: torch.Tensor | None = None,
) -> dict[str, float]:
    """Sums per kind of target position, each next to its trivial baseline's, so that the figure that shows
    learning (accuracy at [MASK] positions) is not hidden in the total.

    `logits` (M, V) and `targets` (M,) are the model's at the labelled positions in row-major order (what
    `modeling.encoder.select_labelled` returns). The kind is read from the input at each position: the [MASK] id ->
    `mask`; the label itself -> `kept` (a random replacement that drew the original token counts here too: the
    model cannot tell it apart); anything else -> `random`. Baselines (eval, where `baseline_id` is known): the
    most frequent token at `mask` and `random` positions, copying the input at `kept` ones. The same keys on
    every rank and batch (zeros where a kind is absent); nothing when `mask_id` is None. `correct`: the (M,) bool
    `logits.argmax(-1) == targets` when the caller has it (computed here otherwise). The training counts are read
    in one conversion (one device sync on a GPU), without boolean indexing.
    """
    if mask_id is None:
        return {}
    with torch.no_grad():
        flat = batch["labels"].reshape(-1)
        inputs = batch["input_ids"].reshape(-1)[flat != -100]  # (M,), aligned with targets
        if inputs.shape != targets.shape:
            raise ValueError(f"{inputs.numel()} labelled inputs but {targets.numel()} targets")
        kinds = {"mask": inputs == mask_id, "kept": inputs == targets}
        kinds["random"] = ~(kinds["mask"] | kinds["kept"])
        if correct is None:
            correct = (
                logits.argmax(-1).eq(targets)
                if targets.numel()
                else torch.zeros_like(targets, dtype=torch.bool)
            )
        token_loss = (
            F.cross_entropy(logits.float(), targets, reduction="none") if baseline_id is not None else None
        )
        counts = torch.stack([c for where in kinds.values() for c in (where.sum(), (correct & where).sum())])
        values = counts.tolist()
        sums: dict[str, float] = {}
        for i, (kind, where) in enumerate(kinds.items()):
            sums[f"{kind}_count"] = float(values[2 * i])
            sums[f"{kind}_correct"] = float(values[2 * i + 1])
            if token_loss is not None and baseline_id is not None:
                trivial = inputs.eq(targets) if kind == "kept" else targets.eq(baseline_id)
                sums[f"{kind}_baseline_correct"] = float(trivial[where].sum())
                sums[f"{kind}_loss_sum"] = float(token_loss[where].sum()) if targets.numel() else 0.0
    return sums


def position_kind_metrics(s: dict[str, float]) -> dict[str, float]:
    """`<kind>_accuracy`, `<kind>_tokens` and (eval) `<kind>_loss`, `<kind>_baseline_accuracy` from summed
    `position_kind_sums`; in eval also `baseline_accuracy` of the whole: the trivial predictor that copies the
    input and predicts the most frequent token where the input is [MASK] (BERT's total, `mlm_accuracy`, counts
    every selected position, so 80/10/10 corruption credits it with copying at the unchanged 10%)."""
    if "mask_count" not in s:
        return {}
    out: dict[str, float] = {}
    for kind in POSITION_KINDS:
        n = s[f"{kind}_count"]
        out[f"{kind}_tokens"] = n
        out[f"{kind}_accuracy"] = s[f"{kind}_correct"] / max(n, 1.0)
        if f"{kind}_baseline_correct" in s:
            out[f"{kind}_baseline_accuracy"] = s[f"{kind}_baseline_correct"] / max(n, 1.0)
            out[f"{kind}_loss"] = s[f"{kind}_loss_sum"] / max(n, 1.0)
    if "mask_baseline_correct" in s:
        total = max(s["mask_count"] + s["random_count"] + s["kept_count"], 1.0)
        out["baseline_accuracy"] = (s["mask_baseline_correct"] + s["kept_baseline_correct"]) / total
    return out
