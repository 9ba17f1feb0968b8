"""MLM evaluation split by kind of target position ([MASK] / random / unchanged), each next to its trivial
baseline, and evaluation over the whole held-out split (issue 11)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.loader import EvalStream, ShardReader
from data_pipeline.manifest import read_manifest
from modeling import MLMOutput
from modeling.electra import ElectraOutput
from trainer.callbacks import ConsoleCallback, TensorBoardCallback
from trainer.losses import ElectraTask, MLMTask

from .conftest import read_scalars

MASK, V = 6, 32
# One sequence, BERT's 80/10/10 by hand. Labelled positions (label != -100), in order:
#   [MASK] x2 (one predicted right; one whose label is the most frequent token 11),
#   random x2 (input is neither [MASK] nor the label; one right; one with label 11),
#   unchanged x2 (input == label; one right).
INPUTS = [4, MASK, 7, MASK, 20, 8, 21, 13, 9, 14, 5]
LABELS = [-100, 10, -100, 11, 12, -100, 11, 13, -100, 14, -100]
PREDS = [10, 12, 12, 5, 13, 10]  # argmax at the labelled positions
BASELINE = 11


def hand_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    batch = {"input_ids": torch.tensor([INPUTS]), "labels": torch.tensor([LABELS])}
    targets = torch.tensor([x for x in LABELS if x != -100])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(targets), V, generator=g)
    logits[torch.arange(len(targets)), torch.tensor(PREDS)] = 10.0  # the argmax
    return batch, logits, targets


def expected_loss(logits: torch.Tensor, targets: torch.Tensor, rows: list[int]) -> float:
    return float(F.cross_entropy(logits[rows], targets[rows]))


def test_split_metrics_on_a_hand_built_batch() -> None:
    batch, logits, targets = hand_batch()
    task = MLMTask()
    task.mask_id = MASK
    r = task(lambda **kw: MLMOutput(logits, targets), batch, BASELINE)
    m = task.summarize(r.sums)
    assert m["mlm_accuracy"] == pytest.approx(3 / 6)  # BERT's total: every selected position
    assert (m["mask_tokens"], m["random_tokens"], m["kept_tokens"]) == (2, 2, 2)
    assert m["mask_accuracy"] == m["random_accuracy"] == m["kept_accuracy"] == pytest.approx(0.5)
    assert m["mask_baseline_accuracy"] == pytest.approx(0.5)  # label 11 at one [MASK] position
    assert m["random_baseline_accuracy"] == pytest.approx(0.5)
    assert m["kept_baseline_accuracy"] == 1.0  # copying the input is always right there
    # The realisable trivial predictor: most frequent token at [MASK], the input elsewhere.
    assert m["baseline_accuracy"] == pytest.approx((1 + 0 + 2) / 6)
    for kind, rows in {"mask": [0, 1], "random": [2, 3], "kept": [4, 5]}.items():
        assert m[f"{kind}_loss"] == pytest.approx(expected_loss(logits, targets, rows), rel=1e-5)
    assert m["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)


def test_training_sums_carry_no_baseline() -> None:
    """Training batches have no baseline (it is measured in evaluation): no `baseline 0.000` anywhere."""
    batch, logits, targets = hand_batch()
    task = MLMTask()
    task.mask_id = MASK
    m = task.summarize(task(lambda **kw: MLMOutput(logits, targets), batch).sums)
    assert not [k for k in m if "baseline" in k]
    assert m["mask_accuracy"] == pytest.approx(0.5)
    out = io.StringIO()
    metrics = {**m, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0, "data_wait_s": 0.0}
    with redirect_stdout(out):
        ConsoleCallback(1, 10).on_step(1, {**metrics, "step_time_s": 1.0, "memory_gib": 0.1})
    assert "baseline" not in out.getvalue() and "[MASK] 0.500" in out.getvalue()


def test_electra_generator_gets_the_same_split() -> None:
    batch, logits, targets = hand_batch()
    zero = torch.tensor(0.0)
    real = torch.ones(1, len(INPUTS), dtype=torch.bool)
    out = ElectraOutput(
        zero, zero, zero, logits, targets, torch.zeros(1, len(INPUTS)), real.float() * 0, real
    )
    task = ElectraTask()
    task.mask_id = MASK
    m = task.summarize(task(lambda **kw: out, batch, BASELINE).sums)
    assert m["mask_accuracy"] == pytest.approx(0.5) and m["mask_baseline_accuracy"] == pytest.approx(0.5)
    assert m["kept_baseline_accuracy"] == 1.0 and m["mask_tokens"] == 2


def test_console_and_tensorboard_show_the_split(tmp_path: Path) -> None:
    batch, logits, targets = hand_batch()
    task = MLMTask()
    task.mask_id = MASK
    m = task.summarize(task(lambda **kw: MLMOutput(logits, targets), batch, BASELINE).sums)
    m.update(eval_samples=10.0, eval_split_samples=10.0)
    out = io.StringIO()
    with redirect_stdout(out):
        ConsoleCallback(1, 10).on_eval(5, m)
    text = out.getvalue()
    assert "the whole held-out split, 10 samples" in text
    assert "[MASK]     accuracy 0.5000  baseline 0.5000 (most frequent token)" in text
    assert "random     accuracy 0.5000  baseline 0.5000 (most frequent token)" in text
    assert "unchanged  accuracy 0.5000  baseline 1.0000 (copy the input)" in text
    assert "total      accuracy 0.5000  baseline 0.5000" in text
    tb = TensorBoardCallback(tmp_path)
    tb.on_eval(5, m)
    tb.close()
    for tag in ("mask_accuracy", "mask_baseline_accuracy", "random_accuracy", "random_baseline_accuracy"):
        assert read_scalars(tmp_path, f"eval/{tag}") == {5: pytest.approx(m[tag])}
    assert read_scalars(tmp_path, "eval/kept_baseline_accuracy") == {5: 1.0}


@pytest.mark.parametrize(("micro", "world"), [(8, 2), (7, 3)])
def test_eval_covers_every_held_out_sample(dataset_dir: Path, micro: int, world: int) -> None:
    """Counted against the shards themselves: every valid sample once, every target once, on any layout."""
    manifest = read_manifest(dataset_dir)
    reader = ShardReader(dataset_dir, manifest, "valid")
    want_samples = len(reader)
    want_targets = sum(
        int((reader.read(s, i)["labels"] != -100).sum())
        for s, entry in enumerate(reader.shards)
        for i in range(entry.samples)
    )
    reader.close()
    assert want_samples % (micro * world)  # a partial last round, which evaluation used to drop
    streams = [EvalStream(dataset_dir, micro, world, r, batches=10_000) for r in range(world)]
    assert len({len(s) for s in streams}) == 1  # the same number of forward passes on every rank
    samples = targets = 0
    for s in streams:
        assert s.complete and s.samples == want_samples
        for b in s:
            if int(b[EvalStream.PADDING_KEY]):
                continue
            samples += b["input_ids"].shape[0]
            targets += int((b["labels"] != -100).sum())
    assert (samples, targets) == (want_samples, want_targets)


def test_eval_batches_caps_the_slice(dataset_dir: Path) -> None:
    s = EvalStream(dataset_dir, 4, 2, 0, batches=3)
    assert (len(s), s.samples, s.complete) == (3, 24, False)
    assert [b["input_ids"].shape[0] for b in s] == [4, 4, 4]
