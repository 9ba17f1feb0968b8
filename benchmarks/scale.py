"""What grows with ranks, shards and samples, measured without a cluster (issue 19; docs/scaling.md).

    python benchmarks/scale.py                 # full: 10^3-10^5 shards, world sizes 8-1,024, a 2-rank checkpoint
    python benchmarks/scale.py --dry           # small sizes, for CI (tests/test_scale.py): the script cannot rot

Data (one process): one real shard + index written by cloze's writer from the built-in corpus, then datasets of N
shards whose files are hard links to it (distinct paths, one inode: the page cache holds one copy, so the figures
are the loader's own cost, not the disk's) with a manifest of N entries. Per N it measures:
  - manifest: bytes on disk, `read_manifest` and the dataset fingerprint;
  - ranks' views: every rank's first micro-batch (StreamSpec -> global indices -> epoch order -> shard, sample) for
    each world size, all ranks computed in this one process; the time per rank;
  - loader start-up: TrainStream construction and the first batch of rank 0 of 8, from sample 0 and from sample
    10^9 (a resume after 10^9 consumed samples; the ratio must stay <= 1.2: the data position is O(1));
  - loader memory: resident set and open files while one reader touches every shard once in epoch order, the
    bounded reader (ShardReader.OPEN_SHARDS) next to an unbounded one (the reader before issue 19);
  - `cloze verify` (data_pipeline.inspect.verify_dataset), which reads every shard.
Checkpoint (2 ranks under torchrun, real DeepSpeed ZeRO-2 files): per rank, DeepSpeed's own save against cloze's
save (which adds the fsync, the hashing, the commit) and the resume verification with rank 0 checking every file
(before issue 19) against each rank checking its share; the sha256 throughput measured here extrapolates both to
a 176 GB checkpoint (an 11B model with Adam under ZeRO-3) on 1,024 ranks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402

from data_pipeline.loader import EpochOrder, ShardReader, StreamSpec, TrainStream, micro_batch_indices  # noqa: E402
from data_pipeline.manifest import MANIFEST, read_manifest  # noqa: E402

RESUME_AT = 10**9
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def base_dataset(work: Path) -> Path:
    """One real dataset from cloze's tokenizer and writer; its first train shard is the one every simulated shard
    links to."""
    from data_pipeline.tokenizer import train_tokenizer
    from data_pipeline.writer import ShardOptions, write_shards

    tok, out = work / "tokenizer", work / "base"
    if not (out / MANIFEST).exists():
        train_tokenizer(["builtin:stdlib-docs"], tok, vocab_size=500)
        opts = ShardOptions(objective="tokens", seq_len=32, valid_fraction=0.0, docs_per_block=16)
        write_shards(["builtin:stdlib-docs"], tok, out, opts, workers=1)
    return out


LINKS_PER_INODE = 30_000
"""Under ext4's limit of 65,000 links per inode (the datasets of several sizes link to the same sources)."""


def link_source(f: Path, k: int) -> Path:
    """The k-th copy of `f` to hard-link to (copy 0 is `f` itself)."""
    if k == 0:
        return f
    copy = f.with_name(f"{f.name}.copy{k}")
    if not copy.exists():
        shutil.copy2(f, copy)
    return copy


def simulated(base: Path, work: Path, n: int) -> Path:
    """A dataset of `n` train shards, each a hard link to (a copy of) the base's first train shard and its index."""
    d = work / f"shards-{n}"
    if (d / MANIFEST).exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    raw = json.loads((base / MANIFEST).read_text())
    entry = next(s for s in raw["shards"] if s["split"] == "train")
    shards = []
    for i in range(n):
        name = f"train-{i:06d}.tar"
        for src, dst in ((entry["name"], name), (entry["index"], name + ".idx")):
            if not (d / dst).exists():
                os.link(link_source(base / src, i // LINKS_PER_INODE), d / dst)
        shards.append({**entry, "name": name, "index": name + ".idx"})
    raw["shards"] = shards
    listed = {x["name"] for x in raw["shards"]} | {x["index"] for x in raw["shards"]}
    for f in base.iterdir():  # the tokenizer and whatever else the dataset carries beside its shards
        if (
            f.is_file()
            and f.name != MANIFEST
            and f.name not in listed
            and not f.name.startswith(("train-", "valid-"))
        ):
            shutil.copy2(f, d / f.name)
    raw["splits"] = {"train": {"shards": n, "samples": n * entry["samples"], "tokens": n * entry["tokens"]}}
    (d / MANIFEST).write_text(json.dumps(raw))
    return d


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    """Best of `repeat` wall times (s) of fn(), and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def views(d: Path, world: int) -> float:
    """Seconds per rank to compute every rank's first micro-batch location (global batch 8 per rank)."""
    manifest = read_manifest(d)
    counts = np.asarray([s.samples for s in manifest.shards_of("train")], dtype=np.int64)
    total = int(counts.sum())

    def all_ranks() -> None:
        orders: dict[int, EpochOrder] = {}
        for r in range(world):
            spec = StreamSpec(global_batch=8 * world, micro_batch=8, world_size=world, rank=r, seed=1)
            for index in micro_batch_indices(spec, 0):
                epoch, position = divmod(int(index), total)
                if epoch not in orders:
                    orders[epoch] = EpochOrder(counts, 1, epoch)
                orders[epoch].locate(position)

    t, _ = timed(all_ranks, repeat=1)
    return t / world


def first_batch(d: Path, start: int) -> float:
    """Seconds from nothing to rank 0 of 8's first batch, starting at global sample `start`."""

    def run() -> None:
        spec = StreamSpec(global_batch=64, micro_batch=8, world_size=8, rank=0, start_sample=start, seed=1)
        next(iter(TrainStream(d, spec, objective="mlm")))

    t, _ = timed(run, repeat=3)
    return t


def reader_memory(d: Path, bounded: bool) -> tuple[list[float], list[int]]:
    """Resident MiB and open files at 0, 25, 50, 75, 100% of one pass over every shard in epoch order."""
    gc.collect()
    manifest = read_manifest(d)
    reader = ShardReader(d, manifest, "train")
    if not bounded:
        reader.OPEN_SHARDS = 1 << 62  # the reader before issue 19 kept every index and file it had opened
    order = EpochOrder(reader.counts, 1, 0).shard_order
    n = len(order)
    marks = {int(n * q) for q in (0.25, 0.5, 0.75)} | {n}
    base, mem, fds = rss_mib(), [0.0], [0]
    fd0 = open_files()
    for k, shard in enumerate(order, 1):
        reader.read(int(shard), 0)
        if k in marks:
            mem.append(rss_mib() - base)
            fds.append(open_files() - fd0)
    reader.close()
    del reader
    gc.collect()
    return mem, fds


def data_table(args: argparse.Namespace, work: Path) -> None:
    from data_pipeline.inspect import verify_dataset

    base = base_dataset(work)
    samples = read_manifest(base).shards_of("train")[0].samples
    print(
        f"\n### Data: simulated datasets (every shard a hard link to one real shard of {samples} samples)\n"
    )
    print(
        "| shards | manifest MiB | read_manifest s | fingerprint s | start-up + first batch s (sample 0) | "
        f"same from sample 10^{len(str(RESUME_AT)) - 1} | ratio | cloze verify s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    mem_rows, view_rows = [], []
    for n in args.shards:
        d = simulated(base, work, n)
        mib = (d / MANIFEST).stat().st_size / 2**20
        t_read, m = timed(lambda d=d: read_manifest(d))
        t_fp, _ = timed(m.fingerprint)
        t0, t9 = first_batch(d, 0), first_batch(d, RESUME_AT)
        t_verify, problems = timed(lambda d=d: verify_dataset(d), repeat=1)
        assert not problems, problems[:3]
        print(
            f"| {n:,} | {mib:.1f} | {t_read:.3f} | {t_fp:.3f} | {t0:.3f} | {t9:.3f} | {t9 / t0:.2f} | "
            f"{t_verify:.1f} |",
            flush=True,
        )
        if n == args.memory_shards:
            mem_rows = [("bounded (OPEN_SHARDS=8)", *reader_memory(d, True))]
            mem_rows.append(("unbounded (before)", *reader_memory(d, False)))
        view_rows.append((n, [views(d, w) for w in args.worlds]))
    print(
        "\n### Ranks' views: ms per rank to place its first micro-batch, every rank computed in one process\n"
    )
    print("| shards | " + " | ".join(f"world {w:,}" for w in args.worlds) + " |")
    print("|---:|" + "---:|" * len(args.worlds))
    for n, per in view_rows:
        print(f"| {n:,} | " + " | ".join(f"{1e3 * t:.2f}" for t in per) + " |")
    if mem_rows:
        print(
            f"\n### Loader memory: one reader touching each of {args.memory_shards:,} shards once (epoch order); "
            "growth in resident MiB / open files at 0-25-50-75-100% of the pass\n"
        )
        print("| reader | resident MiB | open files |")
        print("|---|---|---|")
        for name, mem, fds in mem_rows:
            print(f"| {name} | {' / '.join(f'{x:.1f}' for x in mem)} | {' / '.join(map(str, fds))} |")


# ---- checkpoint: 2 ranks, real DeepSpeed files ---------------------------------------------------------------


def checkpoint_worker(out: Path, hidden: int, repeat: int) -> None:
    """Under torchrun: per rank, DeepSpeed's save vs cloze's save, and the resume verification both ways."""
    import torch

    from modeling import build_model
    from modeling.config import ModelConfig
    from trainer import checkpoint as ckpt
    from trainer import distributed as D
    from trainer.config import config_from_dict
    from trainer.engine import Engine, init_distributed, verify_checkpoint, verify_checkpoint_share
    from trainer.losses import task_for

    info = D.discover()
    init_distributed(info, "gloo", 10)
    mc = ModelConfig(
        vocab_size=8000, hidden_size=hidden, num_layers=4, num_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden, max_position_embeddings=64,
    )  # fmt: skip
    cfg = config_from_dict(
        {
            "deepspeed": {"zero_stage": 2, "precision": "fp32"},
            "trainer": {"global_batch_size": 2, "micro_batch_size": 1, "max_steps": 10},
        }
    )
    torch.manual_seed(0)
    engine = Engine(build_model(mc), cfg, grad_accum=1)
    ids = torch.randint(107, 8000, (1, 32))
    r = task_for(mc.family)(engine.forward, {"input_ids": ids, "labels": ids})
    engine.backward(r.loss)
    engine.step()
    expected = ckpt.expected_rank_files(info.world_size, 2, "fp32")
    root = out / "ckpt"
    rows: dict[str, list[float]] = {"deepspeed": [], "cloze": []}
    for k in range(repeat):
        D.barrier()
        t0 = time.perf_counter()
        engine.save(out / "ds-only", f"t{k}", {})
        D.barrier()  # the save is done when every rank's files are
        rows["deepspeed"].append(time.perf_counter() - t0)
        D.barrier()
        t0 = time.perf_counter()
        ckpt.save(engine, root, k + 1, {}, expected, keep_last=1, is_main=info.is_main)
        rows["cloze"].append(time.perf_counter() - t0)
    tag = root / ckpt.tag_for(repeat)
    mine = sum(tag.joinpath(n).stat().st_size for n in expected if (ckpt.owner(n) or 0) == info.rank)

    def rank0_all() -> None:  # before issue 19: rank 0 verifies every file, the others wait
        if info.is_main:
            verify_checkpoint(tag, trusted=False)
        D.barrier()

    def shared() -> None:  # now: rank 0 the layout, then every rank its share, verdicts gathered
        meta = ckpt.verify_layout(tag) if info.is_main else None
        meta = D.broadcast_object(meta)
        refused = verify_checkpoint_share(tag, meta, False, True, info.rank, info.world_size)  # type: ignore[arg-type]
        assert not any(D.all_gather_object(refused))

    for name, fn in (("verify rank 0 alone", rank0_all), ("verify shared", shared)):
        rows[name] = []
        for _ in range(repeat):
            D.barrier()
            t0 = time.perf_counter()
            fn()
            rows[name].append(time.perf_counter() - t0)
    blob = tag / expected[0]
    t0 = time.perf_counter()
    ckpt.hash_file(blob)
    mbps = blob.stat().st_size / 2**20 / (time.perf_counter() - t0)
    result = {k: min(v) for k, v in rows.items()} | {"own_mib": mine / 2**20, "sha256_mib_s": mbps}
    (out / f"rank{info.rank}.json").write_text(json.dumps(result))
    D.shutdown()


def checkpoint_run(args: argparse.Namespace, work: Path, hidden: int) -> list[dict[str, float]]:
    """Each rank's figures (checkpoint_worker) for a model of width `hidden`."""
    out = work / f"checkpoint-{hidden}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [__file__, "--worker", str(out), "--hidden", str(hidden), "--repeat", str(args.repeat)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"checkpoint worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    shutil.rmtree(out, ignore_errors=True)
    return ranks


def checkpoint_table(args: argparse.Namespace, work: Path) -> None:
    print(
        f"\n### Checkpoint: 2 ranks, ZeRO-2 fp32, 4 layers of width W, vocabulary 8000; best of {args.repeat}, "
        "seconds\n"
    )
    print(
        "| W | rank | own files MiB | DeepSpeed save | cloze save | overhead | verify: rank 0 alone | "
        "verify: shared | sha256 MiB/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mbps = []
    for hidden in args.hidden:
        for r, x in enumerate(checkpoint_run(args, work, hidden)):
            over = x["cloze"] - x["deepspeed"]
            print(
                f"| {hidden} | {r} | {x['own_mib']:.0f} | {x['deepspeed']:.2f} | {x['cloze']:.2f} | {over:+.2f} "
                f"({x['cloze'] / x['deepspeed']:.2f}x) | {x['verify rank 0 alone']:.2f} | "
                f"{x['verify shared']:.2f} | {x['sha256_mib_s']:.0f} |",
                flush=True,
            )
            mbps.append(x["sha256_mib_s"])
    rate = min(mbps)
    big, world = 176 * 1024, 1024  # MiB of ZeRO-3 state of an 11B model with Adam; ranks
    print(
        f"\nExtrapolated at {rate:.0f} MiB/s per process (sha256, page cache): hashing a 176 GB checkpoint on rank 0 "
        f"alone {big / rate / 60:.1f} min per save and again per resume; spread over {world:,} ranks "
        f"{big / world / rate:.2f} s each (plus the read from the filesystem, which also spreads)."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="small sizes (CI)")
    p.add_argument("--work", default="", help="scratch directory (default: a temporary one, deleted)")
    p.add_argument("--only", choices=["data", "checkpoint"], default="")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[],
        help="checkpoint model widths (default 256 512 1024; dry 64)",
    )
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.worker:
        checkpoint_worker(Path(args.worker), args.hidden[0], args.repeat)
        return
    args.shards = [100, 1000] if args.dry else [1000, 10_000, 100_000]
    args.memory_shards = 1000 if args.dry else 10_000
    args.worlds = [8, 64] if args.dry else [8, 64, 256, 1024]
    args.hidden = args.hidden or ([64] if args.dry else [256, 512, 1024])
    args.repeat = 1 if args.dry else args.repeat
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cloze-scale-"))
    try:
        if args.only in ("", "data"):
            data_table(args, work)
        if args.only in ("", "checkpoint"):
            checkpoint_table(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
