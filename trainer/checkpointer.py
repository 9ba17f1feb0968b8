"""The checkpointer: a Trainer component that decides when to save, saves, and finds and restores the checkpoint a
run resumes from. The files themselves (layout, atomic commit, retention) are trainer/checkpoint.py's; the engine's
part of a checkpoint is trainer/engine.py's.

What a checkpoint holds beside the weights and optimizer state is `Progress`: the step, the data position (samples
consumed, which differs from step x global batch once the batch changes between runs), unreadable samples skipped
against data.skip_budget, and the steps skipped for NaN/Inf; plus the lr schedule followed, the dataset's fingerprint
and the config.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from data_pipeline.loader import SkipBudget

from . import checkpoint as ckpt
from . import distributed as D
from .callbacks import Callback, overriding
from .config import RunConfig
from .distributed import DistInfo
from .engine import Engine, checkpoint_mismatch, verify_checkpoint_share


@dataclass
class Progress:
    """Where the run is: what a checkpoint saves beside the weights and a resume restores."""

    skips: SkipBudget
    """Unreadable samples skipped so far, against data.skip_budget (one budget for all ranks, workers, resumes)."""
    step: int = 0
    """Optimizer steps done; the step drives the lr schedule."""
    consumed: int = 0
    """Samples consumed over all ranks: the data position where the next run's loader starts."""
    skipped_steps: int = 0
    """Steps skipped for a NaN/Inf loss or gradient norm."""


@dataclass
class ResumePoint:
    """A verified checkpoint to resume from, and what its client state says about the data and the schedule."""

    tag: str
    consumed: int | None = None
    skipped: int | None = None
    schedule: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def saved_schedule(state: dict[str, Any]) -> list[int] | None:
    """(max_steps, warmup_steps) of the lr schedule a checkpoint was trained with: saved under `schedule`, or, in
    checkpoints from before it was, the config saved with them."""
    if "schedule" in state:
        return [int(state["schedule"]["max_steps"]), int(state["schedule"]["warmup_steps"])]
    try:
        config = state["config"]
        return [int(config["trainer"]["max_steps"]), int(config["optimizer"]["warmup_steps"])]
    except (KeyError, TypeError, ValueError):
        return None


def run_schedule(cfg: RunConfig, saved: list[int] | None) -> tuple[tuple[int, int], str]:
    """The (max_steps, warmup_steps) the lr schedule follows, and what to tell the user about it: a resumed run keeps
    the schedule it was trained with unless trainer.extend_schedule says to stretch it to the config's values."""
    ours = (cfg.trainer.max_steps, cfg.optimizer.warmup_steps)
    if saved is None or tuple(saved) == ours:
        return ours, ""
    was = f"max_steps={saved[0]}, warmup_steps={saved[1]}"
    now = f"max_steps={ours[0]}, warmup_steps={ours[1]}"
    if cfg.trainer.extend_schedule:
        return ours, f"learning-rate schedule: stretched from the run's {was} to {now} (extend_schedule)"
    past = f"; steps after {saved[0]} train at its final learning rate" if ours[0] > saved[0] else ""
    return (saved[0], saved[1]), (
        f"learning-rate schedule: keeping the run's {was} (the config says {now}){past}. Set "
        "trainer.extend_schedule=true to stretch the schedule to the config's values"
    )


def dataset_change(tag_dir: Path, state: dict[str, Any], ours: str, cfg: RunConfig) -> str:
    """Empty when the checkpoint was trained on this dataset (fingerprint `ours`: the manifest's, or a mixture's)
    or does not say which; a note when it was not and data.allow_dataset_change allows that; otherwise
    CheckpointError."""
    saved = state.get("dataset_fingerprint")
    if not saved or saved == ours:
        return ""
    mixture = bool(cfg.data.mixture.sources)
    what = "data.mixture" if mixture else f"data.path={cfg.data.path}"
    if cfg.data.allow_dataset_change:
        return (
            f"data.allow_dataset_change: resuming on {what} (dataset {ours}), not the dataset the "
            f"checkpoint was trained on ({saved}); the data position carries over"
        )
    differ = (
        "its datasets, their order, weights or stages differ"
        if mixture
        else "its shards, tokenizer, objective, seq_len or seed differ"
    )
    raise ckpt.CheckpointError(
        f"checkpoint {tag_dir} was trained on another dataset (fingerprint {saved}) than {what} "
        f"(fingerprint {ours}: {differ}). Point {what.split('=')[0]} at the "
        "run's data, or set data.allow_dataset_change=true to continue on this one"
    )


class Checkpointer:
    """should_save / save / find / restore for one run directory (run_dir/checkpoints)."""

    def __init__(self, cfg: RunConfig, info: DistInfo, run_dir: Path, fingerprint: str) -> None:
        self.cfg, self.info, self.fingerprint = cfg, info, fingerprint
        self.root = run_dir / "checkpoints"
        self.expected = ckpt.expected_rank_files(
            info.world_size, cfg.deepspeed.zero_stage, cfg.deepspeed.precision
        )
        self.callbacks: Sequence[Callback] = ()
        self.beat: Callable[[str], None] = lambda where: None

    def find(self, model: Any) -> ResumePoint | None:
        """The checkpoint to resume from (checkpoint.resume), verified. Rank 0 finds it and checks its layout (files
        and sizes, O(number of files)); then each rank checks the contents of its share of the files (sha256, safe
        unpickling) and every rank gets every verdict, so a bad checkpoint stops all of them at once; then rank 0
        compares it with this run. Another world size or model shape is named here, not by DeepSpeed's or torch's
        traceback."""
        if not self.cfg.checkpoint.resume:
            return None
        verdict: tuple[ResumePoint | None, dict[str, Any] | None, str | None] = (None, None, None)
        if self.info.is_main:
            try:
                verdict = (*self._verify(), None)
            except ckpt.CheckpointError as e:
                verdict = (None, None, str(e))
        point, meta, error = cast(
            tuple[ResumePoint | None, dict[str, Any] | None, str | None], D.broadcast_object(verdict)
        )
        if error is not None:
            raise ckpt.CheckpointError(error)
        if point is None or meta is None:
            return None
        c = self.cfg.checkpoint
        mine = verify_checkpoint_share(
            self.root / point.tag, meta, c.trusted, c.verify_hashes, self.info.rank, self.info.world_size
        )
        refused = [e for e in D.all_gather_object(mine) if e is not None]
        if refused:
            raise ckpt.CheckpointError(str(refused[0]))
        # Only a checkpoint whose every file passed is read for its shapes (weights-only, but still after).
        mismatch = None
        if self.info.is_main:
            mismatch = checkpoint_mismatch(self.root / point.tag, meta, model, self.info.world_size, self.cfg)
        told = D.broadcast_object(mismatch)
        if told is not None:
            raise ckpt.CheckpointError(str(told))
        return point

    def _verify(self) -> tuple[ResumePoint | None, dict[str, Any] | None]:
        found = ckpt.find_resume(self.root)
        if found is None:
            return None, None
        meta = ckpt.verify_layout(self.root / found)
        # The data position comes from checkpoint.json, which a universal conversion carries over as well.
        saved = meta.get("client_state", {})
        point = ResumePoint(
            tag=found,
            consumed=saved.get("consumed_samples"),
            skipped=saved.get("skipped_samples"),
            schedule=saved_schedule(saved),
            notes=[dataset_change(self.root / found, saved, self.fingerprint, self.cfg)],
        )
        return point, meta

    def restore(self, engine: Engine, point: ResumePoint, progress: Progress) -> None:
        """Load the engine's state from `point` and set `progress` to where that run stopped."""
        state = engine.load(self.root, point.tag)
        progress.step = int(state.get("step", ckpt.step_of(point.tag)))
        progress.skipped_steps = int(state.get("cloze_skipped_steps", 0))
        fallback = state.get("consumed_samples", progress.step * self.cfg.trainer.global_batch_size)
        progress.consumed = int(point.consumed if point.consumed is not None else fallback)
        skipped = point.skipped if point.skipped is not None else state.get("skipped_samples", 0)
        progress.skips.skipped = int(skipped)
        if self.info.is_main:
            print(
                f"resumed from {self.root / point.tag} at step {progress.step}, global sample {progress.consumed} "
                f"({progress.skips.skipped} unreadable samples skipped so far)",
                flush=True,
            )

    def should_save(self, step: int, stop_at: int) -> bool:
        """checkpoint.every_steps; the run's last step is saved by the Trainer on the way out."""
        every = self.cfg.checkpoint.every_steps
        return bool(every) and step % every == 0 and step < stop_at

    def save(self, engine: Engine, progress: Progress, schedule: tuple[int, int]) -> None:
        """Save the checkpoint of `progress.step` (collective: every rank calls it at the same step)."""
        at, rank = progress.step, self.info.rank
        t0 = time.perf_counter()
        state = {
            "step": at,
            "consumed_samples": progress.consumed,  # the data position: where the next run's loader starts
            "skipped_samples": progress.skips.skipped,  # unreadable samples skipped so far, against skip_budget
            "cloze_skipped_steps": progress.skipped_steps,  # DeepSpeed's own state has a "skipped_steps"
            "schedule": {"max_steps": schedule[0], "warmup_steps": schedule[1]},  # what the lr follows
            "dataset_fingerprint": self.fingerprint,  # resuming on another dataset is an error
            "config": self.cfg.to_dict(),
        }
        on_written = overriding(self.callbacks, "on_checkpoint_written")

        def written(tmp_dir: Path) -> None:
            for cb in on_written:
                cb.on_checkpoint_written(at, rank, tmp_dir)

        self.beat(f"saving the checkpoint of step {at}")
        keep = self.cfg.checkpoint.keep_last
        path = ckpt.save(engine, self.root, at, state, self.expected, keep, self.info.is_main, written)
        self.beat(f"saved the checkpoint of step {at}")
        for cb in self.callbacks:
            cb.on_checkpoint(at, time.perf_counter() - t0, str(path))
