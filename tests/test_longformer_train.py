"""Longformer trains on 2 ranks (DeepSpeed ZeRO-2, gloo) over long-document shards (`--doc-boundaries`, global
tokens at each line's start, windows shorter than the sequence) with falling loss, and resumes exactly after a stop
(issue 16), as the other families do."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.writer import ShardOptions, write_shards
from tests.conftest import read_scalars, torchrun_cloze

pytestmark = pytest.mark.slow

ARGS = [
    "model.family=longformer",
    "model.attention_window=[16,32]",  # per layer, both shorter than the 128-token sequences
    "model.max_position_embeddings=128",
    "model.num_layers=2",
    "data.objective=mlm",
    "trainer.max_steps=20",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=2",
    "trainer.eval_every=0",
    "checkpoint.every_steps=10",
]


@pytest.fixture(scope="module")
def long_docs(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("long") / "shards"
    opts = ShardOptions(
        objective="tokens",
        seq_len=128,
        valid_fraction=0.02,
        docs_per_block=2500,
        doc_boundaries=True,
        global_tokens="first-of-each-line",
    )
    write_shards(["builtin:stdlib-docs"], tokenizer_dir, out, opts, workers=2)
    return out


def train(data: Path, run: Path, *extra: str) -> dict[int, float]:
    proc = torchrun_cloze(
        ["train", "configs/tiny-bert.yaml", f"data.path={data}", f"run_dir={run}", *ARGS, *extra]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return read_scalars(run / "tensorboard", "train/loss")


def test_trains_with_falling_loss_and_resumes_exactly(tmp_path: Path, long_docs: Path) -> None:
    losses = train(long_docs, tmp_path / "whole")
    assert sorted(losses) == list(range(1, 21))
    first, last = (sum(losses[s] for s in r) / 5 for r in (range(1, 6), range(16, 21)))
    assert last < first - 0.3, losses
    stopped = tmp_path / "stopped"
    train(long_docs, stopped, "trainer.stop_after_steps=10")
    resumed = train(long_docs, stopped)
    assert resumed == losses  # per-step losses of the stopped-then-resumed run equal the uninterrupted run's
