"""`cloze submit` and `cloze submit-shards`: render the sbatch templates next to the run (or the dataset) and submit
them. The templates in this directory are never edited per cluster: everything comes from the config's `slurm:`
section or the flags.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloze_errors import ClozeError
from trainer.config import ConfigError, RunConfig, SlurmConfig

TEMPLATES = Path(__file__).resolve().parent
_FIELD = re.compile(r"\{\{(\w+)\}\}")


class SubmitError(ClozeError, RuntimeError):
    """sbatch refused the job, or something it needs is missing; the message says what."""


def render(template: str, values: dict[str, str]) -> str:
    """Fill the {{name}} fields of launch/slurm/<template>; a field without a value is an error (a bug here)."""
    text = (TEMPLATES / template).read_text()
    missing = sorted(set(_FIELD.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{template}: no value for {', '.join(missing)}")
    return _FIELD.sub(lambda m: values[m.group(1)], text)


def _common(s: SlurmConfig, gpus: bool) -> dict[str, str]:
    """The fields every template shares: resources, environment, setup lines, container, python."""
    lines = []
    if s.partition:
        lines.append(f"--partition={s.partition}")
    if s.account:
        lines.append(f"--account={s.account}")
    if s.time:
        lines.append(f"--time={s.time}")
    if gpus and s.gpus_per_node:
        lines.append(f"--gpus-per-node={s.gpus_per_node}")
    if s.cpus_per_task:
        lines.append(f"--cpus-per-task={s.cpus_per_task}")
    lines.extend(s.sbatch_options)
    lines.append(f"--chdir={shlex.quote(str(Path.cwd()))}")
    env = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in s.env.items())
    setup = "".join(f"{line}\n" for line in s.setup)
    return {
        "job_name": s.job_name,
        "resource_lines": "".join(f"#SBATCH {opt}\n" for opt in lines),
        "env_lines": env,
        "setup_lines": setup,
        "container": f"{s.container} " if s.container else "",
        "python": shlex.quote(s.python or sys.executable),
    }


def sbatch(script: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """Submit `script`; return the job id."""
    cmd = ["sbatch", "--parsable", *options, str(script)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise SubmitError("sbatch is not on PATH: run cloze submit on a SLURM login node") from None
    if proc.returncode != 0:
        raise SubmitError(f"sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


@dataclass
class Submitted:
    job_id: str | None
    script: Path
    run_dir: Path


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path


def submit_pretrain(
    config_path: str, cfg: RunConfig, overrides: list[str], dry_run: bool, plugins: Sequence[str] = ()
) -> Submitted:
    """Render <run_dir>/slurm/pretrain.sbatch for `cfg` (loaded from `config_path` + `overrides`) and submit it.
    `plugins` (`cloze submit --plugin`) go on the job's `cloze train` command line as `--plugin` flags."""
    from trainer.components import EXIT_REQUEUE

    s = cfg.slurm
    tasks = s.tasks_per_node or s.gpus_per_node or 1
    world = s.nodes * tasks
    cfg.resolve_batch(world)  # batch arithmetic errors now, not on the nodes
    run_dir = Path(_absolute(cfg.run_dir))
    data = _absolute(cfg.data.path)
    if not data or not (Path(data) / "manifest.json").is_file():
        raise ConfigError(
            f"data.path={cfg.data.path!r} has no manifest.json; write the shards first (cloze shards or "
            "cloze submit-shards) and pass data.path=DIR"
        )
    # Paths as the nodes will see them: absolute, so the job's working directory does not matter.
    train_overrides = [o for o in overrides if not o.startswith(("run_dir=", "data.path=", "slurm."))]
    train_overrides += [f"run_dir={run_dir}", f"data.path={data}"]
    values = _common(s, gpus=True)
    values.update(
        config=shlex.quote(_absolute(config_path)),
        overrides=" ".join(
            [shlex.quote(o) for o in train_overrides] + [f"--plugin {shlex.quote(p)}" for p in plugins]
        ),
        nodes=str(s.nodes),
        tasks_per_node=str(tasks),
        signal_seconds=str(s.signal_seconds),
        max_restarts=str(s.max_restarts),
        run_dir=shlex.quote(str(run_dir)),
        requeue_code=str(EXIT_REQUEUE),
    )
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    script = run_dir / "slurm" / "pretrain.sbatch"
    script.write_text(render("pretrain.sbatch", values))
    script.chmod(0o755)
    job = None if dry_run else sbatch(script)
    return Submitted(job, script, run_dir)


def submit_evaluate(
    run_dir: Path, tasks: list[str], s: SlurmConfig, after: str | None, dry_run: bool
) -> Submitted:
    """Render <run_dir>/slurm/evaluate.sbatch (`cloze evaluate RUN_DIR --every-checkpoint --tasks ...`, one process)
    and submit it with afterok on the pretraining job `after`: one job after training scores every checkpoint the
    run kept and writes downstream/* into the run's TensorBoard at each checkpoint's step."""
    values = _common(s, gpus=False)  # fine-tuning runs in one process on the CPU (trainer/finetune.py)
    # a task directory is passed as the nodes will see it; builtin:NAME as is
    values.update(
        run_dir=shlex.quote(str(run_dir)),
        tasks=" ".join(shlex.quote(t if t.startswith("builtin:") else _absolute(t)) for t in tasks),
    )
    script = run_dir / "slurm" / "evaluate.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(render("evaluate.sbatch", values))
    script.chmod(0o755)
    if dry_run or after is None:
        return Submitted(None, script, run_dir)
    job = sbatch(script, f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes")
    return Submitted(job, script, run_dir)


def submit_shards(
    shards_args: list[str], slices: int, s: SlurmConfig, script_dir: str, dry_run: bool
) -> tuple[str | None, str | None, Path]:
    """Render the array job (one slice per task) and the merge job; submit the merge with afterok on the array.
    Returns (array job id, merge job id, script directory)."""
    if slices < 1:
        raise ConfigError(f"--slices must be >= 1, got {slices}")
    if "--out" not in shards_args or shards_args.index("--out") + 1 >= len(shards_args):
        raise ConfigError("the shards arguments need --out DIR (after `--`, as for `cloze shards`)")
    if "--slice" in shards_args or "--num-slices" in shards_args:
        raise ConfigError("leave --slice / --num-slices out: the array job sets them (use --slices N)")
    i = shards_args.index("--out") + 1
    args = list(shards_args)
    args[i] = out = _absolute(args[i])
    if "--tokenizer" in args[:-1]:  # a path the nodes must find from any working directory
        t = args.index("--tokenizer") + 1
        args[t] = _absolute(args[t])
    d = Path(script_dir or f"{out}-slurm").resolve()
    d.mkdir(parents=True, exist_ok=True)
    values = _common(s, gpus=False)
    values.update(
        slices=str(slices),
        last_slice=str(slices - 1),
        script_dir=shlex.quote(str(d)),
        merge_script=shlex.quote(str(d / "merge.sbatch")),
        shards_args=" ".join(shlex.quote(a) for a in args),
        out=shlex.quote(out),
    )
    for name in ("preprocess.sbatch", "merge.sbatch"):
        (d / name).write_text(render(name, values))
        (d / name).chmod(0o755)
    if dry_run:
        return None, None, d
    array = sbatch(d / "preprocess.sbatch")
    merge = sbatch(d / "merge.sbatch", f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes")
    return array, merge, d
