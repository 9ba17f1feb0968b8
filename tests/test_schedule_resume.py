"""A resumed run keeps the learning-rate schedule it started with unless told to stretch it (issue 12): changing
trainer.max_steps on resume used to re-stretch the schedule silently (lr back up from 0 to 1.7e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.checkpointer import run_schedule, saved_schedule
from trainer.config import OptimizerConfig

from .conftest import read_scalars, run_cloze

LR = 1e-3


def _lr(step: int, max_steps: int) -> float:
    from trainer.optim import lr_factor

    return LR * lr_factor(step, OptimizerConfig(lr=LR, warmup_steps=2), max_steps)


def test_resume_keeps_the_schedule_unless_extended(tmp_path: Path, dataset_dir: Path) -> None:
    run = tmp_path / "run"
    common = (
        "configs/tiny-bert.yaml",
        f"data.path={dataset_dir}",
        f"run_dir={run}",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
        "logging.log_every=1",
        "optimizer.warmup_steps=2",
        f"optimizer.lr={LR}",
    )

    def train(*overrides: str):
        proc = run_cloze(["train", *common, *overrides])
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, read_scalars(run / "tensorboard", "train/lr")

    _, lr = train("trainer.max_steps=8", "trainer.stop_after_steps=4")
    assert lr[4] == pytest.approx(_lr(4, 8))
    meta = json.loads((run / "checkpoints" / "step00000004" / "checkpoint.json").read_text())
    assert meta["client_state"]["schedule"] == {"max_steps": 8, "warmup_steps": 2}

    # max_steps raised on resume: the run's schedule (8 steps) goes on, and the console says so.
    kept, lr = train("trainer.max_steps=16", "trainer.stop_after_steps=5")
    assert "keeping the run's max_steps=8, warmup_steps=2 (the config says max_steps=16" in kept.stdout
    assert "trainer.extend_schedule=true" in kept.stdout
    assert lr[5] == pytest.approx(_lr(5, 8)) and lr[5] != pytest.approx(_lr(5, 16))

    # Asked to extend: stretched to 16 steps from here on, and saved so for the next resume.
    stretched, lr = train(
        "trainer.max_steps=16", "trainer.extend_schedule=true", "trainer.stop_after_steps=6"
    )
    assert "stretched from the run's max_steps=8, warmup_steps=2 to max_steps=16" in stretched.stdout
    assert lr[6] == pytest.approx(_lr(6, 16))
    meta = json.loads((run / "checkpoints" / "step00000006" / "checkpoint.json").read_text())
    assert meta["client_state"]["schedule"] == {"max_steps": 16, "warmup_steps": 2}

    # A rerun whose max_steps is below the checkpoint's step says so and trains nothing.
    below, lr_after = train("trainer.max_steps=3")
    assert "the checkpoint is at step 6, past trainer.max_steps=3: nothing to train" in below.stdout
    assert lr_after == lr
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step00000005", "step00000006"]


def test_schedule_of_checkpoints_saved_before_it_was_recorded() -> None:
    """Older checkpoints carry the resolved config: its max_steps and warmup are the run's schedule."""
    state = {"config": {"trainer": {"max_steps": 30}, "optimizer": {"warmup_steps": 3}}}
    assert saved_schedule(state) == [30, 3]
    assert saved_schedule({}) is None
    from trainer.config import load_config

    cfg = load_config("configs/tiny-bert.yaml", ["trainer.max_steps=60"])
    assert run_schedule(cfg, [30, 3])[0] == (30, 3)
    assert run_schedule(cfg, None) == ((60, 10), "")
    cfg = load_config("configs/tiny-bert.yaml", ["trainer.max_steps=60", "trainer.extend_schedule=true"])
    assert run_schedule(cfg, [30, 3])[0] == (60, 10)
