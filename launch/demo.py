"""`make demo` / `cloze demo`: the main job end to end on the built-in corpus.

tokenizer -> shards -> `torchrun --nproc_per_node 2 cloze train configs/demo.yaml` (DeepSpeed ZeRO-2, gloo, CPU),
then the held-out MLM accuracy next to the most-frequent-token baseline, and where the logs and checkpoints are.
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

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


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


def run_demo(out: str, nproc: int = 2, steps: int = 0) -> int:
    root = Path(out)
    tok_dir, shard_dir, run_dir = root / "tokenizer", root / "shards", root / "run"
    t0 = time.perf_counter()
    if not (tok_dir / MODEL_FILE).exists():
        info = train_tokenizer(["builtin:stdlib-docs"], tok_dir, vocab_size=4000)
        print(
            f"[demo] tokenizer: {tok_dir} (vocab {info.vocab_size})  {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    if not (shard_dir / "manifest.json").exists():
        # Clean sequences, masked anew every epoch by the loader (configs/demo.yaml: data.objective: mlm).
        opts = ShardOptions(objective="tokens", seq_len=128, valid_fraction=0.05, docs_per_block=1024)
        m = write_shards(["builtin:stdlib-docs"], tok_dir, shard_dir, opts, workers=2)
        assert m is not None  # one slice: merged at once
        print(
            f"[demo] shards: {shard_dir}  train {m.splits['train']}  valid {m.splits['valid']}  "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    overrides = [f"data.path={shard_dir}", f"run_dir={run_dir}"]
    if steps:
        overrides.append(f"trainer.max_steps={steps}")
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    cmd = torchrun_command(nproc, ["train", str(CONFIG), *overrides])
    print("[demo] " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        print(f"[demo] training failed with exit code {rc}", file=sys.stderr)
        return rc
    result = json.loads((run_dir / "result.json").read_text())
    ev = result["eval"]
    print()
    print(
        f"[demo] done in {time.perf_counter() - t0:.0f}s, {result['step']} steps of ZeRO-2 on {nproc} CPU processes"
    )
    print(
        f"[demo] held-out MLM accuracy           {ev['mlm_accuracy']:.4f}  (loss {ev['loss']:.3f}, "
        f"{int(ev['masked_tokens'])} masked tokens)"
    )
    print(f"[demo] most-frequent-token baseline   {ev['baseline_accuracy']:.4f}")
    print(f"[demo] TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    print(
        f"[demo] checkpoints: {run_dir / 'checkpoints'}  (latest: "
        f"{(run_dir / 'checkpoints' / 'latest').read_text().strip()})"
    )
    return 0
