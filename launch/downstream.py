"""`cloze finetune` and `cloze evaluate`: load a checkpoint (a run directory or a transformers export), fine-tune
and score it on downstream tasks (trainer/finetune.py), write the figures where a user looks for them.

    cloze finetune CHECKPOINT --task TASK [--seeds 3]      -> OUT/results.json + OUT/tensorboard
    cloze evaluate RUN_DIR --tasks T1 T2 [--every-checkpoint]
        -> RUN_DIR/downstream/<tag>/<task>/results.json, and downstream/<task>/<metric> scalars in
           RUN_DIR/tensorboard at each checkpoint's step (next to the training loss)
    cloze evaluate --compare RUN_A RUN_B [--out chart.png]  -> a table + a PNG chart

A run directory's checkpoint goes through the same verification and consolidation as `cloze export`
(trainer/engine.py `verify_checkpoint`, `consolidated_state_dict`); its tokenizer is the run's own copy
(launch/export.py `find_tokenizer`). An export directory is read with modeling/hf.py `load_hf` and its `spiece.model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from data_pipeline.hf_tokenizer import read_meta
from data_pipeline.tasks import LOWER_IS_BETTER, Task, load_task
from data_pipeline.tokenizer import SpecialIds, describe
from modeling import build_model
from modeling.hf import ExportError, load_hf
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, RunConfig, config_from_dict
from trainer.engine import consolidated_state_dict, verify_checkpoint
from trainer.finetune import Backbone, FinetuneError, Recipe, TaskTokenizer, finetune, framing_of

from .export import find_tokenizer

DOWNSTREAM_DIR = "downstream"


def _run_config(run: Path) -> RunConfig:
    resolved = run / "config.yaml"
    return config_from_dict(yaml.safe_load(resolved.read_text()), source=str(resolved))


def load_run(
    run_dir: str | Path, tag: str = "", trusted: bool = False, random_init: bool = False
) -> Backbone:
    """The model of a run's checkpoint `tag` (default: the one `latest` names), verified before unpickling, with
    the run's tokenizer. `random_init`: the same architecture freshly initialised (seed 0), the baseline a
    pretrained checkpoint must beat."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() and (run.parent.parent / "config.yaml").is_file():
        run, tag = run.parent.parent, tag or run.name  # RUN_DIR/checkpoints/<tag>
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run / 'config.yaml'} does not exist: {run} is not a cloze run directory")
    cfg = _run_config(run)
    rt = find_tokenizer(run, cfg)
    tok = TaskTokenizer(rt.model, rt.framing, rt.special, rt.sentinel_ids)
    root = run / "checkpoints"
    tag = tag or ckpt.find_resume(root) or ""
    if not tag:
        raise ckpt.CheckpointError(f"{root} holds no complete checkpoint to fine-tune")
    if not (root / tag / ckpt.COMPLETE).is_file():
        raise ckpt.CheckpointError(f"{root / tag} is not a complete checkpoint (no {ckpt.COMPLETE} marker)")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if random_init:
        return Backbone(
            model, cfg.model, tok, f"{run} (random init, architecture of {tag})", ckpt.step_of(tag)
        )
    verify_checkpoint(root / tag, trusted)
    state = consolidated_state_dict(root, tag, cfg.deepspeed.zero_stage)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "final_logits_bias"]
    if missing or unexpected:
        raise ckpt.CheckpointError(
            f"{root / tag} does not match model {cfg.model.family}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return Backbone(model, cfg.model, tok, f"{run}:{tag}", ckpt.step_of(tag))


def load_export(path: str | Path, random_init: bool = False) -> Backbone:
    """A transformers directory written by `cloze export` (or any import modeling/hf.py supports) with its
    `spiece.model`; the framing is the family's."""
    d = Path(path)
    model, cfg, _ = load_hf(d)
    spm_file = d / "spiece.model"
    if not spm_file.is_file():
        raise FinetuneError(
            f"{spm_file} does not exist: the export has no sentencepiece model to encode task text with; "
            "export with `cloze export RUN_DIR --out DIR` (which writes the tokenizer)"
        )
    meta = read_meta(spm_file)
    info = describe(spm_file)
    special = SpecialIds(**meta["special_tokens"]) if "special_tokens" in meta else info.special_tokens
    tok = TaskTokenizer(spm_file, framing_of(cfg.family), special, list(info.sentinel_ids))
    if random_init:
        torch.manual_seed(0)
        model = build_model(cfg)
    return Backbone(model, cfg, tok, str(d), None)


def load_checkpoint(
    path: str | Path, tag: str = "", trusted: bool = False, random_init: bool = False
) -> Backbone:
    p = Path(path)
    if (p / "config.json").is_file() and not (p / "config.yaml").is_file():
        return load_export(p, random_init)
    if (p / "config.yaml").is_file() or (p.parent.parent / "config.yaml").is_file():
        return load_run(p, tag, trusted, random_init)
    raise ExportError(
        f"{p} is neither a cloze run directory (config.yaml + checkpoints/) nor a transformers export (config.json)"
    )


def run_finetune(
    checkpoint: str,
    tasks: list[str],
    out: str | Path,
    recipe_overrides: dict[str, Any],
    tag: str = "",
    trusted: bool = False,
    random_init: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """`cloze finetune`: every task is loaded and checked before the model is, and before any training."""
    loaded = [load_task(t) for t in tasks]
    backbone = load_checkpoint(checkpoint, tag, trusted, random_init)
    results = {}
    for task in loaded:
        recipe = _recipe(task, recipe_overrides)
        target = Path(out) if len(loaded) == 1 else Path(out) / task.spec.name
        results[task.spec.name] = finetune(backbone, task, recipe, target, log)
        log(f"results: {target / 'results.json'}")
    return results


def _recipe(task: Task, overrides: dict[str, Any]) -> Recipe:
    base = Recipe.default(task.spec.type)
    values = {k: v for k, v in overrides.items() if v is not None}
    if task.spec.type in ("pseudo_perplexity", "seq2seq_loss"):
        values = {k: v for k, v in values.items() if k == "max_len"}
    fields = {**base.__dict__, **values}
    return Recipe(**fields)


def evaluate_run(
    run_dir: str | Path,
    tasks: list[str],
    every_checkpoint: bool,
    recipe_overrides: dict[str, Any],
    trusted: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Each complete checkpoint (or the latest) fine-tuned on every task; scores written to
    RUN_DIR/downstream/<tag>/<task>/results.json and as `downstream/<task>/<metric>` TensorBoard scalars in
    RUN_DIR/tensorboard at the checkpoint's step."""
    from torch.utils.tensorboard import SummaryWriter

    run = Path(run_dir)
    loaded = [load_task(t) for t in tasks]
    root = run / "checkpoints"
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run / 'config.yaml'} does not exist: {run} is not a cloze run directory")
    if every_checkpoint:
        tags = ckpt.complete_tags(root) if root.is_dir() else []
    else:
        latest = ckpt.find_resume(root)
        tags = [latest] if latest else []
    if not tags:
        raise ckpt.CheckpointError(f"{root} holds no complete checkpoint to evaluate")
    out: dict[str, dict[str, Any]] = {}
    writer = SummaryWriter(str(run / "tensorboard"), filename_suffix=".downstream")
    try:
        for tag in tags:
            backbone = load_run(run, tag, trusted)
            step = ckpt.step_of(tag)
            for task in loaded:
                res = finetune(
                    backbone,
                    task,
                    _recipe(task, recipe_overrides),
                    run / DOWNSTREAM_DIR / tag / task.spec.name,
                    log,
                )
                out[f"{tag}/{task.spec.name}"] = res
                for metric in task.spec.metrics:
                    writer.add_scalar(f"downstream/{task.spec.name}/{metric}", res["mean"][metric], step)
                writer.flush()
                log(
                    f"{tag} (step {step}) {task.spec.name}: {task.spec.metric} {res['mean'][task.spec.metric]:.4f}"
                )
    finally:
        writer.close()
    return out


# ---- comparison ---------------------------------------------------------------------------------------------------


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The final losses (result.json) and the newest downstream figures of each task of a run."""
    run = Path(run_dir)
    summary: dict[str, Any] = {"losses": {}, "downstream": {}}
    result = run / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        ev = r.get("eval") or {}
        for key in ("loss", "mask_accuracy"):
            if key in ev:
                summary["losses"][f"eval/{key}"] = float(ev[key])
        if "loss" in r and isinstance(r["loss"], int | float):
            summary["losses"]["train/loss"] = float(r["loss"])
    base = run / DOWNSTREAM_DIR
    if base.is_dir():
        for tag in sorted((p.name for p in base.iterdir() if p.is_dir()), key=ckpt.step_of):
            for f in sorted((base / tag).glob("*/results.json")):
                r = json.loads(f.read_text())
                summary["downstream"][r["task"]] = {
                    "metric": r["metric"],
                    "mean": r["mean"][r["metric"]],
                    "std": r["std"][r["metric"]],
                    "tag": tag,
                    "lower_is_better": r["metric"] in LOWER_IS_BETTER,
                }
    if not summary["losses"] and not summary["downstream"]:
        raise ConfigError(
            f"{run} has neither result.json nor {DOWNSTREAM_DIR}/*/*/results.json: train it, then `cloze evaluate {run}`"
        )
    return summary


def compare(runs: list[str], chart: str | Path | None) -> str:
    """A table of the runs' downstream scores and final losses side by side (+ a PNG bar chart)."""
    summaries = [run_summary(r) for r in runs]
    names = [Path(r).name or str(r) for r in runs]
    if len(set(names)) != len(names):
        names = [str(r) for r in runs]
    rows: list[tuple[str, list[str]]] = []
    tasks = sorted({t for s in summaries for t in s["downstream"]})
    for t in tasks:
        metric = next(s["downstream"][t]["metric"] for s in summaries if t in s["downstream"])
        cells = []
        for s in summaries:
            d = s["downstream"].get(t)
            cells.append(f"{d['mean']:.4f} +/- {d['std']:.4f}" if d else "-")
        rows.append((f"{t} ({metric})", cells))
    for key in sorted({k for s in summaries for k in s["losses"]}):
        rows.append((key, [f"{s['losses'][key]:.4f}" if key in s["losses"] else "-" for s in summaries]))
    width = max([len(r[0]) for r in rows] + [10])
    col = max([len(n) for n in names] + [20])
    lines = [f"{'':<{width}}  " + "  ".join(f"{n:>{col}}" for n in names)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{c:>{col}}" for c in cells) for label, cells in rows]
    if chart:
        _chart(summaries, names, tasks, Path(chart))
        lines.append(f"chart: {chart}")
    return "\n".join(lines)


def _chart(summaries: list[dict[str, Any]], names: list[str], tasks: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = sorted({k for s in summaries for k in s["losses"]})
    panels = [("downstream", t) for t in tasks] + [("losses", k) for k in losses]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.2 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (kind, key) in zip(axes[0], panels):
        vals, errs = [], []
        for s in summaries:
            d = s[kind].get(key)
            if kind == "downstream":
                vals.append(d["mean"] if d else 0.0)
                errs.append(d["std"] if d else 0.0)
            else:
                vals.append(d if d is not None else 0.0)
                errs.append(0.0)
        ax.bar(range(len(names)), vals, yerr=errs, color=[f"C{i}" for i in range(len(names))], capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, fontsize=7)
        metric = next(
            (s[kind][key]["metric"] for s in summaries if kind == "downstream" and key in s[kind]), ""
        )
        ax.set_title(f"{key}\n{metric}" if metric else key, fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
