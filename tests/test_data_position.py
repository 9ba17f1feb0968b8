"""The data position across resumes: the restart point is the number of samples consumed (not step x the new
global batch), and the run has one skip budget for all ranks, workers and resumed runs, saved with checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_pipeline.loader import EpochOrder, ShardReader, StreamSpec, TrainStream, micro_batch_indices
from data_pipeline.manifest import read_manifest
from data_pipeline.sources import InputError
from tests.conftest import read_scalars, run_cloze
from tests.conftest import train_tiny_bert as train

SEED = 1234  # configs/tiny-bert.yaml's trainer.seed: the loader's permutations in the trainer runs below


def layout(global_batch: int, micro: int, world: int, start: int, steps: int) -> list[list[tuple[int, int]]]:
    """Per step: (rank, micro-batch number) in the step's sample order (accumulation index, then rank)."""
    accum = global_batch // (micro * world)
    return [[(r, t * accum + a) for a in range(accum) for r in range(world)] for t in range(steps)]


def indices_read(global_batch: int, micro: int, world: int, start: int, steps: int) -> list[int]:
    """The global sample indices a run starting at sample `start` reads in `steps` steps, in step order."""
    out: list[int] = []
    for step in layout(global_batch, micro, world, start, steps):
        for rank, j in step:
            spec = StreamSpec(global_batch, micro, world, rank, start, SEED)
            out += micro_batch_indices(spec, j).tolist()
    return out


@pytest.mark.parametrize(
    ("first", "second"),
    [((16, 8, 2), (32, 8, 2)), ((32, 8, 2), (16, 8, 2)), ((16, 8, 2), (24, 4, 3)), ((16, 4, 1), (48, 8, 2))],
)
def test_batch_size_change_reads_one_gapless_sequence(
    first: tuple[int, int, int], second: tuple[int, int, int]
) -> None:
    """10 steps at the first (global batch, micro, world), resumed from the consumed-sample count for 10 steps at the
    second: the indices read are 0, 1, 2, ... with no gap and no repeat."""
    a = indices_read(*first[:2], first[2], start=0, steps=10)
    b = indices_read(*second[:2], second[2], start=10 * first[0], steps=10)
    assert a + b == list(range(10 * first[0] + 10 * second[0]))


def _keys(batch: dict) -> list[bytes]:
    ids, labels = batch["input_ids"], batch["labels"]
    return [ids[i].numpy().tobytes() + labels[i].numpy().tobytes() for i in range(len(ids))]


def read_run(d: Path, global_batch: int, micro: int, world: int, start: int, steps: int) -> list[bytes]:
    """The samples a run reads through TrainStream (2 workers per rank), in step order."""
    per_rank = []
    for rank in range(world):
        spec = StreamSpec(global_batch, micro, world, rank, start, SEED)
        it = iter(DataLoader(TrainStream(d, spec), batch_size=None, num_workers=2))
        per_rank.append([next(it) for _ in range(steps * spec.accum)])
    out: list[bytes] = []
    for step in layout(global_batch, micro, world, start, steps):
        for rank, j in step:
            out += _keys(per_rank[rank][j])
    return out


def test_resume_at_twice_the_global_batch_continues_the_uninterrupted_samples(dataset_dir: Path) -> None:
    """10 steps at B=16 on 2 ranks, then 10 at B=32 from the 160 consumed samples: the samples read are exactly
    those of one uninterrupted reader (one rank, B=16) for 480 samples, in the same order; each once."""
    first = read_run(dataset_dir, 16, 8, 2, start=0, steps=10)
    second = read_run(dataset_dir, 32, 8, 2, start=160, steps=10)
    uninterrupted = read_run(dataset_dir, 16, 16, 1, start=0, steps=30)
    assert first + second == uninterrupted
    assert len(set(uninterrupted)) == 480


def test_epoch_boundary_inside_a_batch_drops_nothing(dataset_dir: Path) -> None:
    """A batch may straddle two epochs: the last samples of epoch 0 are read, then epoch 1 starts reshuffled."""
    n = read_manifest(dataset_dir).splits["train"]["samples"]
    spec = StreamSpec(32, 32, 1, 0, n - 5, SEED)
    got = _keys(next(iter(DataLoader(TrainStream(dataset_dir, spec), batch_size=None))))
    reader = ShardReader(dataset_dir, read_manifest(dataset_dir), "train")
    e0, e1 = EpochOrder(reader.counts, SEED, 0), EpochOrder(reader.counts, SEED, 1)
    expected = [reader.read(*e0.locate(p)) for p in range(n - 5, n)] + [
        reader.read(*e1.locate(p)) for p in range(27)
    ]
    reader.close()
    assert got == [
        s["input_ids"].astype(np.int64).tobytes() + s["labels"].astype(np.int64).tobytes() for s in expected
    ]


def _damage(src: Path, dst: Path, fraction: float = 0.1) -> None:
    """Copy `src`, then truncate the shard epoch 0 visits first, so the last `fraction` of its samples (file order)
    are unreadable: they fall at scattered positions from the first step on."""
    shutil.copytree(src, dst)
    m = read_manifest(dst)
    shards = m.shards_of("train")
    counts = np.asarray([s.samples for s in shards])
    entry = shards[int(EpochOrder(counts, SEED, 0).shard_order[0])]
    index = np.load(dst / entry.index)
    cut = int(index[entry.samples - int(entry.samples * fraction), 0])
    with open(dst / entry.name, "r+b") as f:
        f.truncate(cut)


def bad_positions(d: Path, count: int) -> list[int]:
    """Which of the global samples [0, count) are unreadable, by the loader's own order (epoch 0)."""
    reader = ShardReader(d, read_manifest(d), "train")
    order = EpochOrder(reader.counts, SEED, 0)
    bad = []
    for p in range(count):
        try:
            reader.read(*order.locate(p))
        except InputError:
            bad.append(p)
    reader.close()
    return bad


def test_skipped_samples_are_reported_per_micro_batch_whatever_the_workers(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """Each micro-batch carries the count of its own unreadable samples: summed over the batches of 2 workers they
    are exactly the unreadable positions read (the old per-worker running counts and split budget are gone)."""
    d = tmp_path / "damaged"
    _damage(dataset_dir, d)
    bad = bad_positions(d, 20 * 16)
    assert len(bad) > 4
    for workers in (0, 2):
        spec = StreamSpec(16, 8, 1, 0, 0, SEED)
        it = iter(DataLoader(TrainStream(d, spec), batch_size=None, num_workers=workers))
        batches = [next(it) for _ in range(40)]
        counts = [int(b["skipped_samples"]) for b in batches]
        assert counts == [sum(1 for p in bad if j * 8 <= p < (j + 1) * 8) for j in range(40)]
        assert all(bool(b["skip_error"]) == (c > 0) for b, c in zip(batches, counts))
        assert all(len(b["input_ids"]) == 8 - c for b, c in zip(batches, counts))


@pytest.mark.slow
def test_skip_budget_is_one_for_all_ranks_workers_and_resumes(tmp_path: Path, dataset_dir: Path) -> None:
    """2 ranks x 2 workers over a damaged shard: the skipped count is summed over ranks and workers each step,
    logged, saved with the checkpoint, restored on resume, and the run stops with one error naming
    data.skip_budget on every rank once the total passes it."""
    d = tmp_path / "damaged"
    _damage(dataset_dir, d)
    bad = np.asarray(bad_positions(d, 8 * 16))
    per_step = np.bincount(bad // 16, minlength=8)  # B=16: step s (1-based) reads samples [16(s-1), 16s)
    cumulative = np.cumsum(per_step)
    total = int(cumulative[-1])
    assert cumulative[3] > 0 and per_step[4:].sum() > 0, per_step  # skips before and after the resume
    assert all(
        np.bincount((bad % 16) // 8, minlength=2) <= total - 1
    )  # no single rank alone passes the budget
    run = tmp_path / "run"
    common = ("data.num_workers=2", "trainer.max_steps=8", "checkpoint.every_steps=0", "logging.log_every=1")
    first = train(d, run, *common, f"data.skip_budget={total}", "trainer.stop_after_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    logged = read_scalars(run / "tensorboard", "train/skipped_samples")
    assert logged == {s: float(cumulative[s - 1]) for s in range(1, 5)}
    meta = json.loads((run / "checkpoints" / "step00000004" / "checkpoint.json").read_text())
    assert meta["client_state"]["skipped_samples"] == cumulative[3]

    # The same run resumed with a budget one short of the total: it stops at the step that passes it.
    second = train(d, run, *common, f"data.skip_budget={total - 1}")
    assert second.returncode != 0
    assert f"({int(cumulative[3])} unreadable samples skipped so far)" in second.stdout
    fail_step = int(np.argmax(cumulative >= total)) + 1
    message = (
        f"{total} unreadable samples skipped by step {fail_step} over all ranks, more than data.skip_budget="
    )
    assert f"{message}{total - 1}" in second.stderr, second.stderr[-3000:]
    assert "DataLoader worker" not in second.stderr
    assert max(read_scalars(run / "tensorboard", "train/skipped_samples")) == fail_step - 1


@pytest.mark.slow
def test_resume_with_another_global_batch_and_zero_stage_keeps_the_data_position(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """2 ranks, ZeRO-2, B=16 for 10 steps; resumed at B=32 for 2 steps; converted to universal and resumed on 1 rank
    with ZeRO-1: each run's loader starts at the samples consumed before it, and consumed_samples counts on."""
    run = tmp_path / "run"
    common = ("trainer.max_steps=14", "checkpoint.every_steps=0", "logging.log_every=1")
    first = train(dataset_dir, run, *common, "trainer.stop_after_steps=10")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(dataset_dir, run, *common, "trainer.global_batch_size=32", "trainer.stop_after_steps=12")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at step 10, global sample 160 " in second.stdout
    meta = json.loads((run / "checkpoints" / "step00000012" / "checkpoint.json").read_text())
    assert meta["client_state"]["consumed_samples"] == 160 + 2 * 32
    converted = run_cloze(["convert", str(run), "--to-universal"])
    assert converted.returncode == 0, converted.stderr[-3000:]
    third = run_cloze(
        [
            "train",
            "configs/tiny-bert.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={run}",
            "trainer.eval_every=0",
            *common,
            "trainer.global_batch_size=32",
            "deepspeed.zero_stage=1",
        ]
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "step00000012-universal at step 12, global sample 224 " in third.stdout
    consumed = read_scalars(run / "tensorboard", "train/consumed_samples")
    assert consumed == {s: float(16 * s if s <= 10 else 160 + 32 * (s - 10)) for s in range(1, 15)}
    tokens = read_scalars(run / "tensorboard", "train/consumed_tokens")
    assert tokens[14] == consumed[14] * read_manifest(dataset_dir).seq_len
    assert torch.isfinite(torch.tensor(read_scalars(run / "tensorboard", "train/loss")[14]))
