"""`cloze` command line: tokenizer | shards | inspect | train | demo.

Errors a user can fix are printed as one line naming the file, key or value and what to do, with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_USAGE = 2


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.tokenizer import train_tokenizer

    info = train_tokenizer(
        args.input,
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        byte_fallback=args.byte_fallback,
    )
    print(
        f"tokenizer: {args.out}/tokenizer.model  vocab {info.vocab_size}  specials {info.special_tokens.to_dict()}  "
        f"sentinels {len(info.sentinel_ids)}"
    )
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from data_pipeline.objectives import MLMParams
    from data_pipeline.writer import write_shards

    bar = tqdm(desc="documents", unit="doc", disable=not sys.stderr.isatty())

    def progress(p: dict[str, float]) -> None:
        bar.n = int(p["documents"])
        bar.set_postfix(docs_s=f"{p['docs_per_s']:.0f}", tok_s=f"{p['tokens_per_s']:.0f}")
        bar.refresh()

    try:
        m = write_shards(
            args.input,
            args.tokenizer,
            args.out,
            objective=args.objective,
            seq_len=args.seq_len,
            seed=args.seed,
            samples_per_shard=args.samples_per_shard,
            valid_fraction=args.valid_fraction,
            mlm=MLMParams(rate=args.mask_rate),
            progress=progress,
        )
    finally:
        bar.close()
    s = m.source_stats
    print(
        f"shards: {args.out}  objective {m.objective}  seq_len {m.seq_len}  "
        + "  ".join(
            f"{k}: {v['samples']} samples / {v['tokens']} tokens / {v['shards']} shards"
            for k, v in m.splits.items()
        )
    )
    print(
        f"input: {s['documents']} documents, {s['empty_documents']} empty skipped, "
        f"{s['invalid_utf8_lines']} lines with invalid UTF-8 replaced, {s['long_lines_split']} long lines split"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipeline.inspect import inspect_dataset

    print(inspect_dataset(args.dir, n=args.n, split=args.split))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.loop import fit

    cfg = load_config(args.config, args.overrides)
    result = fit(cfg)
    print(
        f"run directory: {result.run_dir}  (stopped at step {result.step})", flush=True
    ) if result.stopped_early else None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from launch.demo import run_demo

    return run_demo(args.out, nproc=args.nproc, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloze", description="Pretrain autoencoding transformers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenizer", help="train a sentencepiece model with cloze's special tokens")
    t.add_argument(
        "--input", nargs="+", required=True, help="text files, directories, globs, or builtin:stdlib-docs"
    )
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--character-coverage", type=float, default=0.9995)
    t.add_argument(
        "--input-sentence-size", type=int, default=2_000_000, help="sentences sampled for training"
    )
    t.add_argument("--byte-fallback", action="store_true")
    t.add_argument("--out", required=True, help="directory for tokenizer.model and tokenizer.json")
    t.set_defaults(fn=_cmd_tokenizer)

    s = sub.add_parser("shards", help="tokenize, pack, corrupt and write WebDataset shards")
    s.add_argument("--input", nargs="+", required=True)
    s.add_argument("--tokenizer", required=True, help="directory holding tokenizer.model")
    s.add_argument("--objective", default="mlm")
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mask-rate", type=float, default=0.15)
    s.add_argument("--samples-per-shard", type=int, default=2048)
    s.add_argument("--valid-fraction", type=float, default=0.02, help="fraction of documents held out")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_shards)

    i = sub.add_parser("inspect", help="decode samples of a dataset to text")
    i.add_argument("dir")
    i.add_argument("--n", type=int, default=3)
    i.add_argument("--split", default="train")
    i.set_defaults(fn=_cmd_inspect)

    tr = sub.add_parser("train", help="pretrain from a YAML config (+ key=value overrides)")
    tr.add_argument("config")
    tr.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. optimizer.lr=3e-4 trainer.max_steps=100"
    )
    tr.set_defaults(fn=_cmd_train)

    d = sub.add_parser(
        "demo", help="tokenizer -> shards -> 2-process ZeRO-2 pretraining on the built-in corpus"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--nproc", type=int, default=2)
    d.add_argument("--steps", type=int, default=0, help="override trainer.max_steps (0 = the config's)")
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from data_pipeline.sources import InputError
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.distributed import DistributedError

    try:
        return int(args.fn(args))
    except (InputError, ConfigError, CheckpointError, DistributedError) as e:
        print(f"cloze {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
