"""Downstream figures of a pretrained cloze run on the built-in tasks, and the fine-tuning loop's cost.

    python benchmarks/downstream.py RUN_DIR [--tag TAG] [--seeds 3] [--tasks builtin:docstring-kind ...]
    python benchmarks/downstream.py --cost-only [--tokenizer DIR]

1. Scores: for each task, the majority class, the run's architecture from random init, and the run's checkpoint,
   each fine-tuned with the task type's standard recipe (trainer/finetune.py `Recipe.default`) over `--seeds` seeds;
   mean +/- std (sample std over seeds) and whether the pretrained checkpoint beats random init by more than both
   stds and both beat the majority class (issue 14's criterion). Printed as the table in docs/downstream.md.
2. Cost: training examples per second of cloze's fine-tuning loop (trainer/finetune.py: classification head on a
   cloze BertForPretraining) against a plain transformers loop (BertForSequenceClassification, AdamW, the same
   batches, the same shape: the `tiny` preset, post-LN, random weights: throughput does not depend on them), one
   process, in the same run. Printed as the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_pipeline.tasks import load_task  # noqa: E402
from data_pipeline.tokenizer import MODEL_FILE, describe  # noqa: E402
from launch.downstream import load_checkpoint  # noqa: E402
from modeling import build_model  # noqa: E402
from modeling.config import ModelConfig  # noqa: E402
from trainer.finetune import Backbone, Recipe, SequenceTaskRunner, TaskTokenizer, finetune  # noqa: E402

TASKS = ["builtin:docstring-package", "builtin:same-docstring", "builtin:docstring-kind"]


def scores(run: str, tag: str, tasks: list[str], seeds: int, epochs: int = 0) -> None:
    pretrained = load_checkpoint(run, tag)
    random = load_checkpoint(run, tag, random_init=True)
    print(
        f"checkpoint: {pretrained.source}  family {pretrained.config.family}  seeds {seeds}  epochs {epochs or 'default'}"
    )
    header = f"{'task':<28}{'metric':<10}{'majority':>9}{'random init':>18}{'pretrained':>18}  verdict"
    print(header)
    for name in tasks:
        task = load_task(name)
        recipe = Recipe.default(task.spec.type)
        recipe.seeds = seeds
        recipe.epochs = epochs or recipe.epochs
        m = task.spec.metric
        r = finetune(random, task, recipe)
        p = finetune(pretrained, task, recipe)
        maj = task.majority_score()[m]
        rm, rs, pm, ps = r["mean"][m], r["std"][m], p["mean"][m], p["std"][m]
        beats = pm - rm > max(rs, ps)
        above = min(rm, pm) > maj
        verdict = ("pretrained > random (> both stds)" if beats else "NOT pretrained > random") + (
            "; both > majority" if above else "; NOT both > majority"
        )
        print(
            f"{task.spec.name:<28}{m:<10}{maj:>9.4f}{rm:>10.4f} +/- {rs:.4f}{pm:>10.4f} +/- {ps:.4f}  {verdict}"
            f"  (train {len(task.train)}, dev {len(task.dev)})",
            flush=True,
        )


def _tiny_backbone(tokenizer: Path) -> Backbone:
    info = describe(tokenizer / MODEL_FILE)
    cfg = ModelConfig.from_preset(
        "tiny", vocab_size=info.vocab_size, hidden_dropout=0.1, attention_dropout=0.1
    )
    torch.manual_seed(0)
    tok = TaskTokenizer(tokenizer / MODEL_FILE, "encoder", info.special_tokens, info.sentinel_ids)
    return Backbone(build_model(cfg), cfg, tok, "tiny (random)", None)


def cost(tokenizer: Path, task_name: str, batches: int, batch_size: int) -> None:
    from transformers import BertForSequenceClassification

    from modeling.hf import hf_config

    bb = _tiny_backbone(tokenizer)
    task = load_task(task_name)
    recipe = Recipe(lr=[1e-4], epochs=1, batch_size=batch_size, seeds=1, max_len=128)
    runner = SequenceTaskRunner(bb, task, recipe)
    n = min(len(runner.train), batches * batch_size)
    runner.train, runner.train_y = runner.train[:n], runner.train_y[:n]
    runner.dev, runner.dev_y = runner.dev[:batch_size], runner.dev_y[:batch_size]  # one eval batch
    # cloze: the whole fine-tuning run (the timer covers training only; RunResult.seconds includes one eval batch)
    t0 = time.perf_counter()
    res = runner.run(1e-4, 0)
    cloze_s = time.perf_counter() - t0
    # plain transformers, the same batches in the same order
    hf_cfg = hf_config(bb.config)
    hf_cfg.num_labels = task.spec.num_outputs
    torch.manual_seed(0)
    model = BertForSequenceClassification(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    order = np.random.default_rng(0).permutation(n)
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        b = runner.enc.batch([runner.train[j] for j in idx], [runner.train_y[j] for j in idx])
        out = model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            token_type_ids=b.token_type_ids,
            labels=b.labels.long(),
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    hf_s = time.perf_counter() - t0
    print(
        f"task {task.spec.name}: {n} training examples, batch {batch_size}, threads {torch.get_num_threads()}"
    )
    print(f"{'loop':<44}{'examples/s':>12}")
    print(f"{'cloze finetune (tiny BERT + head)':<44}{res.train_examples_seen / cloze_s:>12.1f}")
    print(f"{'transformers BertForSequenceClassification':<44}{n / hf_s:>12.1f}")
    print(f"ratio cloze / transformers: {(res.train_examples_seen / cloze_s) / (n / hf_s):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run", nargs="?", help="a cloze run directory (or export) pretrained on builtin:stdlib-docs"
    )
    ap.add_argument("--tag", default="")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--epochs", type=int, default=0, help="override the recipe's epochs (0: the standard recipe)"
    )
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--tokenizer", default="", help="--cost-only: a tokenizer directory (default: the run's)")
    ap.add_argument("--cost-task", default="builtin:docstring-kind")
    ap.add_argument("--cost-batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if not args.cost_only:
        if not args.run:
            ap.error("give RUN_DIR (or --cost-only)")
        scores(args.run, args.tag, args.tasks, args.seeds, args.epochs)
    tok = Path(args.tokenizer) if args.tokenizer else (Path(args.run) / "tokenizer" if args.run else None)
    if tok is None:
        ap.error("--cost-only needs --tokenizer DIR (or a RUN_DIR)")
    cost(tok, args.cost_task, args.cost_batches, args.batch_size)


if __name__ == "__main__":
    main()
