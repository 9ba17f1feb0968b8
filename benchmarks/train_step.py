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
import gc
import os
import sys
import time
from pathlib import Path

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


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
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
    args = p.parse_args()
    on_gpu = torch.cuda.is_available()
    args.steps = args.steps or (20 if on_gpu else 3)
    args.warmup = args.warmup or (5 if on_gpu else 1)
    paths = args.configs or sorted(str(f) for f in (ROOT / "configs").glob("*.yaml"))
    if args.quick:
        paths = [f for f in paths if Path(f).name.startswith("tiny-")]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    init_distributed(D.discover(), "", 30)
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
