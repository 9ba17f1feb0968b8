"""The loader: exact mid-epoch resume, elastic resume, dynamic masking, damaged shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_pipeline.loader import SkipBudget, SkipBudgetExhausted, StreamSpec, TrainStream
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import IGNORE
from data_pipeline.sources import InputError
from data_pipeline.writer import ShardOptions, write_shards
from tests.conftest import run_cloze


def key(input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> bytes:
    parts = [input_ids.numpy().astype(np.int32).tobytes()]
    if labels is not None:
        parts.append(labels.numpy().astype(np.int32).tobytes())
    return b"".join(parts)


def consume(
    directory: Path,
    world: int,
    micro: int,
    global_batch: int,
    start: int,
    stop: int,
    workers: int = 2,
    seed: int = 11,
    **kw,
) -> list[list[bytes]]:
    """For steps [start, stop): the step's samples in global order (by micro-batch a, then rank)."""
    per_rank = []
    for rank in range(world):
        spec = StreamSpec(global_batch, micro, world, rank, start * global_batch, seed)
        it = iter(DataLoader(TrainStream(directory, spec, **kw), batch_size=None, num_workers=workers))
        per_rank.append([next(it) for _ in range((stop - start) * spec.accum)])
    accum = global_batch // (micro * world)
    steps = []
    for t in range(stop - start):
        step: list[bytes] = []
        for a in range(accum):
            for rank in range(world):
                b = per_rank[rank][t * accum + a]
                step += [
                    key(b["input_ids"][i], b.get("labels", [None] * micro)[i])
                    for i in range(len(b["input_ids"]))
                ]
        steps.append(step)
    return steps


def test_stop_mid_epoch_and_resume_on_two_ranks_gives_exactly_one_epoch(dataset_dir: Path) -> None:
    n = read_manifest(dataset_dir).splits["train"]["samples"]
    B = 32
    epoch_steps = n // B
    k = epoch_steps // 3
    uninterrupted = consume(dataset_dir, world=2, micro=8, global_batch=B, start=0, stop=epoch_steps)
    first = consume(dataset_dir, world=2, micro=8, global_batch=B, start=0, stop=k)
    second = consume(dataset_dir, world=2, micro=8, global_batch=B, start=k, stop=epoch_steps)
    assert first + second == uninterrupted
    flat = [s for step in uninterrupted for s in step]
    assert len(set(flat)) == len(flat) == epoch_steps * B  # one epoch, nothing repeated


def test_resume_on_one_rank_with_double_accumulation_continues_the_same_global_sequence(
    dataset_dir: Path,
) -> None:
    B, k = 32, 5
    two_ranks = consume(dataset_dir, world=2, micro=8, global_batch=B, start=k, stop=k + 6)
    one_rank = consume(dataset_dir, world=1, micro=8, global_batch=B, start=k, stop=k + 6, workers=1)
    assert one_rank == two_ranks


def test_next_epoch_is_reshuffled(dataset_dir: Path) -> None:
    n = read_manifest(dataset_dir).splits["train"]["samples"]
    steps = n // 32
    e0 = consume(dataset_dir, world=1, micro=32, global_batch=32, start=0, stop=2, workers=0)
    e1 = consume(dataset_dir, world=1, micro=32, global_batch=32, start=steps, stop=steps + 2, workers=0)
    assert e0 != e1


def test_dynamic_masking_differs_per_epoch_and_resumes_identically(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    d = tmp_path / "tokens"
    write_shards(
        ["builtin:stdlib-docs"],
        tokenizer_dir,
        d,
        ShardOptions(objective="tokens", seq_len=64, docs_per_block=2000, valid_fraction=0.05),
        workers=2,
    )
    m = read_manifest(d)
    assert m.objective == "tokens" and m.objective_params == {}
    n = m.splits["train"]["samples"]
    spe = n // 16

    def stream(start: int, steps: int) -> list[dict]:
        it = iter(
            DataLoader(
                TrainStream(d, StreamSpec(16, 16, 1, 0, start * 16, 4), objective="mlm"),
                batch_size=None,
                num_workers=2,
            )
        )
        return [next(it) for _ in range(steps)]

    full = stream(0, 6)
    resumed = stream(3, 3)
    for a, b in zip(full[3:], resumed):
        torch.testing.assert_close(a["input_ids"], b["input_ids"])
        torch.testing.assert_close(a["labels"], b["labels"])

    # The same sample in epoch 0 and epoch 1: same text, different masks.
    def by_text(batches):
        out = {}
        for b in batches:
            for x, y in zip(b["input_ids"], b["labels"]):
                out[key(torch.where(y != IGNORE, y, x))] = key(y)
        return out

    e0, e1 = by_text(stream(0, spe)), by_text(stream(spe, spe))
    common = set(e0) & set(e1)
    assert len(common) > 0.9 * len(e0)
    assert sum(e0[c] != e1[c] for c in common) > 0.95 * len(common)
    labels = torch.cat([b["labels"] for b in full])
    maskable = ~torch.isin(
        torch.where(labels != IGNORE, labels, torch.cat([b["input_ids"] for b in full])),
        torch.tensor(sorted(set(m.special_tokens.values()) | set(m.sentinel_ids))),
    )
    assert abs((labels != IGNORE).sum() / maskable.sum() - 0.15) < 0.01


def test_dynamic_objective_on_static_shards_is_refused(dataset_dir: Path) -> None:
    with pytest.raises(InputError, match="data.objective='wwm'.*holds 'mlm' shards"):
        TrainStream(dataset_dir, StreamSpec(16, 8), objective="wwm")


@pytest.fixture()
def damaged(tmp_path: Path, dataset_dir: Path) -> tuple[Path, str]:
    d = tmp_path / "damaged"
    shutil.copytree(dataset_dir, d)
    name = read_manifest(d).shards_of("train")[1].name
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])  # truncated mid-file
    return d, name


def _read_epoch(d: Path, budget: int, workers: int = 0) -> tuple[list[dict], SkipBudget]:
    """One epoch of 32-sample batches, counting skipped samples against one budget as the trainer does."""
    n = read_manifest(d).splits["train"]["samples"]
    it = iter(
        DataLoader(TrainStream(d, StreamSpec(32, 32, 1, 0, 0, 1)), batch_size=None, num_workers=workers)
    )
    skips = SkipBudget(budget)
    batches = []
    for _ in range(n // 32):
        b = next(it)
        skips.add(int(b["skipped_samples"]), error=b["skip_error"])
        batches.append(b)
    return batches, skips


def test_truncated_shard_is_an_error_naming_it(damaged) -> None:
    d, name = damaged
    with pytest.raises(SkipBudgetExhausted, match=f"data.skip_budget=0.*{name}.*truncated"):
        _read_epoch(d, budget=0)


def test_truncated_shard_within_skip_budget_is_skipped_and_counted(damaged) -> None:
    d, name = damaged
    entry = next(s for s in read_manifest(d).shards if s.name == name)
    n = read_manifest(d).splits["train"]["samples"]
    batches, skips = _read_epoch(d, budget=entry.samples, workers=2)
    assert 0 < skips.skipped <= entry.samples
    assert sum(len(b["input_ids"]) for b in batches) == (n // 32) * 32 - skips.skipped
    with pytest.raises(SkipBudgetExhausted, match="more than data.skip_budget=3"):
        _read_epoch(d, budget=3)


def test_verify_names_the_bad_shard(tmp_path: Path, dataset_dir: Path) -> None:
    d = tmp_path / "flipped"
    shutil.copytree(dataset_dir, d)
    ok = run_cloze(["verify", str(d)])
    assert ok.returncode == 0 and "matches its manifest" in ok.stdout
    name = read_manifest(d).shards_of("train")[2].name
    data = bytearray((d / name).read_bytes())
    data[1000] ^= 0xFF
    (d / name).write_bytes(bytes(data))
    bad = run_cloze(["verify", str(d)])
    assert bad.returncode == 1
    assert bad.stdout.strip().splitlines() == [f"BAD {d / name}: sha256 differs from the manifest (corrupt)"]


def test_inspect_shows_masks(dataset_dir: Path) -> None:
    proc = run_cloze(["inspect", str(dataset_dir), "--n", "2"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- train-") == 2 and "[[MASK]→" in proc.stdout
