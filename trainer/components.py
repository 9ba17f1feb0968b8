"""The Trainer's components other than the checkpointer (trainer/checkpointer.py). Each decides when it acts and
owns its state; the Trainer (trainer/loop.py) calls them at fixed points of a step:

- `Watchdog`: ends a rank that makes no progress (a hang outside a collective never reaches its timeout).
- `Preemption`: SIGUSR1/SIGTERM set a flag; the step acts on it on every rank at once, then exits for requeue.
- `NonFinitePolicy`: a NaN/Inf loss or gradient norm skips the step everywhere; too many in a row stop the run.
- `Evaluator`: held-out metrics every trainer.eval_every steps and at the end, next to the trivial baseline.
- `Throughput`: tokens/s, TFLOP/s, MFU, memory and the data wait of each step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data_pipeline.loader import EvalStream, ShardReader, SkipBudget
from data_pipeline.manifest import Manifest
from data_pipeline.sources import InputError
from modeling.flops import peak_flops_for, train_flops_per_token
from modeling.registry import get_family

from . import distributed as D
from .callbacks import Callback
from .config import RunConfig
from .distributed import DistInfo
from .engine import Engine
from .losses import Task

EXIT_REQUEUE = 75
"""Exit code of a run stopped by SIGUSR1/SIGTERM after saving its checkpoint (EX_TEMPFAIL): requeue me."""
PREEMPTED_MARKER_ENV = "CLOZE_PREEMPTED_MARKER"
"""If set, rank 0 writes the step to this file once the checkpoint after a stop signal is committed."""
EXIT_HUNG = 70
"""Exit code of a rank whose watchdog saw no progress for the collective timeout (EX_SOFTWARE)."""


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a NaN/Inf loss on some rank, or a NaN/Inf gradient norm."""


def all_reduce_dict(sums: dict[str, float]) -> dict[str, float]:
    """Sum every rank's statistics (the same keys on every rank) in one all-reduce."""
    keys = sorted(sums)
    return dict(zip(keys, D.all_reduce_sum([sums[k] for k in keys])))


class Watchdog:
    """Ends this rank with EXIT_HUNG when the loop makes no progress for `seconds`: a rank stuck outside a
    collective (data, compute, a deadlock) never reaches the collective timeout, so it needs its own clock."""

    def __init__(self, seconds: float, rank: int) -> None:
        self.seconds, self.rank = seconds, rank
        self.where = "start"
        self.last = time.monotonic()
        threading.Thread(target=self._watch, daemon=True, name="cloze-watchdog").start()

    def beat(self, where: str) -> None:
        self.where, self.last = where, time.monotonic()

    def _watch(self) -> None:
        while True:
            idle = time.monotonic() - self.last
            if idle > self.seconds:
                sys.stderr.write(
                    f"cloze: rank {self.rank} made no progress for {idle:.0f}s ({self.where}): a hung rank or a "
                    f"stalled collective; exiting with code {EXIT_HUNG} (deepspeed.timeout_minutes sets the limit)\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_HUNG)
            time.sleep(min(5.0, self.seconds / 10))


class Preemption:
    """SIGUSR1 / SIGTERM only set a flag; the Trainer puts it into the step's all-reduce, so every rank sees any
    rank's signal at the same step boundary, saves, and exits with EXIT_REQUEUE."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self.signum = signum

    @property
    def requested_here(self) -> float:
        """1.0 when this rank got a stop signal: summed over ranks in the step's all-reduce."""
        return float(self.signum != 0)

    def committed(self, step: int, is_main: bool) -> None:
        """The checkpoint after the stop is committed: tell the SLURM script (CLOZE_PREEMPTED_MARKER) to requeue
        even if srun reports another rank's exit code."""
        marker = os.environ.get(PREEMPTED_MARKER_ENV)
        if marker and is_main:
            Path(marker).write_text(f"{step}\n")


class NonFinitePolicy:
    """A step whose loss is NaN/Inf on any rank is skipped on every rank (the Trainer decides that before the
    optimizer step); a NaN/Inf gradient norm with a finite loss is skipped by the engine. Either counts toward
    trainer.max_nonfinite_steps in a row, after which the run stops with NonFiniteLossError. Under fp16 a skipped
    step with a finite loss is the loss scaler's overflow, which lowers the scale and is not a fault."""

    def __init__(self, cfg: RunConfig, is_main: bool, ckpt_root: Path) -> None:
        self.limit = cfg.trainer.max_nonfinite_steps
        self.fp16 = cfg.deepspeed.precision == "fp16"
        self.is_main, self.ckpt_root = is_main, ckpt_root
        self.in_a_row = 0

    def after_step(self, step: int, nonfinite_ranks: int, skipped: bool) -> None:
        bad_grad = skipped and not nonfinite_ranks and not self.fp16
        if not (nonfinite_ranks or bad_grad):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.is_main:
            what = f"loss on {nonfinite_ranks} rank(s)" if nonfinite_ranks else "gradient norm"
            print(
                f"step {step}: non-finite {what}; step skipped on every rank ({self.in_a_row} in a row)",
                flush=True,
            )
        if self.limit and self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"{self.in_a_row} steps in a row (up to step {step}) had a NaN/Inf loss or gradient norm and were "
                f"skipped (trainer.max_nonfinite_steps={self.limit}); the weights are those of the last good step. "
                "Lower optimizer.lr, raise optimizer.warmup_steps or check the data, then resume from "
                f"{self.ckpt_root}"
            )


def most_frequent_label(
    data_dir: str, manifest: Manifest, samples: int = 2000, budget: SkipBudget | None = None
) -> int:
    """The token most often asked for in training labels: the accuracy baseline of a model that learned nothing.
    Unreadable samples are left out and counted against `budget` (none: any one is an error)."""
    reader = ShardReader(data_dir, manifest, "train")
    budget = budget if budget is not None else SkipBudget(0)
    special_end = max([*manifest.special_tokens.values(), *manifest.sentinel_ids]) + 1
    counts = np.zeros(manifest.tokenizer["vocab_size"], dtype=np.int64)
    n = 0
    try:
        for shard, entry in enumerate(reader.shards):
            for i in range(entry.samples):
                try:
                    sample = reader.read(shard, i)
                except InputError as e:
                    budget.add(1, "while scanning the training labels at start-up", str(e))
                    continue
                # Static shards: the labels asked for; on-the-fly shards: the ordinary input tokens.
                ids = (
                    sample["labels"]
                    if "labels" in sample
                    else sample["input_ids"][sample["input_ids"] >= special_end]
                )
                np.add.at(counts, ids[ids >= 0], 1)
                n += 1
                if n >= samples:
                    return int(counts.argmax())
    finally:
        reader.close()
    return int(counts.argmax())


class Evaluator:
    """Held-out metrics on the dataset's eval split (capped by trainer.eval_batches), every trainer.eval_every steps
    and once at the end. Accuracy comes with its trivial baseline: always predicting the most frequent label token
    (encoder families), which is what "learned something" is measured against.

    With a mixture every dataset's validation split is scored on its own (`<name>/loss`, `<name>/mlm_accuracy`
    with its own baseline, ...: per language for a multilingual run), and the unprefixed metrics pool them all."""

    def __init__(
        self,
        cfg: RunConfig,
        info: DistInfo,
        sources: Sequence[tuple[str, str, Manifest]],
        task: Task,
        skips: SkipBudget,
    ) -> None:
        t, d = cfg.trainer, cfg.data
        self.every, self.max_steps, self.task = t.eval_every, t.max_steps, task
        # Unreadable samples met by the baseline scan count against the budget (not saved: a resumed run scans
        # them again).
        scan_budget = SkipBudget(skips.budget, skips.skipped)
        self.parts: list[tuple[str, EvalStream, int | None]] = []
        """(name, its validation stream, its baseline label): one per dataset ("" for a single dataset)."""
        for name, path, manifest in sources:
            baseline = (
                most_frequent_label(path, manifest, budget=scan_budget) if not cfg.model.is_seq2seq else None
            )
            stream = EvalStream(
                path,
                t.micro_batch_size,
                info.world_size,
                info.rank,
                t.eval_batches,
                d.objective,
                d.objective_options,
                list(cfg.model.languages) if get_family(cfg.model.family).languages else None,
            )
            self.parts.append((name if len(sources) > 1 else "", stream, baseline))
        self.stream = self.parts[0][1]
        self.baseline_id = self.parts[0][2]
        self.callbacks: Sequence[Callback] = ()
        self.beat: Callable[[str], None] = lambda where: None

    def due(self, step: int) -> bool:
        """Every trainer.eval_every steps, except the last (run() evaluates once after it)."""
        return bool(self.every) and step % self.every == 0 and step < self.max_steps

    def _sums(self, engine: Engine, at: int, stream: EvalStream, baseline: int | None) -> dict[str, float]:
        sums: dict[str, float] = {}
        for i, batch in enumerate(stream):
            self.beat(f"evaluation at step {at}, batch {i}")
            # A padding batch only keeps this rank's forward passes in step with the others': not counted.
            weight = 0.0 if int(batch.pop(EvalStream.PADDING_KEY, 0)) else 1.0
            r = self.task(engine.forward, engine.to_device(batch), baseline)
            for k, v in r.sums.items():
                sums[k] = sums.get(k, 0.0) + weight * v
        return sums

    def evaluate(self, engine: Engine, at: int) -> dict[str, float]:
        engine.train(False)
        with torch.no_grad():
            parts = [(name, stream, self._sums(engine, at, stream, b)) for name, stream, b in self.parts]
        engine.train(True)
        pooled: dict[str, float] = {}
        m: dict[str, float] = {}
        for name, stream, sums in parts:
            for k, v in sums.items():
                pooled[k] = pooled.get(k, 0.0) + v
            if name:
                own = self.task.summarize(all_reduce_dict(sums))
                m.update({f"{name}/{k}": v for k, v in own.items()})
                m[f"{name}/eval_samples"] = float(stream.samples)
        m.update(self.task.summarize(all_reduce_dict(pooled)))
        # Which part of the held-out split this is: the whole of it unless trainer.eval_batches caps it.
        m["eval_samples"] = float(sum(stream.samples for _, stream, _ in self.parts))
        m["eval_split_samples"] = float(sum(stream.total for _, stream, _ in self.parts))
        for cb in self.callbacks:
            cb.on_eval(at, m)
        return m


def memory_gib() -> float:
    """CUDA max allocated on GPU; on CPU this process's peak resident set (RSS)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Throughput:
    """Per-step speed: tokens/s, samples/s, model TFLOP/s per device and MFU (modeling/flops.py's count against
    deepspeed.peak_tflops, or the GPU's known peak), time waiting for data, peak memory."""

    def __init__(self, cfg: RunConfig, manifest: Manifest, world_size: int) -> None:
        self.world_size = world_size
        self.batch = cfg.trainer.global_batch_size
        self.tokens = self.batch * manifest.seq_len
        target_len = int(
            manifest.objective_params.get("target_len", 0)
            or (manifest.seq_len if cfg.model.is_seq2seq else 0)
        )
        mask_rate = float(manifest.objective_params.get("rate", 0.15) or 0.15)
        self.flops = self.tokens * train_flops_per_token(cfg.model, manifest.seq_len, target_len, mask_rate)
        self.peak = cfg.deepspeed.peak_tflops * 1e12 or (
            peak_flops_for(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        )

    def metrics(self, dt: float, data_wait: float) -> dict[str, float]:
        per_device = self.flops / dt / self.world_size
        return {
            "tokens_per_s": self.tokens / dt,
            "tflops_per_s_per_device": per_device / 1e12,
            **({"mfu": per_device / self.peak} if self.peak else {}),
            "samples_per_s": self.batch / dt,
            "step_time_s": dt,
            "data_wait_s": data_wait,
            "compute_s": dt - data_wait,
            "memory_gib": memory_gib(),
        }
