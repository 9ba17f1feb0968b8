"""Training-step throughput and MFU of the configs in configs/, through cloze's DeepSpeed engine, side by side with
a bare torch loop over the same model in the same run (ratio = cloze / torch).

    python benchmarks/train_step.py                      # every config in configs/, on whatever device runs it
    python benchmarks/train_step.py --quick              # the tiny-* configs only (a minute on 2 CPU cores)
    python benchmarks/train_step.py --configs configs/bert-base.yaml configs/t5-base.yaml --zero 1 3 \
        --precision bf16                                 # the GPU figures in docs/benchmarks.md

One process, world size 1: the engine's own cost (ZeRO bookkeeping, gradient clipping, the loop's loss and metric
statistics) against `loss.backward(); opt.step()` with torch's fused AdamW (bf16 autocast when --precision bf16).
Batches are synthetic: random token ids, 15% MLM labels; T5 targets are 20% of the input length (as 114/568 in T5),
BART's equal its input. FLOPs come from modeling/flops.py; MFU divides by the GPU's peak from its table, or by
--peak-tflops (no MFU on CPU unless given).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

from modeling import build_model  # noqa: E402
from modeling.flops import param_count, peak_flops_for, train_flops_per_token  # noqa: E402
from trainer import distributed as D  # noqa: E402
from trainer.config import RunConfig, load_config  # noqa: E402
from trainer.engine import Engine, init_distributed  # noqa: E402
from trainer.losses import task_for  # noqa: E402

VOCAB = 32000


def target_len(cfg: RunConfig, T: int) -> int:
    """Decoder length for an input of T: 20% of it for T5 (as 114/568), all of it for BART, none for encoders."""
    if not cfg.model.is_seq2seq:
        return 0
    return max(2, T // 5) if cfg.model.family == "t5" else T


def synthetic_batch(cfg: RunConfig, B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    V = cfg.model.vocab_size
    ids = torch.randint(107, V, (B, T), generator=g)
    if not cfg.model.is_seq2seq:
        labels = torch.where(torch.rand(B, T, generator=g) < 0.15, ids, torch.full_like(ids, -100))
        batch = {"input_ids": ids, "labels": labels}
    else:
        labels = torch.randint(107, V, (B, target_len(cfg, T)), generator=g)
        dec = torch.zeros_like(labels)
        dec[:, 1:] = labels[:, :-1]
        batch = {"input_ids": ids, "labels": labels, "decoder_input_ids": dec}
    return {k: v.to(device) for k, v in batch.items()}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return (time.perf_counter() - t0) / steps


def time_cloze(cfg: RunConfig, B: int, T: int, args: argparse.Namespace) -> tuple[float, torch.device]:
    """Seconds per step through cloze's Engine (DeepSpeed), and the device it ran on."""
    task = task_for(cfg.model.family)
    torch.manual_seed(0)
    engine = Engine(build_model(cfg.model), cfg, grad_accum=1)
    batch = synthetic_batch(cfg, B, T, engine.device)

    def step() -> None:
        r = task(engine.forward, batch)
        engine.backward(r.loss)
        engine.step()

    return time_steps(step, args.steps, args.warmup), engine.device


def time_torch(cfg: RunConfig, B: int, T: int, device: torch.device, args: argparse.Namespace) -> float:
    """Seconds per step of a bare torch loop: same model, fused AdamW, clipping, bf16 autocast for bf16."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    task = task_for(cfg.model.family)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = synthetic_batch(cfg, B, T, device)
    bf16 = cfg.deepspeed.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            r = task(model, batch)
        r.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, args.steps, args.warmup)


def bench(path: str, zero: int, args: argparse.Namespace) -> dict[str, object]:
    overrides = [f"deepspeed.zero_stage={zero}", "trainer.grad_accum=0", "optimizer.name=adamw"]
    if args.precision:
        overrides.append(f"deepspeed.precision={args.precision}")
    cfg = load_config(path, overrides)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and cfg.deepspeed.precision == "fp16":
        cfg.deepspeed.precision = "fp32"
    B = args.micro_batch or (cfg.trainer.micro_batch_size if on_gpu else min(cfg.trainer.micro_batch_size, 4))
    T = args.seq_len
    cfg.trainer.micro_batch_size = cfg.trainer.global_batch_size = B
    cfg.trainer.max_steps = 10**6
    cfg.model.vocab_size = cfg.model.vocab_size or VOCAB
    cfg.model.max_position_embeddings = max(cfg.model.max_position_embeddings, T)
    tokens = B * T
    flops = tokens * train_flops_per_token(cfg.model, T, target_len(cfg, T), 0.15)

    t_ours, device = time_cloze(cfg, B, T, args)
    t_peer = time_torch(cfg, B, T, device, args)
    peak = args.peak_tflops * 1e12 or (peak_flops_for(torch.cuda.get_device_name()) if on_gpu else None)
    return {
        "config": Path(path).stem,
        "precision": cfg.deepspeed.precision,
        "zero": zero,
        "batch": f"{B}x{T}",
        "params_M": param_count(cfg.model) / 1e6,
        "cloze_tok_s": tokens / t_ours,
        "torch_tok_s": tokens / t_peer,
        "ratio": t_peer / t_ours,
        "tflops": flops / t_ours / 1e12,
        "mfu": flops / t_ours / peak if peak else None,
    }


# ---- The engine's own cost (issue 18): alternating rounds, the step split into parts, a profile of each part ----
#
#   python benchmarks/train_step.py --engine-cost     # tiny-bert and bert-base at 4 layers, fp32, ZeRO 1 / 2 / 3
#
# In one process the engine, a bare torch loop and cloze's own loop step (Trainer.train_step on in-memory batches:
# the loss normalisers' and metrics' all-reduces, NaN/Inf checks, metric dict, TensorBoard, no data loading) run
# in alternating rounds, so that whatever else runs on the machine slows all three alike. Then one pass with every
# part timed on its own (Probe) and one under torch.profiler, whose ops are attributed to the innermost part.

ENGINE_COST_RUNS = (
    ("tiny-bert", "configs/tiny-bert.yaml", ()),
    ("bert-base-4L", "configs/bert-base.yaml", ("model.num_layers=4",)),
)
"""(name, config, overrides) of --engine-cost: the tiny test model and a mid-size one (BERT-base width, 4 layers)."""

MASK_ID = 4
"""The [MASK] id of the synthetic batches (any id below the 107 that synthetic_batch starts at)."""


class Probe:
    """Exclusive wall time of labelled parts of a step: callables wrapped in place (`patch`) or blocks (`region`);
    a nested part's time is subtracted from the part it runs in. Each part is also a torch.profiler range named by
    its label, so that the profiler's ops can be attributed to it."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.stack: list[float] = []
        self.enabled = False
        self.undo: list[tuple[object, str, object, bool]] = []

    @contextlib.contextmanager
    def region(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        _sync()
        t0 = time.perf_counter()
        self.stack.append(0.0)
        try:
            with torch.profiler.record_function(label):
                yield
        finally:
            _sync()
            dt = time.perf_counter() - t0
            inner = self.stack.pop()
            self.times[label] = self.times.get(label, 0.0) + dt - inner
            if self.stack:
                self.stack[-1] += dt

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.region(label):
                return fn(*args, **kwargs)

        return timed

    def patch(self, obj: object, name: str, label: str) -> None:
        """Time `obj.name` (a method, looked up on the instance: calls through `self.name` are timed too)."""
        fn = getattr(obj, name, None)
        if fn is None:
            return
        own = name in vars(obj) if hasattr(obj, "__dict__") else False
        self.undo.append((obj, name, fn, own))
        setattr(obj, name, self.wrap(label, fn))

    def restore(self) -> None:
        for obj, name, fn, own in reversed(self.undo):
            if own or isinstance(obj, (types.ModuleType, type)):
                setattr(obj, name, fn)
            else:
                delattr(obj, name)
        self.undo.clear()

    def take(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return out


# What each labelled part is: (owner, what). Owners: model (the same work on both sides), optimizer (both sides:
# AdamW, the gradient norm and clipping), DeepSpeed (only the engine), cloze (ours: trainer/engine.py, loop.py).
PARTS: dict[str, tuple[str, str]] = {
    "forward": ("model", "model forward"),
    "loss": ("model", "loss and its statistics (Task)"),
    "autograd": ("model", "autograd backward"),
    "norm": ("optimizer", "gradient norm"),
    "clip": ("optimizer", "gradient clipping"),
    "adamw": ("optimizer", "AdamW step"),
    "zero_grad": ("optimizer", "zero_grad"),
    "ds.forward": ("DeepSpeed", "engine forward wrapper"),
    "ds.backward": ("DeepSpeed", "engine backward wrapper (loss scaling, hooks' bookkeeping)"),
    "ds.grad_hooks": ("DeepSpeed", "gradient hooks: copies into reduction buckets"),
    "ds.reduce": ("DeepSpeed", "gradient reduction into the flat partition (world size 1: copies)"),
    "ds.flatten": ("DeepSpeed", "flat fp32 gradient partition for the optimizer"),
    "ds.zero_step": ("DeepSpeed", "ZeRO step: fp32 partition -> model weights copy, bookkeeping"),
    "ds.allgather": ("DeepSpeed", "all-gather of updated partitions, re-pointing weights"),
    "ds.stage3_fetch": ("DeepSpeed", "ZeRO-3 parameter fetch / release around each module"),
    "ds.engine_step": ("DeepSpeed", "engine step bookkeeping, lr schedule"),
    "cloze.engine": ("cloze", "trainer/engine.py wrappers (Engine.forward/backward/step)"),
    "cloze.stats": ("cloze", "per-kind MLM statistics ([MASK] / random / kept positions)"),
    "cloze.normalizers": ("cloze", "loss normalisers: target counts + all-reduce"),
    "cloze.metrics_allreduce": ("cloze", "step metrics all-reduce"),
    "cloze.callbacks": ("cloze", "TensorBoard scalars"),
    "cloze.loop": ("cloze", "Trainer.train_step's own work (seeds, NaN/Inf checks, metric dict)"),
}

DS_METHODS: dict[str, tuple[str, ...]] = {
    "ds.grad_hooks": (
        "reduce_ready_partitions_and_remove_grads",
        "reduce_independent_p_g_buckets_and_remove_grads",
    ),
    "ds.reduce": (
        "reduce_gradients",
        "reduce_ipg_grads",
        "average_tensor",
        "allreduce_bucket",
        "allreduce_and_copy",
        "allreduce_no_retain",
        "buffered_reduce_fallback",
        "copy_grads_in_partition",
        "overlapping_partition_gradients_reduce_epilogue",
        "independent_gradient_partition_epilogue",
        "partition_grads",
        "_DeepSpeedZeroOptimizer_Stage3__reduce_and_partition_ipg_grads",
        "_DeepSpeedZeroOptimizer_Stage3__add_grad_to_ipg_bucket",
    ),
    "norm": (
        "scaled_global_norm",
        "get_grad_norm_direct",
        "check_overflow",
        "has_overflow",
        "_get_norm_groups",
    ),
    "clip": ("unscale_and_clip_grads",),
    "ds.flatten": (
        "_get_preflattened_grad_partition",
        "flatten_dense_tensors_aligned",
        "free_grad_in_param_list",
    ),
    "ds.zero_step": ("step",),
    "adamw": ("_optimizer_step",),
    "ds.allgather": ("_update_model_bit16_weights", "_post_step"),
    "zero_grad": ("zero_grad",),
}
"""Methods of DeepSpeed's ZeRO optimizer (stage 1/2 and 3 names; absent ones are skipped), by part."""


def _probe_engine(probe: Probe, engine: Engine) -> None:
    """Label DeepSpeed's and cloze's parts of an engine step (instance attributes only: undone by probe.restore)."""
    import deepspeed.runtime.zero.stage_1_and_2 as z12

    ds, opt = engine.engine, engine.optimizer
    for label, names in DS_METHODS.items():
        for name in names:
            probe.patch(opt, name, label)
    probe.patch(z12, "all_gather_dp_groups", "ds.allgather")
    probe.patch(ds, "forward", "ds.forward")
    probe.patch(ds, "backward", "ds.backward")
    probe.patch(ds, "step", "ds.engine_step")
    probe.patch(ds.module, "forward", "forward")
    coordinator = getattr(opt, "parameter_offload", None)
    if coordinator is not None:  # ZeRO-3: parameters gathered before and released after each module
        for name in (
            "pre_sub_module_forward_function",
            "post_sub_module_forward_function",
            "pre_sub_module_backward_function",
            "post_sub_module_backward_function",
        ):
            probe.patch(coordinator, name, "ds.stage3_fetch")
    for name in ("forward", "backward", "step"):
        probe.patch(engine, name, "cloze.engine")


def _probe_torch(probe: Probe) -> None:
    probe.patch(torch.autograd, "backward", "autograd")


def masked_batch(cfg: RunConfig, B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    """synthetic_batch with BERT's 80/10/10 corruption of the labelled inputs ([MASK] = MASK_ID), so that the
    loop's per-kind statistics see every kind of position."""
    batch = synthetic_batch(cfg, B, T, device)
    if cfg.model.is_seq2seq:
        return batch
    g = torch.Generator().manual_seed(1)
    ids, labels = batch["input_ids"].clone(), batch["labels"]
    draw = torch.rand(ids.shape, generator=g).to(ids.device)
    labelled = labels != -100
    ids[labelled & (draw < 0.8)] = MASK_ID
    rand = labelled & (draw >= 0.8) & (draw < 0.9)
    ids[rand] = torch.randint(107, cfg.model.vocab_size, (int(rand.sum()),), generator=g).to(ids.device)
    return {**batch, "input_ids": ids}


def loop_step(cfg: RunConfig, engine: Engine, batch: dict[str, torch.Tensor], T: int, logdir: Path) -> Any:
    """Trainer.train_step itself, on in-memory copies of `batch` (no loader, so no data wait), with TensorBoard
    scalars into `logdir`: what the real loop adds around the engine's step."""
    from data_pipeline.loader import SkipBudget
    from trainer.callbacks import TensorBoardCallback
    from trainer.checkpointer import Progress
    from trainer.components import NonFinitePolicy, Preemption, Throughput
    from trainer.loop import Trainer

    tr = Trainer.__new__(Trainer)
    tr.cfg, tr.engine = cfg, engine
    tr.info = D.discover()
    tr.state = types.SimpleNamespace(mixture=None, grad_accum=1, seq_len=T)  # type: ignore[assignment]
    tr.progress = Progress(SkipBudget(0))
    tr.task = task_for(cfg.model)
    tr.task.mask_id = MASK_ID
    tr.watchdog = types.SimpleNamespace(beat=lambda where: None)  # type: ignore[assignment]
    tr.on_step_begin, tr.on_loss = [], []
    tr.preemption = Preemption()
    tr.nonfinite = NonFinitePolicy(cfg, True, logdir)
    manifest = types.SimpleNamespace(seq_len=T, objective_params={"rate": 0.15})
    tr.throughput = Throughput(cfg, manifest, 1)  # type: ignore[arg-type]
    tr.callbacks = [TensorBoardCallback(logdir)]
    tr.mixture_order = None

    def batches() -> Iterator[dict[str, Any]]:
        while True:
            yield {**batch, "skipped_samples": 0, "skip_error": ""}

    tr.batches = batches()  # type: ignore[assignment]
    return tr


class _TimedTask:
    """A Task whose calls are the "loss" part (as the engine and torch sides' task calls are)."""

    def __init__(self, task: Any, probe: Probe) -> None:
        self.task, self.probe = task, probe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.probe.region("loss"):
            return self.task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def _probe_loop(probe: Probe, tr: Any) -> None:
    import trainer.loop as L
    import trainer.losses as losses

    tr.task = _TimedTask(tr.task, probe)
    probe.undo.append((tr, "task", tr.task.task, True))
    probe.patch(losses, "position_kind_sums", "cloze.stats")
    probe.patch(L, "loss_normalizers", "cloze.normalizers")
    probe.patch(L, "all_reduce_dict", "cloze.metrics_allreduce")
    for cb in tr.callbacks:
        probe.patch(cb, "on_step", "cloze.callbacks")


def _attribute(prof: Any, labels: set[str], steps: int) -> dict[str, list[tuple[str, str, float]]]:
    """Self CPU time (ms per step) of every op under each labelled range: label -> [(op, input shapes, ms)]."""
    acc: dict[tuple[str, str, str], float] = {}
    for e in prof.events():
        if e.name in labels or e.name.startswith("ProfilerStep"):
            continue
        part, parent = "other", e.cpu_parent
        while parent is not None:
            if parent.name in labels:
                part = parent.name
                break
            parent = parent.cpu_parent
        shapes = str(e.input_shapes)[:60] if e.input_shapes else ""
        key = (part, e.name, shapes)
        acc[key] = acc.get(key, 0.0) + e.self_cpu_time_total / 1e3 / steps
    out: dict[str, list[tuple[str, str, float]]] = {}
    for (part, name, shapes), ms in acc.items():
        out.setdefault(part, []).append((name, shapes, ms))
    for ops in out.values():
        ops.sort(key=lambda r: -r[2])
    return out


def engine_cost(
    name: str, path: str, overrides: tuple[str, ...], zero: int, args: argparse.Namespace
) -> None:
    """One (config, ZeRO stage) of --engine-cost: alternating rounds, the split, the profile; printed."""
    cfg = load_config(
        path,
        [
            f"deepspeed.zero_stage={zero}",
            "trainer.grad_accum=0",
            "optimizer.name=adamw",
            "deepspeed.precision=fp32",
            *overrides,
        ],
    )
    B = args.micro_batch or (cfg.trainer.micro_batch_size if torch.cuda.is_available() else 4)
    T = args.seq_len
    cfg.trainer.micro_batch_size = cfg.trainer.global_batch_size = B
    cfg.trainer.max_steps = 10**6
    cfg.model.vocab_size = cfg.model.vocab_size or VOCAB
    cfg.model.max_position_embeddings = max(cfg.model.max_position_embeddings, T)
    task = task_for(cfg.model.family)
    torch.manual_seed(0)
    engine = Engine(build_model(cfg.model), cfg, grad_accum=1)
    device = engine.device
    batch = masked_batch(cfg, B, T, device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tmp = Path(tempfile.mkdtemp(prefix="cloze-engine-cost-"))
    tr = loop_step(cfg, engine, batch, T, tmp)
    probe = Probe()

    def engine_step() -> None:
        with probe.region("loss"):
            r = task(engine.forward, batch)
        engine.backward(r.loss)
        engine.step()

    def bare_step() -> None:
        with probe.region("loss"):
            r = task(model, batch)
        r.loss.backward()
        with probe.region("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        with probe.region("adamw"):
            opt.step()
        with probe.region("zero_grad"):
            opt.zero_grad(set_to_none=True)

    def loop() -> None:
        with probe.region("cloze.loop"):
            tr.train_step()

    sides = {"engine": engine_step, "torch": bare_step, "loop": loop}
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for k in order:
            times[k].append(time_steps(sides[k], args.steps, 0))
    ratios = sorted(t / e for t, e in zip(times["torch"], times["engine"]))
    loop_ratios = sorted(t / e for t, e in zip(times["torch"], times["loop"]))
    med = statistics.median
    print(f"\n### {name}, fp32, ZeRO-{zero}, batch {B}x{T}, {param_count(cfg.model) / 1e6:.1f} M parameters")
    print(
        f"ms per step, median of {args.rounds} alternating rounds of {args.steps} steps: "
        f"torch {med(times['torch']) * 1e3:.1f}, engine {med(times['engine']) * 1e3:.1f}, "
        f"loop {med(times['loop']) * 1e3:.1f}; engine / torch (tokens/s) {med(ratios):.3f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}), loop / torch {med(loop_ratios):.3f}",
        flush=True,
    )

    # The split: every part timed on its own, over the same number of steps per side.
    _probe_engine(probe, engine)
    _probe_loop(probe, tr)
    model.forward = probe.wrap("forward", model.forward)
    _probe_torch(probe)
    probe.enabled = True
    split: dict[str, dict[str, float]] = {}
    try:
        for k, step in sides.items():
            probe.take()
            for _ in range(args.steps):
                step()
            split[k] = {p: v / args.steps * 1e3 for p, v in probe.take().items()}
        print("\n| part | owner | torch ms | engine ms | loop ms |\n|---|---|---:|---:|---:|")
        for part, (owner, what) in PARTS.items():
            row = [split[k].get(part, 0.0) for k in sides]
            if any(v >= 0.05 for v in row):
                print(f"| {what} | {owner} | {row[1]:.1f} | {row[0]:.1f} | {row[2]:.1f} |")
        for owner in ("model", "optimizer", "DeepSpeed", "cloze"):
            tot = [sum(v for p, v in split[k].items() if PARTS.get(p, ("?",))[0] == owner) for k in sides]
            print(f"| **{owner}, total** | | {tot[1]:.1f} | {tot[0]:.1f} | {tot[2]:.1f} |")
        print(
            f"| **step** | | {sum(split['torch'].values()):.1f} | {sum(split['engine'].values()):.1f} | "
            f"{sum(split['loop'].values()):.1f} |",
            flush=True,
        )

        if args.profile_steps:
            labels = set(PARTS)
            for k in ("engine", "loop"):
                with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
                ) as prof:
                    for _ in range(args.profile_steps):
                        sides[k]()
                parts = _attribute(prof, labels, args.profile_steps)
                print(f"\nprofile of the {k} step, top ops by self CPU ms per step, by part:")
                for part, ops in sorted(parts.items(), key=lambda kv: -sum(o[2] for o in kv[1])):
                    total = sum(o[2] for o in ops)
                    if total < 0.2:
                        continue
                    owner = PARTS.get(part, ("?", part))[0]
                    top = "; ".join(f"{op} {shapes} {ms:.1f}" for op, shapes, ms in ops[:3])
                    print(f"  {part} ({owner}) {total:.1f} ms: {top}")
    finally:
        probe.enabled = False
        probe.restore()
        for cb in tr.callbacks:
            cb.close()
        shutil.rmtree(tmp, ignore_errors=True)


def engine_cost_main(args: argparse.Namespace) -> None:
    runs = [r for r in ENGINE_COST_RUNS if not args.configs or r[0] in args.configs or r[1] in args.configs]
    for name, path, overrides in runs:
        for zero in args.zero or [1, 2, 3]:
            engine_cost(name, path, overrides, zero, args)
            gc.collect()


def compile_cost(args: argparse.Namespace) -> None:
    """--compile-cost: tiny-bert (ZeRO-2, fp32, no dropout) through the engine, eager against trainer.compile
    (inductor): the first step (compilation), then alternating rounds, and the two runs' losses step by step."""
    engines: dict[bool, Engine] = {}
    for compiled in (False, True):
        cfg = load_config(
            "configs/tiny-bert.yaml",
            [
                "deepspeed.zero_stage=2",
                "deepspeed.precision=fp32",
                "trainer.grad_accum=0",
                f"trainer.compile={str(compiled).lower()}",
                "model.hidden_dropout=0.0",
                "model.attention_dropout=0.0",
            ],
        )
        cfg.trainer.micro_batch_size = cfg.trainer.global_batch_size = args.micro_batch or 4
        cfg.trainer.max_steps = 10**6
        cfg.model.vocab_size = cfg.model.vocab_size or VOCAB
        cfg.model.max_position_embeddings = max(cfg.model.max_position_embeddings, args.seq_len)
        torch.manual_seed(0)
        engines[compiled] = Engine(build_model(cfg.model), cfg, grad_accum=1)
    batch = masked_batch(cfg, cfg.trainer.micro_batch_size, args.seq_len, engines[False].device)
    task = task_for(cfg.model.family)
    losses: dict[bool, list[float]] = {False: [], True: []}

    def step(compiled: bool) -> None:
        engine = engines[compiled]
        r = task(engine.forward, batch)
        engine.backward(r.loss)
        engine.step()
        losses[compiled].append(float(r.loss))

    for compiled in (False, True):
        t0 = time.perf_counter()
        step(compiled)
        print(
            f"{'compiled' if compiled else 'eager'}: first step {time.perf_counter() - t0:.2f} s", flush=True
        )
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for compiled in (False, True) if r % 2 == 0 else (True, False):
            times[compiled].append(time_steps(lambda c=compiled: step(c), args.steps, 0))
    ratios = [e / c for e, c in zip(times[False], times[True])]
    rel = max(abs(a - b) / abs(a) for a, b in zip(losses[False], losses[True]))
    print(
        f"ms per step, median of {args.rounds} alternating rounds of {args.steps}: eager "
        f"{statistics.median(times[False]) * 1e3:.1f}, compiled {statistics.median(times[True]) * 1e3:.1f}; "
        f"compiled / eager (tokens/s) {statistics.median(ratios):.3f} (rounds "
        f"{', '.join(f'{x:.2f}' for x in sorted(ratios))}); losses of {len(losses[True])} steps: largest relative "
        f"difference {rel:.1e}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", help="config files (default: every configs/*.yaml)")
    p.add_argument("--quick", action="store_true", help="only the tiny-* configs")
    p.add_argument("--zero", nargs="*", type=int, help="ZeRO stages to run (default: each config's own)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="override the configs' precision")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=0, help="default: the config's (at most 4 on CPU)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 20 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5 on GPU, 1 on CPU)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak TFLOP/s of one device, for MFU")
    p.add_argument(
        "--engine-cost",
        action="store_true",
        help="the engine's own cost: tiny-bert and bert-base at 4 layers, fp32, ZeRO 1/2/3 (--zero to choose; "
        "--configs picks by name), alternating rounds, the step split into parts, a profile",
    )
    p.add_argument(
        "--compile-cost",
        action="store_true",
        help="tiny-bert ZeRO-2 through the engine, eager against trainer.compile: compile time, step time, losses",
    )
    p.add_argument("--rounds", type=int, default=5, help="--engine-cost, --compile-cost: alternating rounds")
    p.add_argument(
        "--profile-steps", type=int, default=2, help="--engine-cost: steps under torch.profiler (0: none)"
    )
    args = p.parse_args()
    on_gpu = torch.cuda.is_available()
    args.steps = args.steps or (20 if on_gpu else 3)
    args.warmup = args.warmup or (5 if on_gpu else 1)
    paths = args.configs or sorted(str(f) for f in (ROOT / "configs").glob("*.yaml"))
    if args.quick:
        paths = [f for f in paths if Path(f).name.startswith("tiny-")]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    init_distributed(D.discover(), "", 30)
    if args.compile_cost:
        compile_cost(args)
        return
    if args.engine_cost:
        print(
            f"torch {torch.__version__}; {torch.get_num_threads()} threads; {args.steps} steps a round after "
            f"{args.warmup} warm-up"
        )
        engine_cost_main(args)
        return
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up"
    )
    cols = [
        "config",
        "precision",
        "zero",
        "batch",
        "params_M",
        "cloze_tok_s",
        "torch_tok_s",
        "ratio",
        "tflops",
        "mfu",
    ]
    print(" | ".join(f"{c:>12}" for c in cols))
    for path in paths:
        base = load_config(path)
        for zero in args.zero or [base.deepspeed.zero_stage]:
            row = bench(path, zero, args)
            cells = []
            for c in cols:
                v = row[c]
                if v is None:
                    cells.append(f"{'-':>12}")
                elif isinstance(v, float):
                    cells.append(f"{v:>12.3f}" if c in ("ratio", "mfu", "tflops") else f"{v:>12,.1f}")
                else:
                    cells.append(f"{v!s:>12}")
            print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
