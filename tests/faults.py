"""Fault injection for the reliability tests, as a training plugin: `cloze train CONFIG --plugin tests.faults`
(docs/training.md "Plugins"). Production code carries none of this; the loop only offers the hook points.

Which fault, on which rank, at which step, comes from environment variables the test sets:
  CLOZE_INJECT_NAN=RANK:FIRST[:LAST]       the loss is NaN on RANK at steps FIRST..LAST (1-based)
  CLOZE_INJECT_NAN_GRAD=RANK:FIRST[:LAST]  the loss stays finite, its gradients are NaN
  CLOZE_INJECT_HANG=RANK:STEP              RANK stops making progress at the start of STEP, outside any collective
  CLOZE_CRASH_IN_SAVE=RANK[:STEP]          RANK exits (code CRASH_EXIT) in the middle of its next save (the save
                                           of STEP): its files written and fsynced, nothing committed
  CLOZE_HASH_LOG=DIR                       not a fault, a witness: every checkpoint file this rank hashes (save or
                                           resume) is appended to DIR/rank<R>.txt as "<tag dir> <file>"
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from trainer.callbacks import Callback

NAN_ENV = "CLOZE_INJECT_NAN"
NAN_GRAD_ENV = "CLOZE_INJECT_NAN_GRAD"
HANG_ENV = "CLOZE_INJECT_HANG"
CRASH_ENV = "CLOZE_CRASH_IN_SAVE"
HASH_LOG_ENV = "CLOZE_HASH_LOG"
CRASH_EXIT = 17
"""Exit code of a rank that CRASH_ENV ends in the middle of a save."""


def steps(env: str, rank: int) -> tuple[int, int] | None:
    """(first, last) steps of the fault `env` names for `rank`, if any."""
    spec = os.environ.get(env, "")
    if not spec:
        return None
    parts = [int(x) for x in spec.split(":")]
    if parts[0] != rank:
        return None
    return parts[1], parts[-1] if len(parts) > 2 else parts[1]


class NaNGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


def _within(env: str, step: int, rank: int) -> bool:
    window = steps(env, rank)
    return window is not None and window[0] <= step <= window[1]


class NaNLoss(Callback):
    def on_loss(self, step: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if _within(NAN_ENV, step, rank) else loss


class NaNGradient(Callback):
    def on_loss(self, step: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        return NaNGrad.apply(loss) if _within(NAN_GRAD_ENV, step, rank) else loss


class Hang(Callback):
    def on_step_begin(self, step: int, rank: int) -> None:
        window = steps(HANG_ENV, rank)
        if window is not None and step == window[0]:
            time.sleep(1e9)  # a rank that stops making progress, outside any collective


class CrashInSave(Callback):
    def on_checkpoint_written(self, step: int, rank: int, tmp_dir: Path) -> None:
        who, _, when = os.environ.get(CRASH_ENV, "").partition(":")
        if who == str(rank) and (not when or int(when) == step):
            os._exit(CRASH_EXIT)  # die with the files written but nothing committed


def log_hashes(directory: Path) -> None:
    """Record every file trainer.checkpoint hashes in this process (HASH_LOG_ENV)."""
    import trainer.checkpoint as ckpt

    hash_file = ckpt.hash_file
    log = directory / f"rank{os.environ.get('RANK', '0')}.txt"

    def logged(path: Path, fsync: bool = False) -> str:
        with log.open("a") as f:
            f.write(f"{path.parent.name} {path.name}\n")
        return hash_file(path, fsync)

    ckpt.hash_file = logged  # type: ignore[assignment]


def callbacks() -> list[Callback]:
    """What `--plugin tests.faults` installs: only the faults whose variable is set."""
    if os.environ.get(HASH_LOG_ENV):
        log_hashes(Path(os.environ[HASH_LOG_ENV]))
    chosen: list[tuple[str, Callback]] = [
        (NAN_ENV, NaNLoss()),
        (NAN_GRAD_ENV, NaNGradient()),
        (HANG_ENV, Hang()),
        (CRASH_ENV, CrashInSave()),
    ]
    return [cb for env, cb in chosen if os.environ.get(env)]
