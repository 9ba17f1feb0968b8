"""Long sequences: peak memory and training-step time against sequence length (issue 16), side by side in one run:
cloze Longformer (window 256, a [CLS] global token), cloze RoBERTa (full attention, the same model otherwise) and
transformers' LongformerForMaskedLM (the same weights, exported), same batch.

    python benchmarks/long_attention.py                    # lengths 1k 2k 4k 8k, 2 layers of width 256
    python benchmarks/long_attention.py --lengths 1024 2048 --layers 1 --dry     # CI

Each (model, length) runs in its own process: forward + backward of the MLM loss (15% of positions), the step
time the median of --steps after one warm-up. Memory two ways: the activations (every tensor autograd keeps for the
backward pass, each storage counted once: what grows with the length), and the peak (the process's peak resident
set minus its resident set once the model is built, before the first step: activations, gradients, temporaries
and allocator caches; on a GPU, torch.cuda.max_memory_allocated). At a fixed window the activations grow linearly
with the length (8k / 1k ~ 8). torch's CPU SDPA is a fused (flash-style) kernel, so cloze RoBERTa keeps no n x n
matrix either: full attention shows in its time (quadratic), not in its activations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

V = 8000
MODELS = ("cloze-longformer", "cloze-roberta", "hf-longformer")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(model_name: str, T: int, args: argparse.Namespace) -> dict[str, float]:
    """In its own process: build `model_name`, time forward + backward at length T, measure the peak memory."""
    import torch
    import torch.nn.functional as F

    from modeling import build_model
    from modeling.config import ModelConfig
    from modeling.hf import hf_model

    torch.set_num_threads(args.threads)
    kw = dict(
        vocab_size=V,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        position_offset=2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        max_position_embeddings=max(args.lengths),
    )
    torch.manual_seed(0)
    if model_name == "cloze-roberta":
        model = build_model(ModelConfig(family="roberta", **kw))  # type: ignore[arg-type]
    else:
        cfg = ModelConfig(family="longformer", attention_window=[args.window], **kw)  # type: ignore[arg-type]
        model = build_model(cfg)
        if model_name == "hf-longformer":
            model = hf_model(model, cfg)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (args.batch, T), generator=g)
    labels = torch.where(torch.rand(args.batch, T, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1  # [CLS]
    ids, labels, glob = ids.to(dev), labels.to(dev), glob.to(dev)

    def step() -> None:
        if model_name == "hf-longformer":
            logits = model(input_ids=ids, global_attention_mask=glob).logits
            loss = F.cross_entropy(logits.view(-1, V), labels.view(-1))
        elif model_name == "cloze-longformer":
            out = model(ids, labels=labels, global_attention_mask=glob)
            loss = F.cross_entropy(out.logits, out.targets)
        else:
            out = model(ids, labels=labels)
            loss = F.cross_entropy(out.logits, out.targets)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(t: torch.Tensor) -> torch.Tensor:
        """Count every tensor autograd saves for the backward pass (each storage once, not the weights)."""
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            storages[st.data_ptr()] = st.nbytes()
        return t

    cuda = dev.type == "cuda"
    base = rss_mib()  # the model built, nothing run yet: the peak below is what the steps add
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        step()  # warm-up, counting the activations
    activations = sum(storages.values()) / 2**20
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base  # KiB -> MiB
    if cuda:  # the steps' peak over what the model holds
        peak = (torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()) / 2**20
    return {"seconds": statistics.median(times), "peak_mib": peak, "activation_mib": activations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--dry", action="store_true", help="one step each, all in this process (CI: the script cannot rot)"
    )
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dry:
        args.steps = 1
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for T in args.lengths:
        for name in args.models:
            if args.dry:  # in this process: the peak memory means nothing then, the rest still runs
                rows[(name, T)] = worker(name, T, args)
                continue
            cmd = [sys.executable, __file__, "--worker", name, str(T), *sys.argv[1:]]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} at {T} failed:\n{proc.stderr[-3000:]}")
            rows[(name, T)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[long_attention] {name} {T}: {rows[(name, T)]}", file=sys.stderr, flush=True)
    print(
        f"\n{args.layers} layers of width {args.hidden}, batch {args.batch}, window {args.window}, one global token; "
        f"forward + backward, median of {args.steps}\n"
    )
    head = " | ".join(f"{m} s | activations MiB | peak MiB" for m in args.models)
    print(f"| length | {head} |")
    print("|---:|" + "---:|" * (3 * len(args.models)))
    for T in args.lengths:
        cells = " | ".join(
            f"{rows[(m, T)]['seconds']:.3f} | {rows[(m, T)]['activation_mib']:.0f} | {rows[(m, T)]['peak_mib']:.0f}"
            for m in args.models
        )
        print(f"| {T:,} | {cells} |")
    lo, hi = min(args.lengths), max(args.lengths)
    print(f"\nGrowth {hi:,} / {lo:,} (x{hi // lo} the length):")
    for m in args.models:
        a, b = rows[(m, lo)], rows[(m, hi)]
        print(
            f"  {m}: activations x{b['activation_mib'] / a['activation_mib']:.2f}, peak memory "
            f"x{b['peak_mib'] / max(a['peak_mib'], 1e-9):.2f}, time x{b['seconds'] / a['seconds']:.2f}"
        )
    if "cloze-longformer" in args.models and "hf-longformer" in args.models:
        for T in args.lengths:
            r = rows[("hf-longformer", T)]["seconds"] / rows[("cloze-longformer", T)]["seconds"]
            print(f"  cloze Longformer vs transformers' at {T:,}: {r:.2f}x faster")


if __name__ == "__main__":
    main()
