"""The Trainer: build -> resume -> steps -> finish, made of components that decide when they act and own their
state (trainer/checkpointer.py: Checkpointer; trainer/components.py: Evaluator, Throughput, NonFinitePolicy,
Preemption, Watchdog). The resolved run state (trainer/state.py) is worked out before it starts; the loaded config
is never changed. Plugins (`cloze train --plugin`) act at the hooks of trainer/callbacks.py.

One step, on every rank: read grad_accum micro-batches, normalise the loss by the global target count (one
all-reduce), forward/backward each, then one all-reduce of the step's metrics, stop signals and NaN/Inf flags, so
that every rank makes the same decision (apply or skip the step, stop, save) at the same step boundary.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from data_pipeline.hf_tokenizer import save_run_tokenizer
from data_pipeline.loader import SkipBudget, StreamSource, StreamSpec, TrainStream, train_loader
from data_pipeline.sources import InputError
from modeling import build_model
from modeling.hf import init_from_hf
from modeling.registry import get_family

from . import checkpoint as ckpt
from . import distributed as D
from .callbacks import Callback, ConsoleCallback, ProgressCallback, TensorBoardCallback, overriding
from .checkpointer import Checkpointer, Progress, ResumePoint, run_schedule
from .components import (
    EXIT_REQUEUE,
    Evaluator,
    NonFinitePolicy,
    Preemption,
    Throughput,
    Watchdog,
    all_reduce_dict,
)
from .config import RunConfig
from .distributed import DistInfo
from .engine import Engine, init_distributed
from .losses import Task, task_for
from .state import RunState, prepare

__all__ = ["EXIT_REQUEUE", "FitResult", "Trainer", "fit"]

Batch = dict[str, torch.Tensor]


def _kill_workers(batches: object) -> None:
    """End the loader's worker processes now. They ignore SIGUSR1/SIGTERM (the training process decides when to
    stop), so the terminate() torch and multiprocessing send at exit would leave the exit hanging on a join. torch
    stops watching their exits first (its SIGCHLD handler would call a killed reader an error), then SIGKILL."""
    from torch.utils.data._utils import signal_handling

    if getattr(batches, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False  # type: ignore[attr-defined]
    for w in getattr(batches, "_workers", []):
        if w.is_alive():
            w.kill()
            w.join(timeout=5)
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


@dataclass
class FitResult:
    step: int
    eval: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    run_dir: str = ""
    preempted: bool = False
    """Stopped by a signal (SIGUSR1 / SIGTERM): checkpoint saved, the job should be requeued."""


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, micro): dropout RNG needs no saved state to resume."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def loss_normalizers(
    task: Task, micro_batches: list[dict[str, torch.Tensor]], multiplier: float
) -> dict[str, float]:
    """Each loss term's denominator for this step: its target count over every micro-batch of every rank (one
    all-reduce), divided by `multiplier` (Engine.loss_multiplier, what DeepSpeed divides the gradients by). After
    DeepSpeed's 1/grad_accum and 1/world averaging the gradient is sum(token losses) / global count, as in fairseq
    and Megatron: a token weighs the same whichever micro-batch or rank it lands in."""
    local: dict[str, float] = {}
    for mb in micro_batches:
        for k, v in task.counts(mb).items():
            local[k] = local.get(k, 0.0) + v
    keys = sorted(local)
    totals = D.all_reduce_sum([local[k] for k in keys])
    return {k: max(v, 1.0) / multiplier for k, v in zip(keys, totals)}


def forward_backward_phases(
    engine: Engine,
    task: Task,
    micro_batches: list[Batch],
    seed: Callable[[int, int], int],
    on_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    metrics: dict[str, float] | None = None,
) -> tuple[dict[str, float], bool, int]:
    """Forward and backward of the step's micro-batches (gradients accumulate), phase by phase (Task.phases; one
    unnamed phase for most tasks), each micro-batch under torch seed `seed(micro, phase index)`. Every phase but
    the last ends with its own optimizer step here, decided on every rank alike by one all-reduce of the NaN/Inf
    flags; the last phase's step is the caller's (Engine.step(phase=task.phases[-1])). Returns this rank's metric
    sums, whether a loss of the last phase was NaN/Inf on this rank, and how many earlier phase steps were
    skipped; `metrics` receives each earlier phase's gradient norm (grad_norm_<phase>)."""
    norm = loss_normalizers(task, micro_batches, engine.loss_multiplier)
    phases = task.phases or ("",)
    sums: dict[str, float] = {}
    batches, skipped = micro_batches, 0
    for index, phase in enumerate(phases):
        nonfinite = False
        carries: list[Batch] = []
        for micro, mb in enumerate(batches):
            torch.manual_seed(seed(micro, index))
            batch = engine.to_device(mb)
            # `phase` only for a phased task: a plugin's single-phase task need not take it
            r = (
                task(engine.forward, batch, norm=norm, phase=phase)
                if phase
                else task(engine.forward, batch, norm=norm)
            )
            r.loss = on_loss(r.loss)
            nonfinite |= not bool(torch.isfinite(r.loss.detach()))
            engine.backward(r.loss)
            for k, v in r.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            if r.carry is not None:
                carries.append(r.carry)
            if micro < len(batches) - 1:
                engine.step()
        if index == len(phases) - 1:
            return sums, nonfinite, skipped
        bad = D.all_reduce_sum([float(nonfinite)])[0]
        skipped += engine.step(apply=not bad, phase=phase)
        if metrics is not None:
            metrics[f"grad_norm_{phase}"] = engine.grad_norm()
        batches = carries
    raise AssertionError("unreachable: the last phase returns")


MIXTURE_COUNT = "mixture_count_"
"""Step sums: samples of a mixture's k-th source in the step (summed over ranks)."""


class Trainer:
    """One pretraining run on this rank: `Trainer(state, info, plugins).run()`. Building it writes the run
    directory, builds the model and the engine, and restores the checkpoint it resumes from (checkpoint.resume)."""

    def __init__(self, state: RunState, info: DistInfo, plugins: list[Callback]) -> None:
        self.state, self.info, self.cfg = state, info, state.cfg
        self.run_dir = Path(self.cfg.run_dir)
        self.plugins = plugins
        self._write_run_dir()
        torch.manual_seed(self.cfg.trainer.seed)
        model = build_model(self.cfg.model)
        self.checkpointer = Checkpointer(self.cfg, info, self.run_dir, state.fingerprint)
        point = self.checkpointer.find(model)
        if point is None and self.cfg.model.init_from:  # a fresh run from a transformers checkpoint
            left = init_from_hf(model, self.cfg.model, self.cfg.model.init_from)
            if info.is_main:
                print(
                    f"initialised from {self.cfg.model.init_from}"
                    + (f" ({len(left)} tensors left at random, e.g. {left[0]})" if left else ""),
                    flush=True,
                )
        self.schedule, schedule_note = run_schedule(self.cfg, point.schedule if point else None)
        # A universal checkpoint (cloze convert --to-universal) loads on any world size; DeepSpeed is told now.
        universal = point is not None and ckpt.is_universal(point.tag)
        self.engine = Engine(
            model, self.cfg, state.grad_accum, load_universal=universal, schedule=self.schedule
        )
        if info.is_main:
            self.engine.write_config(self.run_dir)
        self.progress = Progress(SkipBudget(self.cfg.data.skip_budget))
        if point is not None:
            self._restore(point, schedule_note)
        self.task: Task = task_for(self.cfg.model)
        self.task.mask_id = state.manifest.special_tokens.get(
            "mask"
        )  # MLM metrics split by [MASK]/random/kept

    def _write_run_dir(self) -> None:
        """The run directory stands alone: the resolved config with absolute paths, and a copy of the tokenizer
        the shards were written with."""
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml_absolute())
            save_run_tokenizer(self.state.data_path, self.state.manifest, self.run_dir)
        D.barrier()

    def _restore(self, point: ResumePoint, schedule_note: str) -> None:
        self.checkpointer.restore(self.engine, point, self.progress)
        if self.info.is_main:
            for note in (*point.notes, schedule_note):
                if note:
                    print(note, flush=True)

    def _start(self) -> None:
        """The parts a run needs only once it trains: callbacks, evaluator, loader, signal handling, watchdog."""
        cfg, info, p = self.cfg, self.info, self.progress
        t, d = cfg.trainer, cfg.data
        self.callbacks: list[Callback] = list(self.plugins)
        if info.is_main:
            if cfg.logging.tensorboard:
                self.callbacks.append(TensorBoardCallback(self.run_dir / "tensorboard"))
            self.callbacks.append(ConsoleCallback(cfg.logging.log_every, t.max_steps))
            if cfg.logging.progress_bar:
                self.callbacks.append(ProgressCallback(t.max_steps, p.step))
        plan = self.state.mixture
        eval_sources = (
            list(zip(plan.names, plan.paths, plan.manifests, strict=True))
            if plan is not None
            else [("", self.state.data_path, self.state.manifest)]
        )
        self.evaluator = Evaluator(cfg, info, eval_sources, self.task, p.skips)
        spec = StreamSpec(
            t.global_batch_size, t.micro_batch_size, info.world_size, info.rank, p.consumed, t.seed
        )
        sources, order = None, None
        if plan is not None:
            sources = [
                StreamSource(path, "train", d.objective, d.objective_options, name, mixed=True)
                for path, name in zip(plan.paths, plan.names, strict=True)
            ]
            order = plan.order(t.seed, t.global_batch_size)
            if info.is_main:
                print(f"cloze: {plan.describe()}", flush=True)
        if cfg.model.languages and get_family(cfg.model.family).languages:
            sources = sources or [
                StreamSource(self.state.data_path, "train", d.objective, d.objective_options)
            ]
            for src in sources:  # every sample gets `langs` in the run's language ids
                src.use_languages(list(cfg.model.languages))
        self.mixture_order = order
        self.batches = iter(
            train_loader(
                self.state.data_path,
                spec,
                d.num_workers,
                d.prefetch_factor,
                d.objective,
                d.objective_options,
                sources,
                order,
            )
        )
        atexit.register(_kill_workers, self.batches)
        self.throughput = Throughput(cfg, self.state.manifest, info.world_size)
        self.nonfinite = NonFinitePolicy(cfg, info.is_main, self.checkpointer.root)
        self.preemption = Preemption()
        self.watchdog = Watchdog(cfg.deepspeed.timeout_minutes * 60, info.rank)
        for component in (self.checkpointer, self.evaluator):
            component.callbacks, component.beat = self.callbacks, self.watchdog.beat
        # Plugins' hooks (cloze train --plugin): only callbacks that override a hook are called at it.
        self.on_step_begin = overriding(self.callbacks, "on_step_begin")
        self.on_loss = overriding(self.callbacks, "on_loss")

    def run(self) -> FitResult:
        t, p = self.cfg.trainer, self.progress
        result = FitResult(step=p.step, run_dir=str(self.run_dir))
        if p.step > t.max_steps:
            if self.info.is_main:
                print(
                    f"the checkpoint is at step {p.step}, past trainer.max_steps={t.max_steps}: nothing to train. "
                    f"To train on, raise trainer.max_steps above {p.step} (trainer.extend_schedule=true stretches "
                    "the learning-rate schedule to it)",
                    flush=True,
                )
            return result
        self._start()
        start_step = p.step
        stop_at = t.stop_after_steps if 0 < t.stop_after_steps < t.max_steps else t.max_steps
        self.engine.train(True)
        while p.step < stop_at:
            totals = self.train_step()
            if self.evaluator.due(p.step):
                result.eval = self.evaluate()
            if totals["stop_requested"] > 0:
                if self.info.is_main:
                    print(
                        f"stop requested by a signal at step {p.step}: saving a checkpoint, then exit {EXIT_REQUEUE}",
                        flush=True,
                    )
                result.preempted = True
                break
            if self.checkpointer.should_save(p.step, stop_at):
                self.checkpointer.save(self.engine, p, self.schedule)
        self._finish(result, start_step)
        return result

    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate(self.engine, self.progress.step)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on this rank; returns the step's totals over all ranks."""
        p, rank = self.progress, self.info.rank
        self.watchdog.beat(f"step {p.step + 1}")
        for cb in self.on_step_begin:
            cb.on_step_begin(p.step + 1, rank)
        t0 = time.perf_counter()
        self._source_counts = torch.zeros(len(self.state.mixture.names) if self.state.mixture else 0)
        micro_batches, skipped_here, skip_error = self._micro_batches()
        data_wait = time.perf_counter() - t0
        phase_metrics: dict[str, float] = {}
        sums, nonfinite, phase_skips = self._phases(micro_batches, phase_metrics)
        sums["skipped_samples"] = float(skipped_here)
        sums["stop_requested"] = self.preemption.requested_here
        sums["nonfinite_ranks"] = float(nonfinite)
        for k, n in enumerate(self._source_counts.tolist()):
            sums[f"{MIXTURE_COUNT}{k}"] = n
        # One all-reduce before the optimizer step: metrics, whether any rank was told to stop, and whether any
        # rank's loss was NaN/Inf (then every rank skips this step).
        totals = all_reduce_dict(sums)
        # Every rank adds the same all-ranks total, so every rank stops at the same step, before its update.
        p.skips.add(round(totals["skipped_samples"]), f"by step {p.step + 1} over all ranks", skip_error)
        p.consumed += self.cfg.trainer.global_batch_size
        bad_ranks = int(totals["nonfinite_ranks"])
        last_phase = self.task.phases[-1] if self.task.phases else ""
        skipped = self.engine.step(apply=not bad_ranks, phase=last_phase) or phase_skips > 0
        p.skipped_steps += skipped
        p.step += 1
        dt = time.perf_counter() - t0
        self.nonfinite.after_step(p.step, bad_ranks, bool(skipped))
        metrics = {
            **self.task.summarize(totals),
            "lr": self.engine.lr(),
            "grad_norm": self.engine.grad_norm(),
            **phase_metrics,
            "loss_scale": self.engine.loss_scale(),
            "skipped_steps": p.skipped_steps,
            **self.throughput.metrics(dt, data_wait),
            "consumed_samples": p.consumed,
            "consumed_tokens": p.consumed * self.state.seq_len,
            "skipped_samples": p.skips.skipped,
            **self._mixture_shares(totals),
        }
        for cb in self.callbacks:
            cb.on_step(p.step, metrics)
        return totals

    def _mixture_shares(self, totals: dict[str, float]) -> dict[str, float]:
        """A mixture's realised share of each source in the step just taken (mixture/<name>), next to the
        configured one (mixture_target/<name>)."""
        plan = self.state.mixture
        if plan is None:
            return {}
        b = self.cfg.trainer.global_batch_size
        assert self.mixture_order is not None
        target = self.mixture_order.probs_at(self.progress.step - 1, b)
        out = {}
        for k, name in enumerate(plan.names):
            out[f"mixture/{name}"] = totals.get(f"{MIXTURE_COUNT}{k}", 0.0) / b
            out[f"mixture_target/{name}"] = target[k]
        return out

    def _micro_batches(self) -> tuple[list[Batch], int, str]:
        """The step's micro-batches (all read first: the loss is normalised by the step's global target count),
        the unreadable samples left out of them, and the first such sample's error."""
        micro_batches = [next(self.batches) for _ in range(self.state.grad_accum)]
        skipped_here, skip_error = 0, ""
        for mb in micro_batches:
            counts = mb.pop(TrainStream.COUNTS_KEY, None)
            if counts is not None:  # a mixture's samples per source, summed over the step
                self._source_counts = self._source_counts + counts.double()
            skipped_here += int(mb.pop("skipped_samples"))
            error = cast(str, mb.pop("skip_error"))
            skip_error = skip_error or error
        # A micro-batch with nothing to train on: the budget's error if it is spent, else the stream's own.
        unreadable = [
            str(mb[TrainStream.UNREADABLE_KEY]) for mb in micro_batches if TrainStream.UNREADABLE_KEY in mb
        ]
        if unreadable:
            where = f"on rank {self.info.rank} by step {self.progress.step + 1}"
            skips = self.progress.skips
            SkipBudget(skips.budget, skips.skipped).add(skipped_here, where, skip_error)
            raise InputError(unreadable[0])
        return micro_batches, skipped_here, skip_error

    def _phases(
        self, micro_batches: list[Batch], metrics: dict[str, float]
    ) -> tuple[dict[str, float], bool, int]:
        p, rank, seed = self.progress, self.info.rank, self.cfg.trainer.seed

        def on_loss(loss: torch.Tensor) -> torch.Tensor:
            for cb in self.on_loss:
                loss = cb.on_loss(p.step + 1, rank, loss)
            return loss

        return forward_backward_phases(
            self.engine,
            self.task,
            micro_batches,
            lambda micro, phase: derived_seed(seed, p.step, rank, micro, *([phase] if phase else [])),
            on_loss,
            metrics,
        )

    def _finish(self, result: FitResult, start_step: int) -> None:
        """The final evaluation (a finished run), the last checkpoint, the requeue marker, cleanup, result.json."""
        p, t = self.progress, self.cfg.trainer
        result.step = p.step
        if p.step >= t.max_steps and not result.preempted:
            result.eval = self.evaluate()
        else:
            result.stopped_early = True
        if p.step != start_step:  # the same decision on every rank (saving is collective)
            self.checkpointer.save(self.engine, p, self.schedule)
        if result.preempted:
            self.preemption.committed(p.step, self.info.is_main)
        _kill_workers(self.batches)  # readers are done; nothing must hold the exit up
        atexit.unregister(_kill_workers)
        for cb in self.callbacks:
            cb.close()
        if self.info.is_main:
            (self.run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")


def fit(cfg: RunConfig, extra_callbacks: list[Callback] | None = None) -> FitResult:
    """Train the run `cfg` describes on this rank (every rank calls it); `extra_callbacks`: plugins' callbacks."""
    info = D.discover()
    print(f"cloze: {info.describe()}", flush=True)
    state = prepare(cfg, info.world_size)
    init_distributed(info, cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes)
    return Trainer(state, info, list(extra_callbacks or [])).run()
