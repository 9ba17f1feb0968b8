"""Shared fixtures: a real sentencepiece tokenizer and real WebDataset shards made from the built-in corpus,
plus helpers to run `cloze` as a subprocess (under torchrun for multi-process DeepSpeed) and read TensorBoard."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from modeling.config import ModelConfig

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


def run_script(
    script: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` from the repository root in a fresh process (a benchmark's dry mode); env: cloze_env()."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=env if env is not None else cloze_env(),
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


def torchrun_module(
    module: str, *args: str, nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m MODULE ARGS`: a test module's own worker on real ranks (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*cmd, "-m", module, *args],
        cwd=ROOT,
        env=cloze_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
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


def tiny_model_config(**kw: Any) -> ModelConfig:
    """A ModelConfig small enough for a CPU unit test (vocab 101, hidden 32, 2 layers, 4 heads, FFN 64, 64
    positions, no dropout); `kw` sets or overrides any field (family, sizes, family-specific options)."""
    from modeling.config import ModelConfig

    base: dict[str, Any] = dict(
        vocab_size=101,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return ModelConfig(**{**base, **kw})


def write_stdlib_corpus(path: Path, documents: int, per_document: int = 1) -> Path:
    """The first `documents` docstrings of the built-in corpus as a text file at `path`: `per_document` docstrings
    to a document (one line a sentence), documents separated by blank lines. Returns `path`."""
    from data_pipeline.sources import SourceStats, iter_documents

    grouped: list[list[str]] = []
    for i, doc in enumerate(iter_documents(["builtin:stdlib-docs"], SourceStats())):
        if i == documents:
            break
        if i % per_document == 0:
            grouped.append([])
        grouped[-1].append("\n".join(doc))
    path.write_text("\n\n".join("\n".join(g) for g in grouped) + "\n")
    return path


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


@pytest.fixture(scope="session")
def installed_cloze(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with cloze installed from a wheel, not from the source tree (tests/test_install.py)."""
    from .test_install import install_cloze

    return install_cloze(tmp_path_factory.mktemp("installed"))


@contextlib.contextmanager
def transformers_messages() -> Iterator[list[str]]:
    """Collects every message transformers warns or logs (WARNING and above) inside the block; the list is filled
    when the block ends."""
    import logging
    import warnings

    import transformers

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    messages: list[str] = []
    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    messages.extend([str(w.message) for w in caught] + [r.getMessage() for r in records])
