"""Data pipeline throughput, side by side in one run.

    python benchmarks/data_pipeline.py [--workers 2] [--corpus builtin:stdlib-docs]

1. bare sentencepiece encoding (the floor of any pipeline) vs cloze's full shard writing (read, tokenize, pack,
   mask, tar, hash, index) on the same number of cores; goal: full >= 0.5x bare;
2. loader samples/s with 1 and 2 DataLoader workers;
3. resume latency (time to the first micro-batch) at sample 0 vs after 10^6 consumed samples; goal ratio <= 1.2;
4. a mixture of 5 datasets (data.mixture, weights 5:3:1:1:0.5; each its own reader and seeded order) vs one
   dataset: loader samples/s with 1 worker; goal >= 0.9x. The 5 sources are the same shards under 5 names, so
   the difference is the mixture's own cost (locating each sample's source, 5 readers and orders).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sentencepiece as spm  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data_pipeline.loader import StreamSource, StreamSpec, TrainStream  # noqa: E402
from data_pipeline.manifest import read_manifest  # noqa: E402
from data_pipeline.mixture import plan_mixture  # noqa: E402
from data_pipeline.sources import SourceStats, iter_documents  # noqa: E402
from data_pipeline.tokenizer import train_tokenizer  # noqa: E402
from data_pipeline.writer import ShardOptions, write_shards  # noqa: E402


def bare_encode(model: Path, docs: list[list[str]], threads: int) -> tuple[float, int]:
    sp = spm.SentencePieceProcessor(model_file=str(model))
    lines = [line for d in docs for line in d]
    t0 = time.perf_counter()
    ids = sp.encode(lines, num_threads=threads)
    return time.perf_counter() - t0, sum(len(x) for x in ids)


def first_batch_latency(d: Path, start_step: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        it = iter(DataLoader(TrainStream(d, StreamSpec(256, 32, 8, 3, start_step * 256, 0)), batch_size=None))
        next(it)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loader_rate(d: Path, workers: int, batches: int = 150, mixture: int = 0) -> float:
    """Samples/s of one rank's stream; `mixture` > 0: a mixture of that many copies of `d` under their own names."""
    spec = StreamSpec(64, 32, 2, 0, 0, 0)
    if mixture:
        weights = [5.0, 3.0, 1.0, 1.0, 0.5][:mixture]
        plan = plan_mixture([(str(d), f"s{k}", w) for k, w in enumerate(weights)], 0.3, "sample")
        sources = [StreamSource(d, "train", name=n) for n in plan.names]
        stream = TrainStream(d, spec, sources=sources, mixture=plan.order(0, spec.global_batch))
    else:
        stream = TrainStream(d, spec)
    it = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    next(it)  # start-up excluded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 32 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument(
        "--corpus", default="", help="a text corpus (default: the stdlib docstrings written out 5 times)"
    )
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cloze-bench-"))
    try:
        if not args.corpus:
            # Real text in a plain file, so the measure is the pipeline, not parsing Python sources with ast.
            docs = list(iter_documents(["builtin:stdlib-docs"], SourceStats()))
            args.corpus = str(tmp / "stdlib-docs-x5.txt")
            Path(args.corpus).write_text("\n\n".join("\n".join(d) for d in docs * 5) + "\n")
        train_tokenizer([args.corpus], tmp / "tok", vocab_size=8000)
        docs = list(iter_documents([args.corpus], SourceStats()))
        bare_s, bare_tokens = bare_encode(tmp / "tok" / "tokenizer.model", docs, args.workers)
        t0 = time.perf_counter()
        m = write_shards(
            [args.corpus],
            tmp / "tok",
            tmp / "ds",
            ShardOptions(seq_len=args.seq_len, docs_per_block=4096),
            workers=args.workers,
        )
        full_s = time.perf_counter() - t0
        assert m is not None
        full_tokens = sum(v["tokens"] for v in m.splits.values())
        bare_rate, full_rate = bare_tokens / bare_s, full_tokens / full_s
        n = read_manifest(tmp / "ds").splits["train"]["samples"]
        l1, l2 = loader_rate(tmp / "ds", 1), loader_rate(tmp / "ds", 2)
        single = statistics.median(loader_rate(tmp / "ds", 1) for _ in range(3))
        mixed = statistics.median(loader_rate(tmp / "ds", 1, mixture=5) for _ in range(3))
        lat0 = first_batch_latency(tmp / "ds", 0)
        lat_1m = first_batch_latency(tmp / "ds", 1_000_000 // 256)
        print(
            f"corpus {Path(args.corpus).name}: {len(docs)} documents, {bare_tokens:,} tokens; {n} train samples of "
            f"{args.seq_len}; {args.workers} cores; python {sys.version.split()[0]}"
        )
        print()
        print("| measure | cloze | peer | ratio | goal |")
        print("|---|---|---|---|---|")
        print(
            f"| tokens/s, full shard writing vs bare sentencepiece encode ({args.workers} cores) | "
            f"{full_rate:,.0f} | {bare_rate:,.0f} | {full_rate / bare_rate:.2f} | >= 0.5 |"
        )
        print(f"| loader samples/s, 2 workers vs 1 worker | {l2:,.0f} | {l1:,.0f} | {l2 / l1:.2f} | |")
        print(f"| loader samples/s per worker (1 worker) | {l1:,.0f} | | | |")
        print(
            f"| first micro-batch after resume at 10^6 samples vs at 0 (ms) | {lat_1m * 1e3:.1f} | "
            f"{lat0 * 1e3:.1f} | {lat_1m / lat0:.2f} | <= 1.2 |"
        )
        print(
            f"| loader samples/s, mixture of 5 datasets vs one dataset (1 worker, median of 3) | {mixed:,.0f} | "
            f"{single:,.0f} | {mixed / single:.2f} | >= 0.9 |"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
