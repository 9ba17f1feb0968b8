"""Shared fixtures: a real sentencepiece tokenizer and real WebDataset shards made from the built-in corpus,
plus helpers to run `cloze` as a subprocess (under torchrun for multi-process DeepSpeed) and read TensorBoard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cloze_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"
    )
    env.update(extra)
    return env


def run_cloze(
    args: Sequence[str], cwd: Path | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`cloze ARGS` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=cwd or ROOT,
        env=cloze_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun_cloze(
    args: Sequence[str], nproc: int = 2, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m launch.cli ARGS`: real ranks over gloo."""
    from launch.demo import torchrun_command

    cmd = torchrun_command(nproc, list(args))
    return subprocess.run(
        cmd, cwd=ROOT, env=cloze_env(**env), capture_output=True, text=True, timeout=timeout
    )


def train_tiny_bert(
    dataset_dir: Path, run_dir: Path, *overrides: str, **env: str
) -> subprocess.CompletedProcess:
    """`cloze train configs/tiny-bert.yaml` on 2 ranks over `dataset_dir`, no evaluation, then `overrides`."""
    return torchrun_cloze(
        [
            "train",
            "configs/tiny-bert.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={run_dir}",
            "trainer.eval_every=0",
            *overrides,
        ],
        **env,
    )


def read_scalars(logdir: str | Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar over every event file in `logdir` (a later write of a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, tuple[float, float]] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag not in acc.Tags()["scalars"]:
            continue
        for e in acc.Scalars(tag):
            if e.step not in out or e.wall_time >= out[e.step][0]:
                out[e.step] = (e.wall_time, e.value)
    return {s: v for s, (_, v) in sorted(out.items())}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(["builtin:stdlib-docs"], d, vocab_size=3000)
    return d


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """The whole built-in corpus as seq-64 MLM shards (several shards per split)."""
    from data_pipeline.writer import ShardOptions, write_shards

    d = tmp_path_factory.mktemp("ds") / "shards"
    opts = ShardOptions(seq_len=64, seed=7, docs_per_block=1500, valid_fraction=0.05)
    write_shards(["builtin:stdlib-docs"], tokenizer_dir, d, opts, workers=2)
    return d
