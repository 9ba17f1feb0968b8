"""The run configuration: typed dataclasses, loaded from YAML (`yaml.safe_load`) plus dotted overrides.

    cfg = load_config("configs/tiny-bert.yaml", ["optimizer.lr=3e-4", "trainer.max_steps=200"])

An unknown key, a value of the wrong type, or batch sizes that do not multiply out raise `ConfigError`, whose
message names the key (with the file it came from) and what to change.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloze_errors import ClozeError
from modeling.config import PRESETS, ModelConfig, ModelConfigError


class ConfigError(ClozeError, ValueError):
    """A configuration that cannot run; the message names the key and the fix."""

    same_on_every_rank = True


@dataclass
class MixtureSource:
    """One dataset of a mixture."""

    path: str = ""
    """Dataset directory written by `cloze shards`. Required."""
    name: str = ""
    """Label in logs and TensorBoard (mixture/<name>, eval/<name>/loss). Default: the dataset's language
    (`cloze shards --language`), else the directory's name."""
    weight: float = 0.0
    """Sampling weight (normalised over the sources). 0 = derived from the dataset's training tokens with
    data.mixture.alpha; give every source a weight or none."""


@dataclass
class MixtureStage:
    """From optimizer step `step` on, new weights: an alpha, or explicit weights by source name."""

    step: int = 0
    """First step of the stage (> 0; the config's own weights hold from step 0)."""
    alpha: float = 0.0
    """Temperature exponent from this step on (0 = explicit `weights`)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Weight of every source by name (when alpha is 0)."""


@dataclass
class MixtureConfig:
    """Several datasets sampled by weight (data_pipeline/mixture.py; docs/data.md "Mixtures"): p_l ∝ n_l^alpha
    over the sources' training tokens n_l unless weights are given. The sample order stays a pure function of
    (seed, global sample index), so exact and elastic resume cost what they cost on one dataset."""

    sources: list[MixtureSource] = field(default_factory=list)
    """The datasets (two or more). Every one must share the tokenizer (sha256) and sequence length; with
    unit: sample also the objective."""
    alpha: float = 0.3
    """Temperature exponent when no weights are given: 0.3 is mT5's and XLM-R's, 0.5 XLM's, 1 = by size. In
    (0, 1]."""
    unit: str = "sample"
    """'sample': every batch mixes the sources; 'step': each optimizer step's whole batch comes from one source
    (XLM's alternation of MLM and TLM steps)."""
    stages: list[MixtureStage] = field(default_factory=list)
    """Weights that change during the run (mmBERT-style annealing): stages at increasing steps."""

    def __post_init__(self) -> None:
        if self.unit not in ("sample", "step"):
            raise ConfigError(f"data.mixture.unit={self.unit!r}: use 'sample' or 'step'")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(
                f"data.mixture.alpha={self.alpha}: it must be in (0, 1] (mT5 and XLM-R use 0.3, XLM 0.5)"
            )
        if len(self.sources) == 1:
            raise ConfigError("data.mixture.sources lists one dataset: use data.path for one, or add more")
        given = [s.weight != 0 for s in self.sources]
        if any(given) and not all(given):
            raise ConfigError(
                "data.mixture.sources: give every source a weight, or none (weights then come from alpha)"
            )
        for i, src in enumerate(self.sources):
            if not src.path:
                raise ConfigError(
                    f"data.mixture.sources[{i}].path is empty; point it at a `cloze shards` dataset"
                )
            if src.weight < 0:
                raise ConfigError(
                    f"data.mixture.sources[{i}].weight={src.weight}: weights must be > 0 (drop the source instead)"
                )
        last = 0
        for i, st in enumerate(self.stages):
            if st.step <= last:
                raise ConfigError(
                    f"data.mixture.stages[{i}].step={st.step}: stage steps must be > 0 and increasing"
                )
            last = st.step
            if st.alpha and st.weights:
                raise ConfigError(f"data.mixture.stages[{i}]: give an alpha or weights, not both")
            if not st.weights and not 0.0 < st.alpha <= 1.0:
                raise ConfigError(
                    f"data.mixture.stages[{i}].alpha={st.alpha}: it must be in (0, 1] (or give weights)"
                )


@dataclass
class DataConfig:
    """Where the pretraining shards are and how they are read."""

    path: str = ""
    """Dataset directory written by `cloze shards` (holds manifest.json). Required."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = read in the training process)."""
    prefetch_factor: int = 4
    """Micro-batches each worker prepares ahead."""
    objective: str = ""
    """For `--objective tokens` shards: the objective applied on the fly (mlm, wwm, span, electra). Empty =
    the dataset's own objective."""
    objective_options: dict[str, Any] = field(default_factory=dict)
    """Parameters of the on-the-fly objective, e.g. {rate: 0.15}."""
    skip_budget: int = 0
    """Unreadable samples (truncated or corrupt shards) the whole run may skip before it fails: one budget summed over
    ranks, workers and resumed runs (saved with checkpoints)."""
    allow_dataset_change: bool = False
    """Resume on a dataset other than the one the checkpoint was trained on (its manifest fingerprint, saved in the
    checkpoint, differs): an error unless this is true. The data position (samples consumed) carries over."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """Train on several datasets sampled by weight (leave data.path empty then)."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if self.skip_budget < 0:
            raise ConfigError(f"data.skip_budget must be >= 0, got {self.skip_budget}")


@dataclass
class OptimizerConfig:
    """AdamW, LAMB or Adafactor, with a learning-rate schedule."""

    name: str = "adamw"
    """Optimizer: 'adamw' (torch.optim.AdamW), 'lamb' (DeepSpeed's FusedLamb on GPU, cloze's torch LAMB on CPU) or
    'adafactor' (torch.optim.Adafactor: factored second moments, no momentum, update clipping; T5's optimizer);
    biases and norms get no weight decay. LAMB and Adafactor need deepspeed.zero_stage=0 and fp32/fp16."""
    lr: float = 1e-4
    """Peak learning rate, reached after warmup_steps."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr."""
    schedule: str = "linear"
    """Decay after warmup: 'linear' or 'cosine' (to min_lr_ratio x lr at trainer.max_steps), 'inverse_sqrt'
    (fairseq: linear warmup, then lr x sqrt(warmup_steps / step)), 'rsqrt' (T5's rsqrt_no_ramp_down: constant lr for
    warmup_steps steps with no ramp, then lr x sqrt(warmup_steps / step); lr 1e-2 and 10000 give 1/sqrt(max(step,
    10^4))), or 'constant'."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    fused: bool = True
    """torch's fused AdamW kernel (CPU and CUDA): one kernel for all parameters instead of a loop of ops (AdamW
    only)."""
    decay_rate: float = 0.8
    """Adafactor: the second-moment decay is 1 - step^-decay_rate (mesh-tensorflow adafactor_decay_rate_pow(0.8),
    T5's default)."""
    clip_threshold: float = 1.0
    """Adafactor: the update is divided by max(1, RMS(update) / clip_threshold) (T5: 1.0)."""

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "lamb", "adafactor"):
            raise ConfigError(
                f"optimizer.name={self.name!r} is not supported; use 'adamw', 'lamb' or 'adafactor'"
            )
        if self.schedule not in ("linear", "cosine", "inverse_sqrt", "rsqrt", "constant"):
            raise ConfigError(
                f"optimizer.schedule={self.schedule!r}: use 'linear', 'cosine', 'inverse_sqrt', 'rsqrt' or "
                "'constant'"
            )
        if self.schedule == "rsqrt" and self.warmup_steps < 1:
            raise ConfigError(
                "optimizer.schedule=rsqrt needs optimizer.warmup_steps >= 1 (the constant phase; T5: 10000)"
            )
        if self.decay_rate <= 0 or self.clip_threshold <= 0:
            raise ConfigError(
                f"optimizer.decay_rate and optimizer.clip_threshold must be > 0, got {self.decay_rate} and "
                f"{self.clip_threshold}"
            )
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"optimizer.betas must be two numbers like [0.9, 0.98], got {self.betas}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class DeepSpeedConfig:
    """What goes into the generated DeepSpeed JSON (saved as ds_config.json in the run directory)."""

    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states sharded), 2 (+ gradients), 3 (+ parameters)."""
    precision: str = "fp32"
    """'fp32', 'bf16' or 'fp16' (dynamic loss scaling)."""
    dist_backend: str = ""
    """torch.distributed backend: '' = nccl on GPU, gloo on CPU."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one device for MFU; 0 = look the GPU up in modeling/flops.py (no MFU on CPU)."""
    timeout_minutes: float = 30.0
    """Collective timeout: a rank that hangs makes all ranks exit non-zero after this long (the ranks waiting in a
    collective time out; the hung rank's own watchdog ends it). Fractions are allowed (0.5 = 30 s)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer states and the optimizer step in CPU memory (ZeRO stage 1-3)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Advanced DeepSpeed keys merged into the generated JSON as they are (e.g. {'zero_optimization': {...}})."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"deepspeed.precision={self.precision!r}: use 'fp32', 'bf16' or 'fp16'")
        if self.dist_backend not in ("", "nccl", "gloo"):
            raise ConfigError(f"deepspeed.dist_backend={self.dist_backend!r}: use '', 'nccl' or 'gloo'")
        if self.timeout_minutes <= 0:
            raise ConfigError(f"deepspeed.timeout_minutes must be > 0, got {self.timeout_minutes}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(
                "deepspeed.offload_optimizer=true needs ZeRO: set deepspeed.zero_stage to 1, 2 or 3"
            )


@dataclass
class TrainerConfig:
    """Steps, batch sizes, evaluation and seeding."""

    max_steps: int = 1000
    """Optimizer steps to train for (the learning-rate schedule ends here)."""
    global_batch_size: int = 32
    """Sequences per optimizer step, over all ranks: micro_batch_size x grad_accum x world size."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one rank."""
    grad_accum: int = 0
    """Micro-batches accumulated per step on each rank; 0 = derive from the other two and the world size."""
    eval_every: int = 100
    """Run the held-out evaluation every this many steps (0 = only at the end)."""
    eval_batches: int = 20
    """Micro-batches per rank in one evaluation (at most the whole validation split)."""
    seed: int = 1234
    """Seed of initialisation, data order and dropout (dropout RNG is derived from (seed, step, rank))."""
    stop_after_steps: int = 0
    """Checkpoint and stop once this step is reached, as a preemption would (0 = run to max_steps)."""
    extend_schedule: bool = False
    """On resume with another max_steps (or optimizer.warmup_steps): stretch the learning-rate schedule to the new
    values. By default the run keeps the schedule it started with (saved in its checkpoints), and steps past its
    end train at the schedule's final learning rate."""
    max_nonfinite_steps: int = 5
    """A step whose loss is NaN/Inf on any rank, or whose gradient norm is (fp16 overflows aside), is skipped on
    every rank (no update, counted in train/skipped_steps); this many in a row stop the run with an error
    (0 = never stop)."""
    compile: bool = False
    """Compile the model's forward (and so its backward) with torch.compile (inductor: C++ on CPU, triton on GPU),
    in place: parameter names, checkpoints and exports are unchanged. The first steps are slow (compilation);
    with dropout the compiled model draws other (equally distributed, still seeded) masks than the eager one."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "global_batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("grad_accum", "eval_every", "eval_batches", "stop_after_steps", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class LoggingConfig:
    """Console and TensorBoard logging (rank 0 only)."""

    log_every: int = 10
    """Print a one-line summary every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard event files under <run_dir>/tensorboard."""
    progress_bar: bool = False
    """Show a tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"logging.log_every must be >= 1, got {self.log_every}")


@dataclass
class CheckpointConfig:
    """Sharded DeepSpeed checkpoints under <run_dir>/checkpoints."""

    every_steps: int = 500
    """Save every this many steps (0 = only at the end); always saved at the end and on a stop."""
    keep_last: int = 3
    """Keep this many newest complete checkpoints (the one `latest` names is never deleted)."""
    verify_hashes: bool = True
    """On resume, check every file's sha256 (about 1 s per GB on one core); sizes are always checked."""
    resume: bool = True
    """Resume from the newest complete checkpoint in the run directory if there is one."""
    trusted: bool = False
    """Skip the weights-only unpickling check of checkpoint files (only for checkpoints from a trusted source).
    Honoured only as a command-line override (`checkpoint.trusted=true`); a YAML file's value is ignored, and the
    run directory's config.yaml always records false."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"checkpoint.every_steps must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class SlurmConfig:
    """How `cloze submit` renders launch/slurm/pretrain.sbatch (every field can also be given as a flag)."""

    nodes: int = 1
    """Nodes to allocate."""
    gpus_per_node: int = 0
    """GPUs per node (0 = a CPU job; no --gpus-per-node line)."""
    tasks_per_node: int = 0
    """Ranks per node; 0 = one per GPU (1 on CPU)."""
    cpus_per_task: int = 0
    """CPU cores per rank (0 = SLURM's default)."""
    partition: str = ""
    """--partition (empty = the cluster's default)."""
    account: str = ""
    """--account (empty = none)."""
    time: str = ""
    """--time limit, e.g. '24:00:00' (empty = the partition's)."""
    job_name: str = "cloze"
    """--job-name."""
    signal_seconds: int = 300
    """SIGUSR1 this many seconds before the time limit (--signal=B:USR1@S): time to save a checkpoint."""
    max_restarts: int = 10
    """Requeue after a preemption signal at most this many times (SLURM_RESTART_COUNT)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before training, e.g. ['module load cuda/12.4', 'source ~/venvs/cloze/bin/activate']."""
    container: str = ""
    """A command that wraps each rank, e.g. 'apptainer exec --nv cloze.sif' (empty = none)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables exported in the job, e.g. {NCCL_DEBUG: WARN}."""
    sbatch_options: list[str] = field(default_factory=list)
    """Further sbatch options, one per item, e.g. ['--exclusive', '--constraint=a100']."""
    python: str = ""
    """The Python that runs cloze on the nodes (empty = the one running `cloze submit`)."""

    def __post_init__(self) -> None:
        for name in ("nodes", "signal_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "max_restarts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"slurm.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class RunConfig:
    """One pretraining run."""

    run_dir: str = "runs/default"
    """Directory for this run: resolved config, DeepSpeed JSON, TensorBoard events, checkpoints."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        ds = self.deepspeed
        # Optimizers that need whole tensors: ZeRO and DeepSpeed's bf16 optimizer hand the optimizer flat partitions
        # that cut across tensors. Adafactor factors each matrix's second moment into row and column statistics and
        # scales by the tensor's RMS (a flat partition has no rows or columns); LAMB's trust ratio is per tensor, so
        # it would be computed over the wrong thing. Each: (what breaks, what to do instead).
        per_tensor = {
            "adafactor": ("Adafactor's factored (row x column) second moments", "use zero_stage 0"),
            "lamb": ("LAMB's per-tensor trust ratio", "use fp16 with stage 0 (NVIDIA's BERT recipe)"),
        }
        if self.optimizer.name in per_tensor and (ds.zero_stage != 0 or ds.precision == "bf16"):
            breaks, fix = per_tensor[self.optimizer.name]
            raise ConfigError(
                f"optimizer.name={self.optimizer.name} needs deepspeed.zero_stage=0 and precision fp32 or fp16 (got "
                f"zero_stage={ds.zero_stage}, precision={ds.precision}): ZeRO and the bf16 optimizer flatten "
                f"parameters into partitions, which breaks {breaks}; {fix} or optimizer.name=adamw"
            )

        if self.trainer.compile and ds.zero_stage == 3:
            raise ConfigError(
                "trainer.compile=true works with deepspeed.zero_stage 0, 1 or 2, not 3 (ZeRO-3 gathers and releases "
                "each module's parameters in hooks that torch.compile cannot trace): set trainer.compile=false or "
                "a lower zero_stage"
            )

    def resolve_batch(self, world_size: int) -> int:
        """Check micro x accum x world == global; return grad_accum (derived when it is 0)."""
        t = self.trainer
        per_step = t.micro_batch_size * world_size
        if t.grad_accum == 0:
            if t.global_batch_size % per_step:
                raise ConfigError(
                    f"trainer.global_batch_size={t.global_batch_size} is not a multiple of "
                    f"trainer.micro_batch_size={t.micro_batch_size} x world size {world_size} = {per_step}; "
                    f"set trainer.global_batch_size to a multiple of {per_step} or change trainer.micro_batch_size"
                )
            return t.global_batch_size // per_step
        if t.micro_batch_size * t.grad_accum * world_size != t.global_batch_size:
            raise ConfigError(
                f"batch sizes do not add up: trainer.micro_batch_size={t.micro_batch_size} x "
                f"trainer.grad_accum={t.grad_accum} x world size {world_size} = "
                f"{t.micro_batch_size * t.grad_accum * world_size}, but trainer.global_batch_size="
                f"{t.global_batch_size}; set trainer.grad_accum=0 to derive it, or fix one of them"
            )
        return t.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_yaml_absolute(self, base: str | Path | None = None) -> str:
        """The YAML with every path (PATH_KEYS) absolute, resolved against `base` (default: the working directory):
        what a run directory records, so it means the same read from anywhere. The config itself is unchanged."""
        data = self.to_dict()
        data["checkpoint"]["trusted"] = False  # trust is given per command, never recorded for later ones
        root = Path(base) if base is not None else Path.cwd()
        for dotted in PATH_KEYS:
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            value = node[leaf]
            # slurm.python may be a bare command found on PATH ("python3"): only paths with a directory part move.
            # model.teacher '???' is a recipe's "required" marker, not a path.
            if value and value != "???" and (leaf != "python" or "/" in value):
                node[leaf] = os.path.abspath(root / Path(value).expanduser())  # keeps symbolic links
        for src in data["data"]["mixture"]["sources"]:  # data.mixture.sources[*].path
            src["path"] = os.path.abspath(root / Path(src["path"]).expanduser())
        return yaml.safe_dump(data, sort_keys=False)


PATH_KEYS = ("run_dir", "data.path", "slurm.python", "model.init_from", "model.teacher")
"""The config keys that hold filesystem paths (written absolute into a run directory's config.yaml)."""


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> (dotted overrides) -> typed dataclasses, checking every key and type on the way.


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _origin_of(key: str, where: str, over: dict[str, str] | None) -> str:
    """Where the value of `key` came from: the command-line override that set it (or a section above it), else
    `where` (the YAML file)."""
    for k, text in (over or {}).items():
        if key == k or key.startswith(k + ".") or key.startswith(k + "["):
            return f" (from the command-line override {text})"
    return where


def _check_value(value: Any, tp: Any, key: str, where: str, over: dict[str, str] | None = None) -> Any:
    where = _origin_of(key, where, over)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key, where, over)
            except ConfigError:
                continue
        raise ConfigError(f"{key}{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _from_dict(tp, value, key, where, over)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads `3e-4` as a string; accept a string that is a plain number.
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}{where}: unsupported field type {tp}")  # pragma: no cover - a bug in a dataclass


def _from_dict(
    cls: type, data: dict[str, Any], prefix: str, where: str, over: dict[str, str] | None = None
) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            if not close and prefix:  # the right key in another section, e.g. trainer.lr -> optimizer.lr
                elsewhere = [
                    f"{f.name}.{key}"
                    for f in dataclasses.fields(RunConfig)
                    if isinstance(f.default_factory, type)
                    and dataclasses.is_dataclass(f.default_factory)
                    and key in {g.name for g in dataclasses.fields(f.default_factory)}
                ]
                hint = f"; did you mean {elsewhere[0]}?" if elsewhere else ""
            raise ConfigError(
                f"unknown key {full}{_origin_of(full, where, over)}{hint} (valid keys here: {', '.join(names)})"
            )
    values: dict[str, Any] = {}
    if cls is ModelConfig and data.get("preset"):
        preset = data["preset"]
        if preset not in PRESETS:
            raise ConfigError(
                f"{prefix}.preset{_origin_of(f'{prefix}.preset', where, over)}: unknown preset {preset!r}; choose one of {sorted(PRESETS)}"
            )
        values.update(PRESETS[preset])
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        values[key] = _check_value(value, hints[key], full, where, over)
    try:
        return cls(**values)
    except (ConfigError, ModelConfigError) as e:
        # a check across fields: blame the override whose key the message names, if one does
        named = [k for k in (over or {}) if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", str(e))]
        origin = _origin_of(named[0], where, over) if named else where
        raise ConfigError(f"{e}{origin}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {p} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (example: optimizer.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key (example: optimizer.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, source: str = "") -> RunConfig:
    data = copy.deepcopy(data)
    where = f" (in {source})" if source else ""
    section = data.get("checkpoint")
    if isinstance(section, dict) and section.get("trusted"):
        # A file may sit in the very run directory whose checkpoints are checked: trust is the command line's alone.
        section["trusted"] = False
        print(
            f"cloze: note: checkpoint.trusted{where} is ignored: trust in a checkpoint is given on the command line "
            "only (`cloze train ... checkpoint.trusted=true`, `cloze export/convert --trusted`)",
            file=sys.stderr,
            flush=True,
        )
    over: dict[str, str] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(data, key, value)
        over[key] = text
    return typing.cast(RunConfig, _from_dict(RunConfig, data, "", where, over))


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML and apply dotted `key=value` overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {p} does not exist; pass a YAML file, or the name of a shipped recipe (the stem of a "
            "file in configs/, e.g. tiny-bert or bert-base)"
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (model:, data:, ...)")
    return config_from_dict(data, overrides, source=str(p))
