"""`make demo` / `cloze demo`: the main job end to end on the built-in corpus.

tokenizer -> shards -> `torchrun --nproc_per_node 2 cloze train demo` (configs/demo.yaml, shipped with the package:
launch/recipes.py; DeepSpeed ZeRO-2, gloo, CPU),
then held-out accuracy at each kind of MLM target position next to its trivial baseline, and whether the model
learned: accuracy at the [MASK] positions against always predicting the most frequent token (the unigram plateau
a model reaches without using context). The recipe (configs/demo.yaml, and the tokenizer and sequence length
here) is the one measured in docs/benchmarks.md ("The demo").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_pipeline.tokenizer import MODEL_FILE, train_tokenizer
from data_pipeline.writer import ShardOptions, write_shards
from launch.recipes import recipe

CORPUS = "builtin:stdlib-docs"
"""The demo's text: docstrings of the Python standard library (data_pipeline/sources.py)."""
VOCAB_SIZE = 2000
SEQ_LEN = 64
VALID_FRACTION = 0.05
LEARNED_RATIO = 2.0
"""The demo calls the model learned when its [MASK]-position accuracy is at least this multiple of the baseline."""


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "launch.cli",
        *args,
    ]


def cpu_env() -> dict[str, str]:
    """The environment of a CPU training subprocess: one thread per rank, DeepSpeed's CPU accelerator."""
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))


def report(ev: dict[str, float]) -> list[str]:
    """The demo's closing figures from a run's final evaluation (result.json `eval`)."""
    rows = [
        ("[MASK]", "mask", "most frequent token"),
        ("random", "random", "most frequent token"),
        ("unchanged", "kept", "copy the input"),
    ]
    lines = [
        f"held-out split: {int(ev.get('eval_samples', 0))} of {int(ev.get('eval_split_samples', 0))} sequences, "
        f"{int(ev['masked_tokens']):,} target positions (BERT's 80/10/10: [MASK] / random token / unchanged)",
        f"{'position':<14}{'accuracy':>9}{'baseline':>10}  trivial baseline            positions",
    ]
    for label, kind, what in rows:
        lines.append(
            f"{label:<14}{ev[f'{kind}_accuracy']:>9.4f}{ev[f'{kind}_baseline_accuracy']:>10.4f}  {what:<27} "
            f"{int(ev[f'{kind}_tokens']):>9,}"
        )
    lines.append(
        f"{'total (BERT)':<14}{ev['mlm_accuracy']:>9.4f}{ev['baseline_accuracy']:>10.4f}  "
        f"{'copy, most frequent at [MASK]':<27} {int(ev['masked_tokens']):>9,}"
    )
    lines.append(
        f"held-out loss {ev['loss']:.4f} (mean over every target position; at [MASK] positions "
        f"{ev['mask_loss']:.4f})"
    )
    acc, base = ev["mask_accuracy"], ev["mask_baseline_accuracy"]
    ratio = acc / base if base else float("inf")
    verdict = "learned" if ratio >= LEARNED_RATIO else f"NOT learned (below {LEARNED_RATIO:g}x)"
    lines.append(
        f"{verdict}: accuracy at [MASK] positions {acc:.4f} = {ratio:.1f}x the most-frequent-token baseline {base:.4f}"
    )
    return lines


def prepare_data(root: Path, tag: str = "demo") -> tuple[Path, Path]:
    """The demo's tokenizer and clean-token shards under `root` (tokenizer/, shards/), each made once."""
    tok_dir, shard_dir = root / "tokenizer", root / "shards"
    t0 = time.perf_counter()
    if not (tok_dir / MODEL_FILE).exists():
        info = train_tokenizer([CORPUS], tok_dir, vocab_size=VOCAB_SIZE)
        print(
            f"[{tag}] tokenizer: {tok_dir} (vocab {info.vocab_size})  {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    if not (shard_dir / "manifest.json").exists():
        # Clean sequences, masked anew every epoch by the loader (configs/demo.yaml: data.objective: mlm).
        opts = ShardOptions(
            objective="tokens", seq_len=SEQ_LEN, valid_fraction=VALID_FRACTION, docs_per_block=1024
        )
        m = write_shards([CORPUS], tok_dir, shard_dir, opts, workers=2)
        assert m is not None  # one slice: merged at once
        print(
            f"[{tag}] shards: {shard_dir}  train {m.splits['train']}  valid {m.splits['valid']}  "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    return tok_dir, shard_dir


def run_demo(out: str = "runs/demo", nproc: int = 2, steps: int = 0) -> int:
    root = Path(out)
    t0 = time.perf_counter()
    _, shard_dir = prepare_data(root)
    run_dir = root / "run"
    overrides = [f"data.path={shard_dir}", f"run_dir={run_dir}"]
    if steps:
        overrides.append(f"trainer.max_steps={steps}")
    cmd = torchrun_command(nproc, ["train", str(recipe("demo")), *overrides])
    print("[demo] " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=cpu_env())
    if rc != 0:
        print(f"[demo] training failed with exit code {rc}", file=sys.stderr)
        return rc
    result = json.loads((run_dir / "result.json").read_text())
    print()
    print(
        f"[demo] done in {time.perf_counter() - t0:.0f}s, {result['step']} steps of ZeRO-2 on {nproc} CPU processes"
    )
    for line in report(result["eval"]):
        print(f"[demo] {line}")
    print(f"[demo] TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    print(
        f"[demo] checkpoints: {run_dir / 'checkpoints'}  (latest: "
        f"{(run_dir / 'checkpoints' / 'latest').read_text().strip()}); "
        f"transformers: cloze export {run_dir} --out {root / 'hf'}"
    )
    return 0
