"""Loss normalisation over the global batch (issue 10): every loss term is sum(token losses) / global target count,
as fairseq (`sample_size`, fairseq/trainer.py) and Megatron (`num_tokens` all-reduced before the loss is scaled)
do, so a token weighs the same whatever micro-batch or rank it lands in.

The reference is the same global batch in one process and one micro-batch (a plain mean per term). The split run
is real: 2 ranks over gloo, DeepSpeed's engine, 2 micro-batches per rank with uneven target counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from modeling import build_model
from modeling.config import ModelConfig
from trainer.loop import loss_normalizers
from trainer.losses import task_for

from .conftest import tiny_model_config, torchrun_module

V, T = 40, 12
MASKED = [1, 7, 3, 10]
"""Targets per sequence of the global batch of 4: deliberately uneven."""


def _model_cfg(family: str) -> ModelConfig:
    common: dict[str, Any] = dict(family=family, vocab_size=V, num_heads=2, max_position_embeddings=32)
    if family == "bert":
        common["sentence_head"] = True
    if family == "t5":
        common.update(d_kv=16, initializer_range=1.0, tie_word_embeddings=False, activation="gelu_tanh")
    if family == "electra":
        common["generator_fraction"] = 0.5
    return tiny_model_config(**common)


def global_batch(family: str) -> dict[str, torch.Tensor]:
    """4 sequences; row i has MASKED[i] targets, rows 1 and 3 carry padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (4, T), generator=g)
    mask = torch.ones(4, T, dtype=torch.long)
    mask[1, -3:] = 0
    mask[3, -1:] = 0
    labels = torch.full((4, T), -100)
    for i, k in enumerate(MASKED):
        labels[i, :k] = torch.randint(5, V, (k,), generator=g)
    if family == "t5":
        dec = torch.randint(5, V, (4, T), generator=g)
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels}
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if family == "bert":
        batch["sentence_label"] = torch.tensor([0, 1, 1, 0])
    return batch


def rows(batch: dict[str, torch.Tensor], i: int, j: int) -> dict[str, torch.Tensor]:
    return {k: v[i:j] for k, v in batch.items()}


def reference_grads(family: str) -> tuple[dict[str, torch.Tensor], float]:
    """Gradients (and their norm) of the whole global batch in one process and one micro-batch."""
    torch.manual_seed(0)
    model = build_model(_model_cfg(family))
    task = task_for(family)
    task(model, global_batch(family)).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = float(torch.nn.utils.get_total_norm(list(grads.values())))
    return grads, norm


@pytest.fixture
def deterministic_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """ELECTRA samples replacements; argmax instead makes a split batch see the same replacements as the whole."""
    monkeypatch.setattr(torch, "multinomial", lambda p, n: p.argmax(-1, keepdim=True))


@pytest.mark.parametrize("family", ["bert", "electra", "t5"])
def test_split_micro_batches_match_one_batch(family: str, deterministic_sampling: None) -> None:
    """One process, 4 micro-batches of 1: with the global normalisers the accumulated gradients equal the
    single-batch ones (the old per-micro-batch mean weighed the 1-target sequence 10x more than a 10-target one)."""
    ref, _ = reference_grads(family)
    torch.manual_seed(0)
    model = build_model(_model_cfg(family))
    task = task_for(family)
    batch = global_batch(family)
    micro = [rows(batch, i, i + 1) for i in range(4)]
    norm = loss_normalizers(task, micro, multiplier=1.0)
    assert norm["count"] == sum(MASKED)
    if family == "electra":
        assert norm["rtd_count"] == float(batch["attention_mask"].sum())
    for mb in micro:
        task(model, mb, norm=norm).loss.backward()
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_logged_loss_is_the_token_mean() -> None:
    """The logged loss is sum / count over everything summed, not a mean of micro-batch means."""
    torch.manual_seed(0)
    model = build_model(_model_cfg("t5"))
    task = task_for("t5")
    batch = global_batch("t5")
    whole = task.summarize(task(model, batch).sums)["loss"]
    sums: dict[str, float] = {}
    norm = loss_normalizers(task, [rows(batch, i, i + 1) for i in range(4)], 1.0)
    for i in range(4):
        for k, v in task(model, rows(batch, i, i + 1), norm=norm).sums.items():
            sums[k] = sums.get(k, 0.0) + v
    assert task.summarize(sums)["loss"] == pytest.approx(whole, rel=1e-6)


# ---- 2 ranks x 2 micro-batches through DeepSpeed ---------------------------------------------------------------


def _worker(out: Path) -> None:
    """Run under torchrun: rank r trains rows 2r and 2r+1 of the global batch as 2 micro-batches of 1."""
    from trainer import distributed as D
    from trainer.config import config_from_dict
    from trainer.engine import Engine, init_distributed

    info = D.discover()
    init_distributed(info, "gloo", 5)
    results: dict[str, Any] = {}
    for family, stage in (("bert", 0), ("bert", 2), ("t5", 0)):
        cfg = config_from_dict(
            {
                "optimizer": {"lr": 1e-3, "grad_clip": 0.0},
                "deepspeed": {"zero_stage": stage, "precision": "fp32"},
                "trainer": {"global_batch_size": 4, "micro_batch_size": 1, "max_steps": 1},
            }
        )
        torch.manual_seed(0)
        engine = Engine(build_model(_model_cfg(family)), cfg, grad_accum=2)
        task = task_for(family)
        batch = global_batch(family)
        micro = [rows(batch, 2 * info.rank + i, 2 * info.rank + i + 1) for i in range(2)]
        norm = loss_normalizers(task, micro, engine.loss_multiplier)
        for i, mb in enumerate(micro):
            engine.backward(task(engine.forward, mb, norm=norm).loss)
            if i == 0:
                engine.step()
        # Plain data parallel: the all-reduced gradients are in .grad after the boundary backward.
        if stage == 0:
            grads = {n: p.grad.clone() for n, p in engine.module.named_parameters() if p.grad is not None}
            if info.rank == 0:
                torch.save(grads, out / f"{family}_grads.pt")
        engine.step()
        results[f"{family}_{stage}_norm"] = engine.grad_norm()
    if info.rank == 0:
        (out / "norms.json").write_text(json.dumps(results))
    D.shutdown()


def test_two_ranks_two_micro_batches_match_one_batch(tmp_path: Path) -> None:
    proc = torchrun_module("tests.test_loss_normalisation", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    norms = json.loads((tmp_path / "norms.json").read_text())
    for family in ("bert", "t5"):
        ref, ref_norm = reference_grads(family)
        grads = torch.load(tmp_path / f"{family}_grads.pt")
        assert set(grads) == set(ref)
        for n, g in grads.items():
            where = f"{family} {n}"
            torch.testing.assert_close(g, ref[n], atol=1e-6, rtol=1e-6, msg=lambda m, w=where: f"{w}: {m}")
        assert norms[f"{family}_0_norm"] == pytest.approx(ref_norm, rel=1e-6)
    # ZeRO-2 keeps the averaged gradients in its partitions: their global norm must be the reference's.
    assert norms["bert_2_norm"] == pytest.approx(reference_grads("bert")[1], rel=1e-6)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
