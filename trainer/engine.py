"""The only file that imports DeepSpeed: the DS JSON is generated from the typed RunConfig, and the engine is
wrapped (never patched) behind forward / backward / step / save / load."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
from torch import nn

from modeling import distilbert

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig
from .distributed import DistInfo
from .optim import Schedule, build_optimizer, build_scheduler, param_groups


def deepspeed_config(cfg: RunConfig, grad_accum: int, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON for `cfg` (saved as <run_dir>/ds_config.json)."""
    t, ds = cfg.trainer, cfg.deepspeed
    conf: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        # Plain data parallel in fp32 is the one case where DeepSpeed neither keeps the gradient norm nor skips a
        # step whose norm is NaN/Inf: Engine.step clips there itself, from the norm it computes once.
        "gradient_clipping": 0.0 if _own_grad_norm(cfg) else cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL", "load_universal": load_universal},
    }
    if ds.zero_stage == 3:
        conf["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": False})
    if ds.offload_optimizer:
        # Our torch optimizer runs on the CPU copies (DeepSpeed's CPUAdam would JIT-compile a C++ op first).
        conf["zero_optimization"]["offload_optimizer"] = {
            "device": "cpu",
            "pin_memory": torch.cuda.is_available(),
        }
        conf["zero_force_ds_cpu_optimizer"] = False
    if ds.precision == "bf16":
        conf["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        conf["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
        }
    return _merge(conf, ds.extra)


def _own_grad_norm(cfg: RunConfig) -> bool:
    return cfg.deepspeed.zero_stage == 0 and cfg.deepspeed.precision == "fp32"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A JIT build of a DeepSpeed op takes seconds to a few minutes; a lock older than this was left by a killed build.
STALE_BUILD_LOCK_S = 600.0


def prepare_op_builds(ops: tuple[str, ...] = ("deepspeed_shm_comm",)) -> None:
    """Where DeepSpeed JIT-compiles its C++ ops (torch.utils.cpp_extension), checked before anything waits on it.

    DeepSpeed's CPU backend compiles its shared-memory collectives (`deepspeed_shm_comm`) on first use, under a
    lock file that torch waits on with no time limit: a process killed mid-build leaves the lock, and every later
    start on that machine hangs in `FileBaton.wait`. So: unless TORCH_EXTENSIONS_DIR is set, ops are built into the
    environment's own `<sys.prefix>/torch_extensions` (each venv against its own torch, never a build half-made by
    another checkout), and a lock older than STALE_BUILD_LOCK_S is an error naming the file to delete."""
    from torch.utils.cpp_extension import _get_build_directory

    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")
    for name in ops:
        lock = Path(_get_build_directory(name, verbose=False)) / "lock"
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            continue
        if age > STALE_BUILD_LOCK_S:
            raise ConfigError(
                f"{lock} is a build lock {age / 60:.0f} minutes old, left by a process killed while it compiled "
                f"DeepSpeed's {name} op; every start would wait on it forever. If no other process on this machine "
                f"is compiling it, delete it (rm {lock}) and run again."
            )


def build_ops() -> str:
    """Compile now the DeepSpeed op a CPU run JIT-compiles on its first start (the shared-memory collectives,
    `deepspeed_shm_comm`, about a minute on 2 cores), into the environment (prepare_op_builds), so that no training
    run waits on it: `make setup` calls this. Returns what was done, in words."""
    prepare_op_builds()
    from deepspeed.comm.torch import build_shm_op

    return "DeepSpeed's shared-memory op is built" if build_shm_op() is not None else "no op to build here"


def init_distributed(info: DistInfo, backend: str, timeout_minutes: float) -> None:
    info.export()
    prepare_op_builds()
    if not backend:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        timeout=datetime.timedelta(seconds=timeout_minutes * 60),
        rank=info.rank,
        world_size=info.world_size,
    )


def _optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "lamb" and torch.cuda.is_available() and not cfg.deepspeed.offload_optimizer:
        from deepspeed.ops.lamb import FusedLamb

        return FusedLamb(
            param_groups(model, o.weight_decay),
            lr=o.lr,
            betas=(o.betas[0], o.betas[1]),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
    return build_optimizer(model, o)


class _Gate:
    """Between DeepSpeed and the torch optimizer: makes the optimizer's step() a no-op and holds the schedule while
    closed (how a step is skipped on every rank at once: DeepSpeed still runs its own bookkeeping and zeroes the
    gradients, whatever the ZeRO stage); with a `phase`, steps only the parameter groups of that phase (ZeRO keeps
    one flat partition per group, and its own _optimizer_step narrows param_groups the same way)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Schedule) -> None:
        self.scheduler = scheduler
        self.apply, self.phase = True, ""
        step = optimizer.step

        @functools.wraps(step)  # keeps the marks torch's scheduler put on the method it wrapped
        def gated(*args: Any, **kwargs: Any) -> Any:
            if not self.apply:
                return None
            if not self.phase:
                return step(*args, **kwargs)
            groups = optimizer.param_groups
            optimizer.param_groups = [g for g in groups if g.get("phase") == self.phase]
            try:
                return step(*args, **kwargs)
            finally:
                optimizer.param_groups = groups

        optimizer.step = gated  # type: ignore[method-assign]

    def set(self, apply: bool, phase: str = "", advance: bool = True) -> None:
        """`advance`: whether this step moves the lr schedule (a phased step: only its last phase does)."""
        self.apply, self.phase = apply, phase
        self.scheduler.hold = not (apply and advance)


def check_precision(precision: str) -> None:
    """A precision this device cannot run is a config error naming the key, not DeepSpeed's traceback. fp16 on a CPU
    needs oneDNN fp16 support (DeepSpeed's CPU accelerator asks torch.ops.mkldnn), which many CPUs lack."""
    acc = deepspeed.get_accelerator()
    supported = {"fp16": acc.is_fp16_supported, "bf16": acc.is_bf16_supported}.get(precision)
    if supported is not None and not supported():
        raise ConfigError(
            f"deepspeed.precision={precision}: this device ({acc.device_name()}) cannot run {precision} under "
            f"DeepSpeed; use deepspeed.precision=bf16 or fp32 here (fp16 is for GPUs)"
        )


COMPILE_BACKEND = "inductor"
"""torch.compile's backend for trainer.compile=true (tests pass a cheaper one to Engine)."""


def check_compile(backend: str, device: torch.device) -> None:
    """trainer.compile=true needs torch.compile on this Python and, for inductor, a C++ compiler on CPU or triton on
    a GPU: a ConfigError naming the key, at start-up, rather than an error from the first forward's compilation."""
    import torch._dynamo

    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except Exception as e:
        raise ConfigError(
            f"trainer.compile=true: torch.compile is not available here ({e}); set trainer.compile=false"
        ) from None
    if backend != "inductor":
        return
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(
                "trainer.compile=true: torch.compile's inductor backend needs triton on a GPU, which is not "
                "installed; install it (pip install triton) or set trainer.compile=false"
            )
    elif device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as e:
            raise ConfigError(
                "trainer.compile=true: torch.compile's inductor backend compiles C++ on a CPU and found no C++ "
                f"compiler ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); install one (g++; "
                "or name it in CXX) or set trainer.compile=false"
            ) from None


class Engine:
    """A DeepSpeed engine over `model` with the configured optimizer and schedule."""

    def __init__(
        self,
        model: nn.Module,
        cfg: RunConfig,
        grad_accum: int,
        load_universal: bool = False,
        schedule: tuple[int, int] | None = None,
        compile_backend: str = COMPILE_BACKEND,
    ) -> None:
        """`schedule`: (max_steps, warmup_steps) of the lr schedule when they are not the config's (a resumed run
        keeps the schedule it started with). `compile_backend`: torch.compile's backend under trainer.compile."""
        self.cfg = cfg
        self.grad_accum = grad_accum
        check_precision(cfg.deepspeed.precision)
        self.ds_config = deepspeed_config(cfg, grad_accum, load_universal)
        self.phases: tuple[str, ...] = tuple(getattr(model, "phases", ()) or ())
        """The model's optimizer phases (optim.param_groups): step(phase=) steps one phase's parameters."""
        if self.phases and cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.offload_optimizer:
            raise ConfigError(
                "model.decoupled_training=true (one optimizer step per phase) is not supported with ZeRO-3 "
                "optimizer offload (deepspeed.offload_optimizer=true): set either to false"
            )
        if cfg.trainer.compile:
            check_compile(compile_backend, torch.device(deepspeed.get_accelerator().device_name()))
        optimizer = _optimizer(model, cfg)
        steps, warmup = schedule or (cfg.trainer.max_steps, cfg.optimizer.warmup_steps)
        opt_cfg = dataclasses.replace(cfg.optimizer, warmup_steps=warmup)
        scheduler = build_scheduler(optimizer, opt_cfg, steps)
        self.gate = _Gate(optimizer, scheduler)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config
        )
        self.device = self.engine.device
        if cfg.trainer.compile:
            # DeepSpeed's compile is nn.Module.compile on the model: in place, so parameter names (state dicts,
            # checkpoints, exports) keep no `_orig_mod.` prefix.
            self.engine.compile(backend=compile_backend)
        self._own_grad_norm = _own_grad_norm(cfg)
        self._grad_norm = float("nan")

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    @property
    def loss_multiplier(self) -> float:
        """What DeepSpeed divides the gradients by: backward() scales the loss by 1/gradient_accumulation_steps,
        and the gradient reduction (stage 0 allreduce_bucket, ZeRO 1/2 average_tensor, ZeRO 3 reduce-scatter)
        divides by the data-parallel world size (deepspeed_config never changes that averaging). A loss divided by
        (global count / loss_multiplier) therefore yields the gradient of sum / global count."""
        return float(self.engine.gradient_accumulation_steps() * self.engine.dp_world_size)

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, apply: bool = True, phase: str = "") -> bool:
        """Called after every micro-batch; DeepSpeed applies the optimizer at the accumulation boundary, unless
        `apply` is False there: then the step is skipped (no parameter, optimizer-state or schedule change; the
        gradients are dropped). Every rank must pass the same `apply`. Returns whether a step was skipped: by us,
        or because the gradient norm was NaN/Inf (DeepSpeed's check, or ours at stage 0 in fp32), or an fp16 overflow.
        `phase` (one of `phases`): only that phase's parameter groups are stepped, with the gradient norm and
        clipping of that phase's gradients alone (the others have none: their gradients are zero since the last
        step); the lr schedule advances at the last phase. Each phase takes grad_accum micro-batches."""
        if phase and phase not in self.phases:
            raise ValueError(f"phase {phase!r} is not one of this model's optimizer phases {self.phases}")
        advance = not phase or phase == self.phases[-1]
        before = int(self.engine.skipped_steps)
        own_skip = False
        if self._own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            # The gradients are all-reduced by now, so every rank computes the same norm and makes the same choice.
            params = [p for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
            self._grad_norm = float(norm)
            own_skip = not torch.isfinite(norm)
            if apply and not own_skip and self.cfg.optimizer.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optimizer.grad_clip, norm)
            apply = apply and not own_skip
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.gate.set(apply, phase, advance)
        try:
            self.engine.step()
        finally:
            self.gate.set(True)
        if phase and boundary:
            self._clear_zero3_gradients()
        return not apply or int(self.engine.skipped_steps) > before

    def _clear_zero3_gradients(self) -> None:
        """ZeRO-3 keeps one gradient partition per parameter in a flat buffer and overwrites, at the first
        micro-batch of a window, only those of parameters that receive a gradient: the other phase's parameters
        would carry their last phase's gradients into this phase's norm and clipping. Every partition has been
        consumed by the step just taken (copied into the fp32 groups), so the buffer is zeroed."""
        buffer = getattr(self.optimizer, "grad_partitions_flat_buffer", None)
        if self.cfg.deepspeed.zero_stage == 3 and isinstance(buffer, torch.Tensor):
            buffer.zero_()

    def loss_scale(self) -> float:
        """The dynamic fp16 loss scale (1.0 for fp32 and bf16)."""
        if self.cfg.deepspeed.precision != "fp16":
            return 1.0
        scale: Any = getattr(self.optimizer, "loss_scale", None)
        return float(scale if scale is not None else getattr(self.optimizer, "cur_scale", 1.0))

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def grad_norm(self) -> float:
        if self._own_grad_norm:
            return self._grad_norm
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: str | Path, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)

    def load(self, directory: str | Path, tag: str) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(directory) / tag}")
        return client_state or {}

    def write_config(self, run_dir: str | Path) -> None:
        Path(run_dir, "ds_config.json").write_text(json.dumps(self.ds_config, indent=2) + "\n")


def consolidated_state_dict(ckpt_root: str | Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """The full fp32 model weights of a sharded checkpoint, on CPU (DeepSpeed's zero_to_fp32 consolidation)."""
    if zero_stage == 0:
        states = torch.load(
            Path(ckpt_root) / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)


def read_run_weights(run: Path) -> dict[str, torch.Tensor]:
    """A cloze run directory's newest checkpoint as one fp32 state dict, verified first (DistilBERT's teacher:
    modeling/distilbert.py `read_run_weights`, which modeling/ cannot fill itself: it never imports deepspeed)."""
    import yaml

    raw = yaml.safe_load((run / "config.yaml").read_text()) or {}
    root = run / "checkpoints"
    tag = ckpt.find_resume(root) if root.is_dir() else None
    if not tag:
        raise ConfigError(
            f"model.teacher={str(run)!r}: {root} holds no complete checkpoint; train the teacher first"
        )
    verify_checkpoint(root / tag, trusted=False)
    stage = int((raw.get("deepspeed") or {}).get("zero_stage", 0))
    return consolidated_state_dict(root, tag, stage)


distilbert.read_run_weights = read_run_weights


def _safe_globals() -> list[Any]:
    """The non-tensor objects DeepSpeed pickles into its checkpoints (ZeRO 0-3, fp32/bf16/fp16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_checkpoint_file(path: str | Path) -> str | None:
    """Unpickle `path` with torch's weights-only loader and an allowlist of DeepSpeed's own classes; return why it
    was refused (None = only tensors, containers and allowed classes: nothing in it can run code). A raw pickle (not
    torch's zip format) is refused unread: DeepSpeed never writes one."""
    import pickle

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        lines = str(e).split("\n")
        culprit = next(
            (line.strip() for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0]
        )
        return f"it would import {culprit[:300]}"
    except Exception as e:  # not a torch checkpoint at all: a raw pickle, truncated or garbage
        return f"it is not a readable torch checkpoint: {str(e).splitlines()[0][:200]}"
    return None


def verify_checkpoint(tag_dir: str | Path, trusted: bool, hashes: bool = True) -> dict[str, Any]:
    """The one check every command that reads a checkpoint runs before anything unpickles it (`cloze train`'s
    resume, universal ones included, `cloze export`, `cloze convert`): every file listed in checkpoint.json with its
    size (and sha256), no file it does not list, and, unless `trusted`, every pickled file unpickled weights-only
    (check_checkpoint_file), so that nothing in it can run code. `trusted` comes from the user's command line only
    (`--trusted`, or `checkpoint.trusted=true` as a `cloze train` override), never from a file in the run or
    checkpoint directory. Returns the checkpoint's metadata; CheckpointError naming the file it refused."""
    return ckpt.verify(Path(tag_dir), hashes=hashes, check_file=None if trusted else check_checkpoint_file)


def verify_checkpoint_share(
    tag_dir: str | Path, meta: dict[str, Any], trusted: bool, hashes: bool, rank: int, world_size: int
) -> str | None:
    """verify_checkpoint's per-file checks (sha256, safe unpickling) for this rank's share of the files
    (trainer.checkpoint.share), after rank 0 has checked the layout (ckpt.verify_layout): a resume on N ranks checks
    every file once, each rank reading only its share. Returns the refusal, or None."""
    names = ckpt.share(sorted(meta["files"]), rank, world_size)
    check = None if trusted else check_checkpoint_file
    try:
        ckpt.verify_contents(Path(tag_dir), meta, names, hashes, check)
    except ckpt.CheckpointError as e:
        return str(e)
    return None


def _saved_shapes(tag_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """Parameter name -> shape as DeepSpeed saved them (its `param_shapes`, else the full `module` state dict), read
    weights-only; None when there is no model-states file to read them from."""
    files = sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        return None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            states = torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # trusted, with classes outside the allowlist: DeepSpeed's own load will judge
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    groups = states.get("param_shapes")
    if groups:
        for group in groups if isinstance(groups, list) else [groups]:
            shapes.update({k: tuple(v) for k, v in group.items()})
        return shapes
    module = states.get("module") or {}
    return {k: tuple(v.shape) for k, v in module.items() if isinstance(v, torch.Tensor)}


def _config_diff(saved: dict[str, Any], cfg: RunConfig, section: str) -> list[str]:
    """`section.key: A in the checkpoint, B now` for every setting of `section` that differs."""
    now = cfg.to_dict().get(section, {})
    old = saved.get("config", {}).get(section, {})
    return [
        f"{section}.{k}: {old[k]!r} in the checkpoint, {v!r} now"
        for k, v in now.items()
        if k in old and old[k] != v
    ]


def checkpoint_mismatch(
    tag_dir: str | Path, meta: dict[str, Any], model: nn.Module, world_size: int, cfg: RunConfig
) -> str | None:
    """Why the verified checkpoint `tag_dir` cannot be loaded into `model` on `world_size` ranks, in words (the
    mismatching parameter and both shapes; the saved and current rank layout with the way out, `cloze convert
    --to-universal`); None when it fits. Runs before DeepSpeed's load, whose own errors are tracebacks."""
    tag_dir = Path(tag_dir)
    saved_state = meta.get("client_state", {})
    shapes = _saved_shapes(tag_dir)
    if shapes is not None:
        # Trained parameters only: DeepSpeed's param_shapes lists the optimizer's, and a frozen module (DistilBERT's
        # teacher, modeling/distilbert.py) is rebuilt from its own source by every run.
        ours = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        changed = [k for k in ours if k in shapes and shapes[k] != ours[k]]
        missing = [k for k in ours if k not in shapes]
        buffers = set(model.state_dict())  # a full `module` state dict also holds buffers and tied copies
        extra = [k for k in shapes if k not in ours and k not in buffers]
        if changed or missing or extra:
            if changed:
                k = changed[0]
                what = f"parameter {k} has shape {shapes[k]} in the checkpoint but {ours[k]} in this model"
                if len(changed) > 1:
                    what += f" ({len(changed) - 1} more differ)"
            elif missing:
                what = f"the checkpoint has no parameter {missing[0]} ({len(missing)} missing in all)"
            else:
                what = f"the checkpoint has {extra[0]}, a parameter this model lacks ({len(extra)} in all)"
            diff = _config_diff(saved_state, cfg, "model")
            hint = f"; settings that differ: {', '.join(diff[:4])}" if diff else ""
            return (
                f"checkpoint {tag_dir} does not fit this model: {what}{hint}. Resume with the model settings it was "
                "trained with, or train the new model in another run_dir"
            )
    if ckpt.is_universal(tag_dir.name):
        return None  # DeepSpeed's universal format loads on any number of ranks
    stage, precision = cfg.deepspeed.zero_stage, cfg.deepspeed.precision
    wanted = ckpt.expected_rank_files(world_size, stage, precision)
    have = list(meta.get("expected", wanted))
    if sorted(have) == sorted(wanted):
        return None
    ranks = {int(m.group(1)) for f in have if (m := re.match(r".*zero_pp_rank_(\d+)_", f))}
    old_ds = saved_state.get("config", {}).get("deepspeed", {})
    saved = f"{max(ranks) + 1 if ranks else 1} rank(s)"
    if old_ds:
        saved += f", ZeRO stage {old_ds.get('zero_stage')}, {old_ds.get('precision')}"
    run_dir = tag_dir.parent.parent
    return (
        f"checkpoint {tag_dir} was saved by {saved}; this run has {world_size} rank(s), ZeRO stage {stage}, "
        f"{precision}, and needs {', '.join(wanted[:3])}{' ...' if len(wanted) > 3 else ''}. Convert it first: "
        f"`cloze convert {run_dir} --to-universal` (a universal checkpoint loads on any number of ranks), then "
        "rerun this command"
    )


def to_universal(tag_dir: str | Path, out_dir: str | Path) -> None:
    """DeepSpeed's universal checkpoint of `tag_dir` (loadable on any world size) into `out_dir`."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(tag_dir),
        "--output_folder",
        str(out_dir),
        "--inject_missing_state",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"ds_to_universal failed on {tag_dir}: {tail[0]}")
