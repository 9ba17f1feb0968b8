"""What the loop reports, on rank 0: TensorBoard scalars and a one-line console log; and the hook points a plugin
(`cloze train --plugin MODULE[:ATTR]`, docs/training.md "Plugins") can act at."""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.tensorboard import SummaryWriter

if TYPE_CHECKING:
    import torch


class Callback:
    """Hook points of the training loop; every method does nothing unless overridden. The loop's own callbacks
    (TensorBoard, console, progress) run on rank 0; a plugin's run on every rank. `step` is 1-based: the optimizer
    step being trained (on_step_begin, on_loss), just finished (on_step, on_eval) or saved (on_checkpoint*)."""

    def on_step_begin(self, step: int, rank: int) -> None:
        """Before `step` reads its first micro-batch."""

    def on_loss(self, step: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        """Each micro-batch's loss before backward; the loss returned is the one back-propagated and checked for
        NaN/Inf."""
        return loss

    def on_checkpoint_written(self, step: int, rank: int, tmp_dir: Path) -> None:
        """This rank's files of the checkpoint of `step` are written and fsynced in `tmp_dir`; nothing is committed
        yet (the barrier before the commit comes next)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, step: int, seconds: float, path: str) -> None: ...
    def close(self) -> None: ...


def overriding(callbacks: Sequence[Callback], hook: str) -> list[Callback]:
    """The callbacks that override `hook`: the loop calls a per-step hook on these alone, so a run without a plugin
    pays one loop over an empty list."""
    return [cb for cb in callbacks if getattr(type(cb), hook) is not getattr(Callback, hook)]


PLUGIN_ATTR = "callbacks"
"""What `--plugin MODULE` calls when no `:ATTR` is given: MODULE.callbacks()."""


def load_plugins(specs: Sequence[str]) -> list[Callback]:
    """Import each `MODULE[:ATTR]` given by `--plugin` and call MODULE.ATTR() (default ATTR: `callbacks`), which
    returns a Callback or a list of them (possibly empty). Plugins come only from the command line: never from a
    config, a run directory or a checkpoint. A module that is not there, or has no callable ATTR, or one that gives
    something other than callbacks, is an error naming it; an error raised inside the plugin's own code keeps its
    traceback."""
    from .config import ConfigError

    out: list[Callback] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        attr = attr or PLUGIN_ATTR
        hint = "(--plugin MODULE[:ATTR]; MODULE.ATTR() returns trainer.callbacks.Callback objects)"
        if not module_name or module_name.startswith("."):
            raise ConfigError(f"--plugin {spec!r}: name a module by its absolute dotted name {hint}")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            parents = module_name.split(".")
            if e.name not in {".".join(parents[: i + 1]) for i in range(len(parents))}:
                raise  # the plugin itself imports something missing: its own traceback says what
            raise ConfigError(
                f"--plugin {spec}: no module named {e.name!r}; give a module importable from the working directory "
                f"or PYTHONPATH {hint}"
            ) from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"--plugin {spec}: module {module_name!r} has no callable {attr!r} {hint}")
        made = factory()
        made = list(made) if isinstance(made, list | tuple) else [made]
        bad = [repr(cb) for cb in made if not isinstance(cb, Callback)]
        if bad:
            raise ConfigError(
                f"--plugin {spec}: {module_name}.{attr}() returned {', '.join(bad)}, not Callback objects {hint}"
            )
        out.extend(made)
    return out


class TensorBoardCallback(Callback):
    """Scalars under train/*, eval/*, checkpoint/* in <run_dir>/tensorboard."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if not math.isnan(v):
                self.writer.add_scalar(f"train/{k}", v, step)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"eval/{k}", v, step)
        self.writer.flush()

    def on_checkpoint(self, step: int, seconds: float, path: str) -> None:
        self.writer.add_scalar("checkpoint/save_seconds", seconds, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class ProgressCallback(Callback):
    """A tqdm progress bar over the optimizer steps (logging.progress_bar)."""

    def __init__(self, max_steps: int, start: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=max_steps, initial=start, unit="step", dynamic_ncols=True)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


KIND_LABELS = {"mask": "[MASK]", "random": "random", "kept": "unchanged"}
"""Eval metric prefixes (trainer/losses.py `position_kind_sums`) and how the console names them."""
KIND_BASELINES = {
    "mask": "most frequent token",
    "random": "most frequent token",
    "kept": "copy the input",
}


def eval_lines(step: int, metrics: dict[str, float]) -> list[str]:
    """The console's evaluation report: the loss, then accuracy at each kind of MLM target position next to its
    trivial baseline (the same figures TensorBoard gets under eval/), then the total as BERT defines it."""
    seen = int(metrics.get("eval_samples", 0))
    split = int(metrics.get("eval_split_samples", 0))
    scope = ""
    if split:
        scope = (
            f"  (the whole held-out split, {split} samples)"
            if seen == split
            else f"  ({seen} of {split} held-out samples: trainer.eval_batches)"
        )
    lines = [f"eval @ {step}: loss {metrics['loss']:.4f}{scope}"]
    if "mask_accuracy" in metrics:
        for kind, label in KIND_LABELS.items():
            base = metrics.get(f"{kind}_baseline_accuracy")
            versus = f"  baseline {base:.4f} ({KIND_BASELINES[kind]})" if base is not None else ""
            loss = metrics.get(f"{kind}_loss")
            lines.append(
                f"  {label:<10} accuracy {metrics[f'{kind}_accuracy']:.4f}{versus}"
                + (f"  loss {loss:.4f}" if loss is not None else "")
                + f"  {int(metrics[f'{kind}_tokens']):,} positions"
            )
        base = metrics.get("baseline_accuracy")
        versus = (
            f"  baseline {base:.4f} (copy the input; most frequent token at [MASK])"
            if base is not None
            else ""
        )
        lines.append(
            f"  {'total':<10} accuracy {metrics['mlm_accuracy']:.4f}{versus}  {int(metrics['masked_tokens']):,} positions"
        )
        rest = {
            k: v
            for k, v in metrics.items()
            if k.endswith("_accuracy")
            and k != "mlm_accuracy"
            and not k.startswith(("baseline", *KIND_LABELS))
            and "/" not in k
        }
    else:
        rest = {k: v for k, v in metrics.items() if k.endswith("_accuracy") and "/" not in k}
    if rest:
        lines.append("  " + "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in rest.items()))
    # a mixture: each dataset's own figures (its accuracy next to its own baseline)
    for name in [k[: -len("/loss")] for k in metrics if k.endswith("/loss")]:
        acc = [k for k in ("mlm_accuracy", "seq2seq_accuracy") if f"{name}/{k}" in metrics]
        part = f"  {name}: loss {metrics[f'{name}/loss']:.4f}"
        if acc:
            part += f"  accuracy {metrics[f'{name}/{acc[0]}']:.4f}"
        if f"{name}/baseline_accuracy" in metrics:
            part += f"  baseline {metrics[f'{name}/baseline_accuracy']:.4f}"
        lines.append(part)
    return lines


class ConsoleCallback(Callback):
    def __init__(self, every: int, max_steps: int) -> None:
        self.every = every
        self.max_steps = max_steps
        self.t0 = time.perf_counter()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0 or step == self.max_steps:
            # Training batches carry no baseline (it is measured in evaluation); of the position kinds only
            # [MASK], the one that shows learning.
            accs = "  ".join(
                f"{'[MASK]' if k == 'mask_accuracy' else k.removesuffix('_accuracy')} {v:.3f}"
                for k, v in metrics.items()
                if k.endswith("_accuracy")
                and "baseline" not in k
                and k not in ("random_accuracy", "kept_accuracy")
            )
            print(
                f"step {step:>6}/{self.max_steps}  loss {metrics['loss']:.4f}  {accs}  "
                f"lr {metrics['lr']:.2e}  gnorm {metrics['grad_norm']:.3f}  tok/s {metrics['tokens_per_s']:,.0f}  "
                f"data {metrics['data_wait_s'] / metrics['step_time_s']:.0%}  mem {metrics['memory_gib']:.2f} GiB",
                flush=True,
            )

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        print("\n".join(eval_lines(step, metrics)), flush=True)

    def on_checkpoint(self, step: int, seconds: float, path: str) -> None:
        print(f"checkpoint @ {step}: {path} ({seconds:.1f}s)", file=sys.stdout, flush=True)
