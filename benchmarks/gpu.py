"""The GPU suite (issue 18): one command on a bare GPU machine that installs the wheels carried from here, then
measures training throughput and MFU of cloze's DeepSpeed engine (ZeRO-1, ZeRO-3), a bare torch loop over the same
model and transformers' model of the same shape, within a global time budget, and prints one markdown table.

    make wheels                                  # here, once: deepspeed, webdataset, ... into .wheels/
    bash benchmarks/gpu.sh                       # there: = python3 benchmarks/gpu.py (installs, re-execs, measures)
    python benchmarks/gpu.py --dry               # CPU, tiny shapes, the same code path (tests/test_gpu_suite.py)
    python benchmarks/gpu.py --check-wheels .wheels
    python benchmarks/gpu.py --build-wheels .wheels   # what `make wheels` runs

Cases, in this order (the headline first: bert-base seq 512, ZeRO-1; goal >= 55% MFU): bert-base at seq 512 and
128, bert-large at 512 and 128, t5-base at inputs 512 / targets 114 (T5's span-corruption lengths), each through
cloze ZeRO-1, the bare torch loop, transformers and cloze ZeRO-3; bf16 (DeepSpeed's bf16 for the engine, bf16
autocast for the loops), world size 1, synthetic batches (benchmarks/train_step.py, whose step functions this
reuses). A case the remaining budget does not allow is skipped and marked so; each row is printed as soon as it
is measured. FLOPs are cloze's model FLOPs for the step (modeling/flops.py; the MLM head, and the last block but
its q/k/v projection, on the 15% masked positions, as cloze computes them), the same count for every row of a shape,
so TFLOP/s compare like tokens/s.

This module imports nothing outside the standard library (and `packaging`) at the top: it must run, and install
DeepSpeed, before anything imports DeepSpeed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.parser
import gc
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".wheels"
SITE = Path("/tmp/cloze-gpu-site")  # where the carried wheels are installed on the GPU machine (PYTHONPATH)
T0_ENV, REEXEC_ENV = "CLOZE_GPU_SUITE_T0", "CLOZE_GPU_SUITE_REEXEC"

# What cloze needs beyond the GPU image (torch, transformers, sentencepiece, ... are there): pyproject's pins.
ROOTS = ("deepspeed>=0.16", "webdataset>=0.2.86", "braceexpand")
# The wheels `make wheels` carries: the roots and those of their needs the image lacks or may lack (its package
# list has no hjson and no pydantic; the suite installs only what is missing there). Versions: what CI runs.
CARRIED = {
    "deepspeed": "0.19.8",  # an sdist: built here with `pip wheel` (pure Python, no op compiled)
    "webdataset": "1.0.2",
    "braceexpand": "0.1.7",
    "hjson": "3.1.0",
    "py-cpuinfo": "9.0.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",  # the one compiled wheel: CPython 3.12, manylinux x86-64
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",
}
SDISTS = ("deepspeed",)
# The GPU machine: CPython 3.12 on x86-64 Linux (glibc >= 2.28).
TARGET_PYTHON = (3, 12)
TARGET_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def norm(name: str) -> str:
    """A distribution's name as PEP 503 compares them (py_cpuinfo == py-cpuinfo)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------- wheels


@dataclasses.dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # normalised
    version: str
    tags: frozenset[Any]  # packaging.tags.Tag
    requires: tuple[str, ...]  # its Requires-Dist lines


def read_wheels(folder: Path) -> list[Wheel]:
    """Every wheel in `folder`: name, version and tags from the file name, needs from its METADATA."""
    from packaging.utils import parse_wheel_filename

    wheels = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as z:
            meta = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            text = z.read(meta[0]).decode() if meta else ""
        requires = tuple(email.parser.HeaderParser().parsestr(text).get_all("Requires-Dist") or ())
        wheels.append(Wheel(path, norm(name), str(version), frozenset(tags), requires))
    return wheels


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_requires(name: str) -> list[str]:
    """The Requires-Dist lines of an installed distribution."""
    from importlib import metadata

    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


@dataclasses.dataclass
class Plan:
    install: list[Wheel]  # carried wheels to install (one pip --no-deps command: their order does not matter)
    present: list[str]  # "name version": already installed and good enough
    missing: list[str]  # needs neither installed nor carried, with why


def plan_install(
    folder: Path,
    installed: Callable[[str], str | None] = installed_version,
    supported: frozenset[Any] | None = None,
    roots: tuple[str, ...] = ROOTS,
    requires: Callable[[str], list[str]] = installed_requires,
) -> Plan:
    """What to install from `folder` so that `roots` and everything they need are importable: each need (Requires-
    Dist, markers evaluated here, extras skipped) is either installed in a version it accepts, or taken from a
    carried wheel that this interpreter can install (`supported`: its tags); otherwise it is missing. The needs of
    what is taken, and of what is installed among the roots and the carried names (`requires`: an installed one's
    Requires-Dist; not those of torch, numpy, ...: the image's own), are planned too. Installs nothing."""
    from packaging.requirements import Requirement
    from packaging.tags import sys_tags

    tags = supported if supported is not None else frozenset(sys_tags())
    carried: dict[str, list[Wheel]] = {}
    for w in read_wheels(folder) if folder.is_dir() else []:
        carried.setdefault(w.name, []).append(w)
    plan = Plan([], [], [])
    chosen: dict[str, str] = {}  # name -> version it will have
    queue = [(Requirement(r), "the suite") for r in roots]
    ours = {norm(Requirement(r).name) for r in roots} | set(CARRIED)

    def need(lines: list[str] | tuple[str, ...], by: str) -> None:
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                queue.append((req, by))

    while queue:
        req, by = queue.pop(0)
        name = norm(req.name)
        if name in chosen:
            if not req.specifier.contains(chosen[name], prereleases=True):
                plan.missing.append(f"{req} (needed by {by}; {name} {chosen[name]} is what there is)")
            continue
        have = installed(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            chosen[name] = have
            plan.present.append(f"{name} {have}")
            if name in ours:
                need(requires(name), f"{name} {have}")
            continue
        fits = [w for w in carried.get(name, []) if req.specifier.contains(w.version, prereleases=True)]
        usable = [w for w in fits if w.tags & tags]
        if not usable:
            why = f"installed: {have or 'no'}; carried: "
            why += ", ".join(f"{w.path.name}" for w in carried.get(name, [])) or "no"
            if fits:
                why += " (not for this Python/platform)"
            plan.missing.append(f"{req} (needed by {by}; {why})")
            continue
        wheel = usable[0]
        chosen[name] = wheel.version
        plan.install.append(wheel)
        need(wheel.requires, f"{name} {wheel.version}")
    return plan


def target_tags() -> frozenset[Any]:
    """The wheel tags the GPU machine's Python (CPython 3.12, x86-64 Linux) installs."""
    from packaging import tags

    plats = list(TARGET_PLATFORMS)
    return frozenset(
        [
            *tags.cpython_tags(python_version=TARGET_PYTHON, platforms=plats),
            *tags.compatible_tags(python_version=TARGET_PYTHON, platforms=plats),
        ]
    )


def check_wheels(folder: Path) -> list[str]:
    """Why `folder` would not do as the carried wheels (empty: it does): every CARRIED name in its version, one
    wheel each (two versions stop pip), each installable on the GPU machine's Python."""
    if not folder.is_dir():
        return [f"{folder} does not exist: run `make wheels`"]
    wheels = read_wheels(folder)
    problems = []
    target = target_tags()
    for name, version in CARRIED.items():
        have = [w for w in wheels if w.name == name]
        if not have:
            problems.append(f"{name}=={version}: no wheel")
        elif len(have) > 1:
            problems.append(f"{name}: {len(have)} wheels ({', '.join(w.path.name for w in have)}); keep one")
        elif have[0].version != version:
            problems.append(f"{name}: {have[0].path.name} is version {have[0].version}, not {version}")
        elif not have[0].tags & target:
            problems.append(f"{name}: {have[0].path.name} does not install on CPython 3.12 x86-64 Linux")
    problems += [f"{w.path.name}: not one of the carried wheels" for w in wheels if w.name not in CARRIED]
    return problems


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl"))


def build_wheels(folder: Path) -> int:
    """`make wheels`: each CARRIED wheel into `folder` unless already there (deepspeed built from its sdist, the
    others downloaded for CPython 3.12 x86-64), then the folder checked and its size printed."""
    folder.mkdir(parents=True, exist_ok=True)
    have = {(w.name, w.version) for w in read_wheels(folder)}
    todo = {n: v for n, v in CARRIED.items() if (n, v) not in have}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    env = dict(os.environ, DS_BUILD_OPS="0")  # a pure-Python deepspeed wheel: ops are never prebuilt
    for name in SDISTS:
        if name in todo:
            print(f"building {name}=={todo[name]} (about a minute)", flush=True)
            cmd = [*pip, "wheel", "-q", "--no-deps", f"{name}=={todo.pop(name)}", "-w", str(folder)]
            subprocess.run(cmd, check=True, env=env)
    if todo:
        print(f"downloading {', '.join(f'{n}=={v}' for n, v in todo.items())}", flush=True)
        plats = [a for p in TARGET_PLATFORMS for a in ("--platform", p)]
        cmd = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
        cmd += ["--implementation", "cp", *plats, "-d", str(folder)]
        subprocess.run([*cmd, *(f"{n}=={v}" for n, v in todo.items())], check=True)
    problems = check_wheels(folder)
    for w in read_wheels(folder):
        print(f"  {w.path.name}  {w.path.stat().st_size / 2**20:.2f} MiB")
    print(f"{folder}: {len(read_wheels(folder))} wheels, {folder_size(folder) / 2**20:.1f} MiB in all")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


def ensure_installed(folder: Path, site: Path) -> None:
    """Install what the plan says from the carried wheels into `site` (pip --no-index --no-deps, nothing fetched),
    then re-exec this script with `site` first on PYTHONPATH. Returns when nothing needs installing."""
    plan = plan_install(folder)
    print(f"gpu suite: present: {', '.join(plan.present)}", flush=True)
    for m in plan.missing:
        print(f"gpu suite: MISSING {m}", flush=True)
    if not plan.install:
        return
    if os.environ.get(REEXEC_ENV):
        sys.exit(f"gpu suite: still not importable after installing: {[w.name for w in plan.install]}")
    names = ", ".join(f"{w.name} {w.version}" for w in plan.install)
    print(f"gpu suite: installing from {folder} into {site}: {names}", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site)]
    subprocess.run([*cmd, *(str(w.path) for w in plan.install)], check=True)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, **{REEXEC_ENV: "1"})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# ---------------------------------------------------------------------------------------------------- cases

SYSTEMS = ("zero1", "torch", "transformers", "zero3")
SYSTEM_NAMES = {
    "zero1": "cloze ZeRO-1",
    "torch": "bare torch",
    "transformers": "transformers",
    "zero3": "cloze ZeRO-3",
}
# (model, recipe, seq, micro-batch on the GPU, vocabulary); the first is the headline.
SHAPES = (
    ("bert-base", "bert-base.yaml", 512, 16, 30522),
    ("bert-base", "bert-base.yaml", 128, 64, 30522),
    ("bert-large", "bert-large.yaml", 512, 8, 30522),
    ("bert-large", "bert-large.yaml", 128, 32, 30522),
    ("t5-base", "t5-base.yaml", 512, 16, 32128),
)
# --dry: the same cases, tiny: 2 layers of width 64, seq 32 (16 for the seq-128 shapes), batch 4
DRY_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=256"]
DRY_SEQ, DRY_BATCH, DRY_VOCAB = {512: 32, 128: 16}, 4, 1000
# Seconds a case is expected to take on the GPU before one of its system has run (bert-base-sized; scaled by
# parameters): engine start, model build, warm-up and timed steps.
FIRST_GUESS_S = {"zero1": 15.0, "torch": 8.0, "transformers": 10.0, "zero3": 25.0}


@dataclasses.dataclass
class Case:
    model: str
    recipe: str
    seq: int
    batch: int
    vocab: int
    system: str
    target: int = 0  # decoder length (T5)
    tokens_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    wall_s: float | None = None
    note: str = ""

    @property
    def shape(self) -> tuple[str, int]:
        return (self.model, self.seq)

    @property
    def seq_text(self) -> str:
        return f"{self.seq}/{self.target}" if self.target else str(self.seq)


def make_cases(dry: bool, models: list[str] | None, systems: list[str] | None, scale: float) -> list[Case]:
    cases = []
    for model, recipe, seq, batch, vocab in SHAPES:
        if models and model not in models:
            continue
        if dry:
            seq, batch, vocab = DRY_SEQ[seq], DRY_BATCH, DRY_VOCAB
        else:
            batch = max(1, round(batch * scale))
        for system in SYSTEMS:
            if not systems or system in systems:
                cases.append(Case(model, recipe, seq, batch, vocab, system))
    return cases


HEADER = "| model | seq | micro-batch | system | precision | tokens/s | TFLOP/s | MFU | peak GiB | vs torch | note |"
RULE = "|" + "---|" * (HEADER.count("|") - 1)


def row(case: Case, precision: str, cases: list[Case]) -> str:
    peer = [c.tokens_s for c in cases if c.shape == case.shape and c.system == "torch" and c.tokens_s]
    vs = f"{case.tokens_s / peer[0]:.2f}" if case.tokens_s and peer else ""
    if case.tokens_s is None or case.tflops is None:
        tok = tfl = mfu = mem = "-"
    else:
        tok = f"{case.tokens_s:,.0f}"
        tfl = f"{case.tflops:.1f}" if case.tflops >= 10 else f"{case.tflops:.3g}"
        mfu = f"{case.mfu:.1%}" if case.mfu is not None else "n/a"
        mem = f"{case.peak_gib:.2f}" if case.peak_gib is not None else "n/a"
    cells = [case.model, case.seq_text, str(case.batch), SYSTEM_NAMES[case.system], precision]
    return "| " + " | ".join([*cells, tok, tfl, mfu, mem, vs, case.note]) + " |"


# ---------------------------------------------------------------------------------------------------- measuring


class OutOfBudget(BaseException):
    """The budget's deadline (a BaseException: no `except Exception` in a library swallows it)."""


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Raise OutOfBudget in the main thread at time `at` (time.time()), so the table still gets printed."""

    def fire(signum: int, frame: Any) -> None:
        raise OutOfBudget()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, at - time.time()))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cases(
    cases: list[Case],
    run: Callable[[Case], None],
    deadline_at: float,
    grace_s: float,
    guess: Callable[[Case, Case | None], float],
    show: Callable[[Case], None],
) -> None:
    """Run each case in order unless the time left before `deadline_at` (time.time()) is less than `guess(case,
    the same system's last measured case)`; a case still running at `deadline_at + grace_s` is stopped, and so are
    all after it; a case that raises is a failed row. Every case is shown (`show`) once decided, as it goes."""
    done: dict[str, Case] = {}
    shown: set[int] = set()  # id() of the cases shown
    stopped = f"stopped: the budget ran out (+{grace_s:.0f} s grace)"
    out_of_time = False
    with deadline(deadline_at + grace_s):
        try:
            for case in cases:
                left = deadline_at - time.time()
                need = guess(case, done.get(case.system))
                if out_of_time or need > left:
                    case.note = (
                        stopped
                        if out_of_time
                        else f"skipped: budget ({max(left, 0):.0f} s left, needs ~{need:.0f} s)"
                    )
                    shown.add(id(case))
                    show(case)
                    continue
                start = time.time()
                try:
                    run(case)
                    done[case.system] = case
                except OutOfBudget:
                    case.note, out_of_time = stopped, True
                except Exception as e:  # one failed case (out of memory, say) is a row, not the end
                    traceback.print_exc()
                    first = str(e).splitlines()[0][:120] if str(e) else ""
                    case.note = f"failed: {type(e).__name__}: {first}"
                case.wall_s = time.time() - start
                shown.add(id(case))
                show(case)
        except OutOfBudget:  # between two cases
            pass
    for case in cases:
        if id(case) not in shown:
            case.note = case.note or stopped
            show(case)


def forbid_op_builds() -> None:
    """Make any DeepSpeed op JIT build an error naming the op: on the GPU machine a build costs minutes of device
    time, and nothing cloze runs there (torch's fused AdamW, no DeepSpeed kernel) should need one."""
    import importlib

    def refuse(self: Any, verbose: bool = True) -> Any:
        raise RuntimeError(f"DeepSpeed would JIT-compile its {self.name} op; the GPU suite never compiles")

    for module in ("deepspeed.ops.op_builder.builder", "op_builder.builder"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module).OpBuilder.jit_load = refuse


def measure(args: argparse.Namespace, t0: float) -> int:
    import logging

    import torch

    on_gpu = torch.cuda.is_available() and not args.dry
    if not on_gpu and not args.dry:
        print("gpu suite: no CUDA device here; run with --dry for the CPU check", file=sys.stderr)
        return 2
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    if on_gpu:
        forbid_op_builds()
    import deepspeed
    import transformers

    from benchmarks import train_step as ts
    from data_pipeline.objectives import T5Params, t5_raw_length
    from modeling.flops import param_count, peak_flops_for, train_flops_per_token
    from trainer import distributed as D
    from trainer.config import load_config
    from trainer.engine import init_distributed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # torch's notice on the collectives DeepSpeed's ZeRO-3 calls, once per step: noise in the device's output tail
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    # T5's decoder length at inputs of T is T5's own (114 at 512: data_pipeline's t5_raw_length, what the shards
    # hold) rather than train_step's 20% of T: every step function of train_step builds its batch through it.
    t5_target = ts.target_len

    def target_len(cfg: Any, T: int) -> int:
        return t5_raw_length(T, T5Params())[1] if cfg.model.family == "t5" else t5_target(cfg, T)

    ts.target_len = target_len

    precision = args.precision or "bf16"
    device = torch.device("cuda" if on_gpu else "cpu")
    timing = argparse.Namespace(
        steps=args.steps or (20 if on_gpu else 2), warmup=args.warmup or (5 if on_gpu else 1)
    )
    peak = args.peak_tflops * 1e12 or (peak_flops_for(torch.cuda.get_device_name()) if on_gpu else None)
    init_distributed(D.discover({}), "nccl" if on_gpu else "gloo", 10)
    name = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads; --dry)"
    peak_text = f"{peak / 1e12:.0f} TFLOP/s (MFU's denominator)" if peak else "unknown (no MFU)"
    setup = (
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}; {precision}, world size 1, {timing.steps} timed steps after "
        f"{timing.warmup} warm-up; peak {peak_text}"
    )
    print(f"GPU suite: {name}; {setup}; budget {args.budget_s:.0f} s", flush=True)
    cases = make_cases(args.dry, args.models, args.systems, args.batch_scale)
    print(HEADER + "\n" + RULE, flush=True)

    def config(case: Case) -> Any:
        stage = case.system[-1] if case.system.startswith("zero") else "1"
        over = [
            f"deepspeed.zero_stage={stage}",
            f"deepspeed.precision={precision}",
            "trainer.grad_accum=0",
            "optimizer.name=adamw",
            "optimizer.grad_clip=1.0",  # the same clipping on every side (t5-base's recipe has none)
            "model.activation_checkpointing=false",  # model FLOPs: no recomputation
            f"model.vocab_size={case.vocab}",
        ]
        if args.dry:
            over += DRY_MODEL + (["model.d_kv=32"] if case.model.startswith("t5") else [])
        cfg = load_config(ROOT / "configs" / case.recipe, over)
        cfg.trainer.micro_batch_size = cfg.trainer.global_batch_size = case.batch
        cfg.trainer.max_steps = 10**6
        cfg.model.max_position_embeddings = max(cfg.model.max_position_embeddings, case.seq)
        return cfg

    def run(case: Case) -> None:
        cfg = config(case)
        B, S = case.batch, case.seq
        flops = B * S * train_flops_per_token(cfg.model, S, case.target, 0.15)
        base = 0
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        if case.system.startswith("zero"):
            seconds, _ = ts.time_cloze(cfg, B, S, timing)
        elif case.system == "torch":
            seconds = ts.time_torch(cfg, B, S, device, timing)
        else:
            seconds = time_transformers(cfg, B, S, device, timing, ts)
        case.tokens_s = B * S / seconds
        case.tflops = flops / seconds / 1e12
        case.mfu = flops / seconds / peak if peak else None
        case.peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30 if on_gpu else None

    size: dict[str, int] = {}
    for c in cases:
        cfg = config(c)
        size[c.model] = param_count(cfg.model)
        c.target = ts.target_len(cfg, c.seq) if cfg.model.is_seq2seq else 0
    base_size = min(size.values()) if size else 1

    def guess(case: Case, prev: Case | None) -> float:
        if prev is not None and prev.wall_s:  # the same system's last case, scaled by parameters
            return prev.wall_s * size[case.model] / size[prev.model]
        return FIRST_GUESS_S[case.system] * size[case.model] / base_size if on_gpu else 0.0

    def run_and_clean(case: Case) -> None:
        try:
            run(case)
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()

    def show(case: Case) -> None:
        print(row(case, precision, cases), flush=True)

    run_cases(cases, run_and_clean, t0 + args.budget_s, args.grace_s, guess, show)
    lines = [f"### GPU suite: {name}", "", f"{setup}; {time.time() - t0:.0f} s in all", "", HEADER, RULE]
    text = "\n".join([*lines, *(row(case, precision, cases) for case in cases)]) + "\n"
    print("\n" + text, flush=True)
    if args.out:
        args.out.write_text(text)
    failed = [c for c in cases if c.note.startswith("failed")]
    return 1 if failed else 0


def time_transformers(cfg: Any, B: int, T: int, device: Any, timing: argparse.Namespace, ts: Any) -> float:
    """Seconds per step of transformers' model of the same shape (modeling.hf.hf_model: BertForMaskedLM,
    T5ForConditionalGeneration) in the bare loop's step: the same batch, bf16 autocast, clipping, fused AdamW."""
    import torch

    from modeling import build_model
    from modeling.hf import hf_model

    torch.manual_seed(0)
    model = hf_model(build_model(cfg.model), cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = ts.synthetic_batch(cfg, B, T, device)
    bf16 = cfg.deepspeed.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return float(ts.time_steps(step, timing.steps, timing.warmup))


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, the same code path (CI)")
    p.add_argument("--budget-s", type=float, default=420.0, help="for everything, installing included")
    p.add_argument(
        "--grace-s", type=float, default=30.0, help="a running case may overrun the budget by this"
    )
    p.add_argument("--wheels", type=Path, default=WHEEL_DIR, help="the carried wheels (default .wheels)")
    p.add_argument("--site", type=Path, default=SITE, help="where to install them (put on PYTHONPATH)")
    p.add_argument("--models", nargs="*", choices=sorted({s[0] for s in SHAPES}), help="default: all")
    p.add_argument("--systems", nargs="*", choices=SYSTEMS, help="default: all")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16")
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiply the GPU micro-batches")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 20 on GPU, 2 dry)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5 on GPU, 1 dry)")
    p.add_argument(
        "--peak-tflops", type=float, default=0.0, help="peak of the device, for MFU (default: known)"
    )
    p.add_argument("--out", type=Path, help="also write the final table (markdown) to this file")
    p.add_argument(
        "--check-wheels", type=Path, metavar="DIR", help="check DIR as the carried wheels, then exit"
    )
    p.add_argument(
        "--build-wheels", type=Path, metavar="DIR", help="build the carried wheels into DIR (make wheels)"
    )
    args = p.parse_args(argv)
    if args.build_wheels:
        return build_wheels(args.build_wheels)
    if args.check_wheels:
        problems = check_wheels(args.check_wheels)
        for w in read_wheels(args.check_wheels) if args.check_wheels.is_dir() else []:
            print(f"  {w.path.name}")
        print(
            "\n".join(problems)
            or f"{args.check_wheels}: complete ({folder_size(args.check_wheels) / 2**20:.1f} MiB)"
        )
        return 1 if problems else 0
    t0 = float(os.environ.setdefault(T0_ENV, str(time.time())))
    if args.dry and args.wheels.is_dir():
        problems = check_wheels(args.wheels)
        print(f"carried wheels {args.wheels}: " + ("; ".join(problems) or "complete"), flush=True)
    ensure_installed(args.wheels, args.site)
    sys.path.insert(0, str(ROOT))
    return measure(args, t0)


if __name__ == "__main__":
    sys.exit(main())
