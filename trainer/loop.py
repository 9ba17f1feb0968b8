"""fit(): build -> resume -> steps -> callbacks. Everything else lives in the components it calls."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from data_pipeline.hf_tokenizer import save_run_tokenizer
from data_pipeline.loader import (
    EvalStream,
    ShardReader,
    SkipBudget,
    StreamSpec,
    TrainStream,
    objective_of,
    train_loader,
)
from data_pipeline.manifest import Manifest, read_manifest
from data_pipeline.sources import InputError
from modeling import build_model
from modeling.flops import peak_flops_for, train_flops_per_token
from modeling.registry import get_family

from . import checkpoint as ckpt
from . import distributed as D
from .callbacks import Callback, ConsoleCallback, ProgressCallback, TensorBoardCallback, overriding
from .config import ConfigError, RunConfig
from .engine import Engine, checkpoint_mismatch, init_distributed, verify_checkpoint
from .losses import Task, task_for

EXIT_REQUEUE = 75
"""Exit code of a run stopped by SIGUSR1/SIGTERM after saving its checkpoint (EX_TEMPFAIL): requeue me."""
PREEMPTED_MARKER_ENV = "CLOZE_PREEMPTED_MARKER"
"""If set, rank 0 writes the step to this file once the checkpoint after a stop signal is committed."""
EXIT_HUNG = 70
"""Exit code of a rank whose watchdog saw no progress for the collective timeout (EX_SOFTWARE)."""


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a NaN/Inf loss on some rank, or a NaN/Inf gradient norm."""


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


def memory_gib() -> float:
    """CUDA max allocated on GPU; on CPU this process's peak resident set (RSS)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class FitResult:
    step: int
    eval: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    run_dir: str = ""
    preempted: bool = False
    """Stopped by a signal (SIGUSR1 / SIGTERM): checkpoint saved, the job should be requeued."""


class StopFlag:
    """SIGUSR1 / SIGTERM only set a flag; the loop acts on it at the next step boundary, on every rank at once."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self.signum = signum


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, micro): dropout RNG needs no saved state to resume."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


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
                reader.close()
                return int(counts.argmax())
    reader.close()
    return int(counts.argmax())


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


def dataset_change(tag_dir: Path, state: dict[str, Any], manifest: Manifest, cfg: RunConfig) -> str:
    """Empty when the checkpoint was trained on this dataset (or does not say which); a note when it was not and
    data.allow_dataset_change allows that; otherwise CheckpointError."""
    saved = state.get("dataset_fingerprint")
    ours = manifest.fingerprint()
    if not saved or saved == ours:
        return ""
    if cfg.data.allow_dataset_change:
        return (
            f"data.allow_dataset_change: resuming on {cfg.data.path} (dataset {ours}), not the dataset the "
            f"checkpoint was trained on ({saved}); the data position carries over"
        )
    raise ckpt.CheckpointError(
        f"checkpoint {tag_dir} was trained on another dataset (fingerprint {saved}) than data.path={cfg.data.path} "
        f"(fingerprint {ours}: its shards, tokenizer, objective, seq_len or seed differ). Point data.path at the "
        "run's dataset, or set data.allow_dataset_change=true to continue on this one"
    )


def prepare(cfg: RunConfig, world_size: int) -> tuple[int, Manifest]:
    """Validate the config against the world and the dataset; fill in what the dataset decides."""
    if not cfg.data.path:
        raise ConfigError("data.path is empty; set it to a directory written by `cloze shards`")
    manifest = read_manifest(cfg.data.path)
    grad_accum = cfg.resolve_batch(world_size)
    vocab = manifest.tokenizer["vocab_size"]
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({cfg.data.path}/manifest.json); set model.vocab_size=0 to take it from the dataset"
        )
    # The longest input a sample holds (BART's noise lengthens it past seq_len): the bound the loader checks too.
    longest = max(
        objective_of(manifest).longest_input(
            manifest.seq_len, manifest.objective_params, int(manifest.packing.get("longest_input", 0))
        ),
        int(manifest.objective_params.get("target_len", 0)),
    )
    spec = get_family(cfg.model.family)
    if spec.learned_positions and longest > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"the dataset's sequences ({longest} tokens) exceed model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; raise it"
        )
    family, objective = cfg.model.family, manifest.objective
    if objective not in spec.objectives:
        raise ConfigError(
            f"model.family={family!r} trains on {', '.join(spec.objectives)} shards, but {cfg.data.path} holds "
            f"{objective!r} shards; write matching shards (cloze shards --objective ...) or change model.family"
        )
    cfg.model.sentence_head = bool(
        manifest.build.get("sentence_task")
    )  # the data decides: pairs need the head
    cfg.model.pad_token_id = manifest.special_tokens["pad"]
    cfg.model.eos_token_id = manifest.special_tokens["eos"]
    cfg.model.bos_token_id = manifest.special_tokens.get("bos", cfg.model.bos_token_id)
    if spec.configure is not None:
        spec.configure(cfg.model)  # e.g. RoBERTa's positions start after the pad id
    cfg.trainer.grad_accum = grad_accum
    return grad_accum, manifest


def fit(cfg: RunConfig, extra_callbacks: list[Callback] | None = None) -> FitResult:
    info = D.discover()
    print(f"cloze: {info.describe()}", flush=True)
    grad_accum, manifest = prepare(cfg, info.world_size)
    init_distributed(info, cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The run directory stands alone: absolute paths, and a copy of the tokenizer the shards were written with.
        (run_dir / "config.yaml").write_text(cfg.to_yaml_absolute())
        save_run_tokenizer(cfg.data.path, manifest, run_dir)
    D.barrier()

    t = cfg.trainer
    torch.manual_seed(t.seed)
    model = build_model(cfg.model)

    ckpt_root = run_dir / "checkpoints"
    step = 0
    tag: str | None = None
    if cfg.checkpoint.resume:
        # Rank 0 finds and verifies; every rank gets the verdict, so a bad checkpoint stops all of them at once.
        # The data position comes from checkpoint.json, which a universal conversion carries over as well.
        verdict: tuple[str | None, str | None, dict[str, Any]] = (None, None, {})
        if info.is_main:
            try:
                found = ckpt.find_resume(ckpt_root)
                if found is not None:
                    meta = verify_checkpoint(
                        ckpt_root / found, cfg.checkpoint.trusted, cfg.checkpoint.verify_hashes
                    )
                    # Another world size or model shape: named here, not by DeepSpeed's or torch's traceback.
                    mismatch = checkpoint_mismatch(ckpt_root / found, meta, model, info.world_size, cfg)
                    if mismatch is not None:
                        raise ckpt.CheckpointError(mismatch)
                    saved = meta.get("client_state", {})
                    position = {k: saved[k] for k in ("consumed_samples", "skipped_samples") if k in saved}
                    position["schedule"] = saved_schedule(saved)
                    position["dataset_change"] = dataset_change(ckpt_root / found, saved, manifest, cfg)
                    verdict = (found, None, position)
            except ckpt.CheckpointError as e:
                verdict = (None, str(e), {})
        tag, error, position = cast(
            tuple[str | None, str | None, dict[str, Any]], D.broadcast_object(verdict)
        )
        if error is not None:
            raise ckpt.CheckpointError(error)
    # A universal checkpoint (cloze convert --to-universal) loads on any world size; DeepSpeed is told at build time.
    schedule, schedule_note = run_schedule(cfg, position.get("schedule") if tag is not None else None)
    engine = Engine(
        model, cfg, grad_accum, load_universal=tag is not None and ckpt.is_universal(tag), schedule=schedule
    )
    if info.is_main:
        engine.write_config(run_dir)
    skipped_steps = 0
    # The step drives the schedule; the data position is the number of samples consumed, which differs from
    # step x global batch once the global batch changes between runs (batch-size ramp-up).
    consumed = 0
    skips = SkipBudget(cfg.data.skip_budget)  # one budget for the whole run: all ranks, workers and resumes
    if tag is not None:
        state = engine.load(ckpt_root, str(tag))
        step = int(state.get("step", ckpt.step_of(tag)))
        skipped_steps = int(state.get("cloze_skipped_steps", 0))
        consumed = int(
            position.get("consumed_samples", state.get("consumed_samples", step * t.global_batch_size))
        )
        skips.skipped = int(position.get("skipped_samples", state.get("skipped_samples", 0)))
        if info.is_main:
            print(
                f"resumed from {ckpt_root / str(tag)} at step {step}, global sample {consumed} "
                f"({skips.skipped} unreadable samples skipped so far)",
                flush=True,
            )
            for note in (position.get("dataset_change"), schedule_note):
                if note:
                    print(note, flush=True)
        if step > t.max_steps:
            if info.is_main:
                print(
                    f"the checkpoint is at step {step}, past trainer.max_steps={t.max_steps}: nothing to train. "
                    f"To train on, raise trainer.max_steps above {step} (trainer.extend_schedule=true stretches "
                    "the learning-rate schedule to it)",
                    flush=True,
                )
            return FitResult(step=step, run_dir=str(run_dir))
    expected = ckpt.expected_rank_files(info.world_size, cfg.deepspeed.zero_stage, cfg.deepspeed.precision)

    callbacks: list[Callback] = list(extra_callbacks or [])
    if info.is_main:
        if cfg.logging.tensorboard:
            callbacks.append(TensorBoardCallback(run_dir / "tensorboard"))
        callbacks.append(ConsoleCallback(cfg.logging.log_every, t.max_steps))
        if cfg.logging.progress_bar:
            callbacks.append(ProgressCallback(t.max_steps, step))
    on_written = overriding(callbacks, "on_checkpoint_written")

    # Accuracy of always predicting the most frequent label token: what "learned something" is measured against.
    # Unreadable samples met by this scan count against the budget (not saved: a resumed run scans them again).
    scan_budget = SkipBudget(skips.budget, skips.skipped)
    baseline_id = (
        most_frequent_label(cfg.data.path, manifest, budget=scan_budget) if not cfg.model.is_seq2seq else None
    )
    spec = StreamSpec(t.global_batch_size, t.micro_batch_size, info.world_size, info.rank, consumed, t.seed)
    d = cfg.data
    batches = iter(
        train_loader(d.path, spec, d.num_workers, d.prefetch_factor, d.objective, d.objective_options)
    )
    atexit.register(_kill_workers, batches)
    eval_stream = EvalStream(
        d.path,
        t.micro_batch_size,
        info.world_size,
        info.rank,
        t.eval_batches,
        d.objective,
        d.objective_options,
    )

    def save(at: int) -> None:
        t0 = time.perf_counter()
        state = {
            "step": at,
            "consumed_samples": consumed,  # the data position: where the next run's loader starts
            "skipped_samples": skips.skipped,  # unreadable samples skipped so far, against data.skip_budget
            "cloze_skipped_steps": skipped_steps,  # DeepSpeed's own state has a "skipped_steps"
            "schedule": {"max_steps": schedule[0], "warmup_steps": schedule[1]},  # what the lr follows
            "dataset_fingerprint": manifest.fingerprint(),  # resuming on another dataset is an error
            "config": cfg.to_dict(),
        }
        watchdog.beat(f"saving the checkpoint of step {at}")

        def written(tmp_dir: Path) -> None:
            for cb in on_written:
                cb.on_checkpoint_written(at, info.rank, tmp_dir)

        path = ckpt.save(
            engine, ckpt_root, at, state, expected, cfg.checkpoint.keep_last, info.is_main, written
        )
        watchdog.beat(f"saved the checkpoint of step {at}")
        for cb in callbacks:
            cb.on_checkpoint(at, time.perf_counter() - t0, str(path))

    task = task_for(cfg.model)
    task.mask_id = manifest.special_tokens.get("mask")  # MLM metrics split by [MASK] / random / unchanged

    def reduce(sums: dict[str, float]) -> dict[str, float]:
        """Sum every rank's statistics (the same keys, in the same order, on every rank)."""
        keys = sorted(sums)
        return dict(zip(keys, D.all_reduce_sum([sums[k] for k in keys])))

    def evaluate(at: int) -> dict[str, float]:
        engine.train(False)
        sums: dict[str, float] = {}
        with torch.no_grad():
            for i, batch in enumerate(eval_stream):
                watchdog.beat(f"evaluation at step {at}, batch {i}")
                # A padding batch only keeps this rank's forward passes in step with the others': not counted.
                weight = 0.0 if int(batch.pop(EvalStream.PADDING_KEY, 0)) else 1.0
                r = task(engine.forward, engine.to_device(batch), baseline_id)
                for k, v in r.sums.items():
                    sums[k] = sums.get(k, 0.0) + weight * v
        engine.train(True)
        m = task.summarize(reduce(sums))
        # Which part of the held-out split this is: the whole of it unless trainer.eval_batches caps it.
        m["eval_samples"] = float(eval_stream.samples)
        m["eval_split_samples"] = float(eval_stream.total)
        for cb in callbacks:
            cb.on_eval(at, m)
        return m

    engine.train(True)
    start_step = step
    result = FitResult(step=step, run_dir=str(run_dir))
    stop_at = t.stop_after_steps if 0 < t.stop_after_steps < t.max_steps else t.max_steps
    tokens_per_step = t.global_batch_size * manifest.seq_len
    # Model FLOPs per step, for TFLOP/s and MFU (modeling/flops.py).
    target_len = int(
        manifest.objective_params.get("target_len", 0) or (manifest.seq_len if cfg.model.is_seq2seq else 0)
    )
    mask_rate = float(manifest.objective_params.get("rate", 0.15) or 0.15)
    flops_per_step = tokens_per_step * train_flops_per_token(
        cfg.model, manifest.seq_len, target_len, mask_rate
    )
    peak = cfg.deepspeed.peak_tflops * 1e12 or (
        peak_flops_for(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    )
    stop = StopFlag()
    watchdog = Watchdog(cfg.deepspeed.timeout_minutes * 60, info.rank)
    # Plugins' hooks (cloze train --plugin): only callbacks that override a hook are called at it.
    on_step_begin, on_loss = overriding(callbacks, "on_step_begin"), overriding(callbacks, "on_loss")
    nonfinite_in_a_row = 0
    while step < stop_at:
        watchdog.beat(f"step {step + 1}")
        for cb in on_step_begin:
            cb.on_step_begin(step + 1, info.rank)
        t0 = time.perf_counter()
        data_wait = 0.0
        sums: dict[str, float] = {}
        nonfinite = False
        # The step's micro-batches first: the loss is normalised by the global target count (loss_normalizers).
        t_data = time.perf_counter()
        micro_batches = [next(batches) for _ in range(grad_accum)]
        data_wait += time.perf_counter() - t_data
        skipped_here, skip_error = 0, ""  # unreadable samples left out of this rank's micro-batches
        for mb in micro_batches:
            skipped_here += int(mb.pop("skipped_samples"))
            error = cast(str, mb.pop("skip_error"))
            skip_error = skip_error or error
        # A micro-batch with nothing to train on: the budget's error if it is spent, else the stream's own.
        empty = TrainStream.UNREADABLE_KEY
        unreadable = [str(mb[empty]) for mb in micro_batches if empty in mb]
        if unreadable:
            where = f"on rank {info.rank} by step {step + 1}"
            SkipBudget(skips.budget, skips.skipped).add(skipped_here, where, skip_error)
            raise InputError(unreadable[0])
        norm = loss_normalizers(task, micro_batches, engine.loss_multiplier)
        for micro, mb in enumerate(micro_batches):
            torch.manual_seed(derived_seed(t.seed, step, info.rank, micro))
            b = engine.to_device(mb)
            r = task(engine.forward, b, norm=norm)
            for cb in on_loss:
                r.loss = cb.on_loss(step + 1, info.rank, r.loss)
            nonfinite |= not bool(torch.isfinite(r.loss.detach()))
            engine.backward(r.loss)
            for k, v in r.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            if micro < grad_accum - 1:
                engine.step()
        sums["skipped_samples"] = float(skipped_here)
        sums["stop_requested"] = float(stop.signum != 0)
        sums["nonfinite_ranks"] = float(nonfinite)
        # One all-reduce before the optimizer step: metrics, whether any rank was told to stop, and whether any
        # rank's loss was NaN/Inf (then every rank skips this step).
        totals = reduce(sums)
        # Every rank adds the same all-ranks total, so every rank stops at the same step, before its update.
        skips.add(round(totals["skipped_samples"]), f"by step {step + 1} over all ranks", skip_error)
        consumed += t.global_batch_size
        bad = totals["nonfinite_ranks"] > 0
        skipped = engine.step(apply=not bad)
        skipped_steps += skipped
        step += 1
        dt = time.perf_counter() - t0
        # A NaN/Inf gradient norm with a finite loss (skipped by DeepSpeed, or by the engine at stage 0 in fp32);
        # under fp16 that is the loss scaler's overflow, which lowers the scale and is not a fault.
        bad_grad = skipped and not bad and cfg.deepspeed.precision != "fp16"
        if bad or bad_grad:
            nonfinite_in_a_row += 1
            if info.is_main:
                what = f"loss on {int(totals['nonfinite_ranks'])} rank(s)" if bad else "gradient norm"
                print(
                    f"step {step}: non-finite {what}; step skipped on every rank ({nonfinite_in_a_row} in a row)",
                    flush=True,
                )
            if t.max_nonfinite_steps and nonfinite_in_a_row >= t.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{nonfinite_in_a_row} steps in a row (up to step {step}) had a NaN/Inf loss or gradient norm "
                    "and were skipped "
                    f"(trainer.max_nonfinite_steps={t.max_nonfinite_steps}); the weights are those of the last good "
                    f"step. Lower optimizer.lr, raise optimizer.warmup_steps or check the data, then resume from "
                    f"{ckpt_root}"
                )
        else:
            nonfinite_in_a_row = 0
        metrics = {
            **task.summarize(totals),
            "lr": engine.lr(),
            "grad_norm": engine.grad_norm(),
            "loss_scale": engine.loss_scale(),
            "skipped_steps": skipped_steps,
            "tokens_per_s": tokens_per_step / dt,
            "tflops_per_s_per_device": flops_per_step / dt / info.world_size / 1e12,
            **({"mfu": flops_per_step / dt / info.world_size / peak} if peak else {}),
            "samples_per_s": t.global_batch_size / dt,
            "step_time_s": dt,
            "data_wait_s": data_wait,
            "compute_s": dt - data_wait,
            "memory_gib": memory_gib(),
            "consumed_samples": consumed,
            "consumed_tokens": consumed * manifest.seq_len,
            "skipped_samples": skips.skipped,
        }
        for cb in callbacks:
            cb.on_step(step, metrics)
        if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
            result.eval = evaluate(step)
        if totals["stop_requested"] > 0:
            if info.is_main:
                print(
                    f"stop requested by a signal at step {step}: saving a checkpoint, then exit {EXIT_REQUEUE}",
                    flush=True,
                )
            result.preempted = True
            break
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < stop_at:
            save(step)
    result.step = step
    if step >= t.max_steps and not result.preempted:
        result.eval = evaluate(step)
    else:
        result.stopped_early = True
    if step != start_step:  # the same decision on every rank (saving is collective)
        save(step)
    marker = os.environ.get(PREEMPTED_MARKER_ENV)
    if result.preempted and marker and info.is_main:
        # For the SLURM script: the checkpoint is committed, requeue even if srun reports another rank's exit code.
        Path(marker).write_text(f"{step}\n")
    _kill_workers(batches)  # readers are done; nothing must hold the exit up
    atexit.unregister(_kill_workers)
    for cb in callbacks:
        cb.close()
    if info.is_main:
        (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result
