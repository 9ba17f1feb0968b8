"""`cloze` command line: tokenizer | shards | inspect | train | demo.

Errors a user can fix are printed as one line naming the file, key or value and what to do, with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloze_errors import ClozeError

EXIT_USAGE = 2

_CONFIG_HELP = "a YAML file, or the name of a shipped recipe (configs/NAME.yaml), e.g. bert-base"


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.sources import SourceOptions
    from data_pipeline.tokenizer import train_tokenizer

    info = train_tokenizer(
        args.input,
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        byte_fallback=args.byte_fallback,
        sources=SourceOptions(
            format=args.format, text_mode=args.text_mode, field=args.field, column=args.column
        ),
        progress=lambda line: print(line, flush=True),
        alpha=args.alpha,
        seed=args.seed,
    )
    print(
        f"tokenizer: {args.out}/tokenizer.model  vocab {info.vocab_size}  specials {info.special_tokens.to_dict()}  "
        f"sentinels {len(info.sentinel_ids)}"
    )
    if info.multilingual:
        langs = info.multilingual["languages"]
        print(
            f"tokenizer: {len(langs)} languages, alpha {info.multilingual['alpha']}, byte fallback "
            f"{'on' if info.multilingual['byte_fallback'] else 'off'}, character coverage "
            f"{info.multilingual['character_coverage']}; shares: "
            + ", ".join(f"{lang} {v['share']:.3f}" for lang, v in langs.items())
        )
    return 0


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    import yaml

    from data_pipeline.sources import InputError

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--opt {pair!r} is not key=value (example: --opt mask_ratio=0.3)")
        k, v = pair.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _cmd_shards(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from data_pipeline.sources import InputError, SourceOptions
    from data_pipeline.writer import ShardOptions, write_shards

    missing = [f"--{k}" for k in ("input", "tokenizer", "out") if not getattr(args, k)]
    if missing:  # not argparse-required, so that `cloze shards merge DIR` parses
        raise InputError(f"{', '.join(missing)} required (or: cloze shards merge DIR)")
    from trainer.callbacks import load_plugins

    load_plugins(args.plugin)  # registers a plugin's objectives (register_objective) before the writer asks
    options = _parse_opts(args.opt)
    if args.mask_rate is not None:
        options["rate"] = args.mask_rate
    if args.noise_density is not None:
        options["noise_density"] = args.noise_density
    if args.mean_span_length is not None:
        options["mean_noise_span_length"] = args.mean_span_length
    opts = ShardOptions(
        objective=args.objective,
        seq_len=args.seq_len,
        seed=args.seed,
        valid_fraction=args.valid_fraction,
        docs_per_block=args.docs_per_block,
        sentence_task=args.sentence_task,
        doc_boundaries=args.doc_boundaries,
        global_tokens=args.global_tokens,
        dupe_factor=args.dupe_factor,
        objective_options=options,
        sources=SourceOptions(
            format=args.format, text_mode=args.text_mode, field=args.field, column=args.column
        ),
        language=args.language,
        parallel=args.parallel,
        pair_format=args.pair_format,
        pair_keys=[k.strip() for k in args.pair_keys.split(",")],
    )
    bars: list[Any] = []  # shown once the job has run 2 s (so quick failures print only their error)
    started = time.perf_counter()

    last: dict[str, float] = {}

    def progress(p: dict[str, float]) -> None:
        last.update(p)
        if not bars:
            if time.perf_counter() - started < 2.0:
                return
            # the bar's own rate would count documents of reused blocks: the postfix has this run's rates
            fmt = "{desc}: {n_fmt} [{elapsed}{postfix}]"
            bars.append(tqdm(desc="documents", unit="doc", disable=args.quiet, bar_format=fmt))
        bars[0].n = int(p["documents"])
        post = {"docs_s": f"{p['docs_per_s']:.0f}", "tok_s": f"{p['tokens_per_s']:.0f}"}
        if p.get("reused_blocks"):
            post["reused_blocks"] = f"{p['reused_blocks']:.0f}"
        bars[0].set_postfix(post, refresh=False)
        bars[0].refresh()

    try:
        m = write_shards(
            args.input,
            args.tokenizer,
            args.out,
            opts,
            workers=args.workers,
            num_slices=args.num_slices,
            slice_index=args.slice,
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    if last.get("reused_blocks"):
        print(
            f"shards: reused {last['reused_blocks']:.0f} block(s) ({last['reused_documents']:.0f} documents) written "
            f"by an earlier run; wrote {last['written_blocks']:.0f} block(s) now"
        )
    if m is None:
        print(
            f"shards: slice {args.slice} of {args.num_slices} written to {args.out}; "
            f"run `cloze shards merge {args.out}` once every slice is done"
        )
        return 0
    _summary(args.out, m)
    return 0


def _summary(out: str, m: Any) -> None:
    s = m.source_stats
    print(
        f"shards: {out}  objective {m.objective}  seq_len {m.seq_len}  "
        + "  ".join(
            f"{k}: {v['samples']} samples / {v['tokens']} tokens / {v['shards']} shards"
            for k, v in m.splits.items()
        )
    )
    if m.packing.get("method") == "parallel":
        print(
            f"input: {s['documents']} pairs ({', '.join(m.languages)}); skipped {s['bad_json_lines']} non-JSON lines, "
            f"{s.get('bad_tsv_lines', 0)} TSV lines without 4 columns, {s.get('missing_side', 0)} without a text, "
            f"{s.get('missing_language', 0)} without a language, {s.get('same_language', 0)} in one language; "
            f"dropped {m.packing.get('dropped_pairs', 0)} pairs longer than seq_len, truncated "
            f"{m.packing.get('truncated_pairs', 0)}"
            + (f" (e.g. {s['examples'][0]})" if s.get("examples") else "")
        )
        return
    print(
        f"input: {s['documents']} documents; skipped {s['empty_documents']} empty, {s['bad_json_lines']} "
        f"non-JSON lines, {s['missing_field']} records without the text field; {s['invalid_utf8_lines']} lines "
        f"with invalid UTF-8 replaced, {s['long_lines_split']} long lines split"
    )
    for ex in s.get("examples", []):
        print(f"  skipped: {ex}")


def _cmd_merge(args: argparse.Namespace) -> int:
    from data_pipeline.writer import merge

    _summary(args.dir, merge(args.dir))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from data_pipeline.inspect import verify_dataset

    problems = verify_dataset(args.dir)
    for p in problems:
        print(f"BAD {p}")
    if problems:
        print(f"verify: {len(problems)} problem(s) in {args.dir}; rebuild the named shards", file=sys.stderr)
        return 1
    print(f"verify: {args.dir} matches its manifest (every shard's size, sha256 and sample count)")
    return 0


def _cmd_token_counts(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from data_pipeline.manifest import atomic_write
    from data_pipeline.objectives import count_tokens

    counts = count_tokens(args.dir, args.split)
    out = Path(args.out)
    buf = io.BytesIO()
    np.save(buf, counts, allow_pickle=False)
    atomic_write(out, buf.getvalue())
    print(
        f"token counts: {out}  ({int(counts.sum()):,} tokens of the {args.split} split, {int((counts > 0).sum()):,} "
        f"of {len(counts):,} ids seen); use it with data.objective=distil_mlm "
        f"data.objective_options.token_counts={out}"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipeline.inspect import format_stats, inspect_dataset

    given = {k: v for k, v in vars(args).items() if k in ("n", "split", "max_samples")}
    if args.stats:
        given.pop("n", None)
        print(format_stats(args.dir, **given))
        return 0
    given.pop("max_samples", None)
    print(inspect_dataset(args.dir, **given))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from launch.recipes import resolve_config
    from trainer.callbacks import load_plugins
    from trainer.config import load_config
    from trainer.distributed import shutdown
    from trainer.loop import EXIT_REQUEUE, fit

    plugins = load_plugins(args.plugin)  # on every rank, before anything trains; never from the config or run
    overrides = args.overrides + (["checkpoint.trusted=true"] if args.trusted else [])
    cfg = load_config(resolve_config(args.config), overrides)
    result = fit(cfg, plugins)
    shutdown()  # the process exits next: leave the process group first (DeepSpeed keeps its groups for the process)
    if result.stopped_early:
        print(f"run directory: {result.run_dir}  (stopped at step {result.step})", flush=True)
    if result.preempted:
        # Every rank leaves the save's last barrier together; exit at once rather than after seconds of interpreter
        # teardown, so that srun --kill-on-bad-exit does not terminate a rank still on its way out.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_REQUEUE)
    return 0


_SLURM_FLAGS = (
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "partition",
    "account",
    "time",
    "job_name",
    "max_restarts",
    "signal_seconds",
    "container",
    "python",
)
"""Flags of `cloze submit` that set the slurm: key of the same name."""


def _slurm_overrides(args: argparse.Namespace) -> list[str]:
    """The SLURM flags given, as slurm.* config overrides (flags win over the config's `slurm:` section)."""
    import json

    # Values go through YAML: strings are JSON-quoted so that e.g. 24:00:00 stays a string.
    out = [
        f"slurm.{key}={json.dumps(getattr(args, key))}"
        for key in _SLURM_FLAGS
        if getattr(args, key) is not None
    ]
    if args.setup:
        out.append(f"slurm.setup={json.dumps(args.setup)}")
    if args.sbatch_option:
        out.append(f"slurm.sbatch_options={json.dumps(args.sbatch_option)}")
    for item in args.env or []:
        key, _, value = item.partition("=")
        out.append(f"slurm.env.{key}={json.dumps(value)}")
    return out


def _cmd_submit(args: argparse.Namespace) -> int:
    from launch.recipes import resolve_config
    from launch.slurm.submit import submit_pretrain
    from trainer.callbacks import load_plugins
    from trainer.config import load_config

    load_plugins(args.plugin)  # a plugin that cannot be imported fails now, not on the nodes
    config = resolve_config(args.config)
    cfg = load_config(config, args.overrides + _slurm_overrides(args))
    sub = submit_pretrain(config, cfg, args.overrides, args.dry_run, args.plugin)
    print(f"sbatch script: {sub.script}")
    if sub.job_id is None:
        print("dry run: rendered, not submitted")
    else:
        print(f"submitted job {sub.job_id}")
        print(f"job log: {sub.run_dir}/slurm/job-{sub.job_id}.log  (rank logs under {sub.run_dir}/logs/)")
    if args.eval_tasks:
        from data_pipeline.tasks import load_task
        from launch.slurm.submit import submit_evaluate

        for t in args.eval_tasks:
            if not t.startswith("builtin:"):
                load_task(t)  # a bad task directory fails now, not after training
        ev = submit_evaluate(sub.run_dir, args.eval_tasks, cfg.slurm, sub.job_id, args.dry_run)
        print(f"evaluation sbatch script: {ev.script}")
        if ev.job_id is not None:
            print(f"submitted evaluation job {ev.job_id} (afterok:{sub.job_id})")
    print(f"run directory: {sub.run_dir}")
    print(f"monitor: tensorboard --logdir {sub.run_dir}/tensorboard")
    return 0


def _cmd_submit_shards(args: argparse.Namespace) -> int:
    from launch.slurm.submit import submit_shards
    from trainer.config import config_from_dict

    slurm = config_from_dict({}, _slurm_overrides(args)).slurm
    shards_args = args.shards_args[1:] if args.shards_args[:1] == ["--"] else args.shards_args
    array, merge, d = submit_shards(shards_args, args.slices, slurm, args.script_dir, args.dry_run)
    print(f"sbatch scripts: {d}/preprocess.sbatch, {d}/merge.sbatch")
    if array is None:
        print("dry run: rendered, not submitted")
    else:
        print(f"submitted array job {array} ({args.slices} slices) and merge job {merge} (afterok:{array})")
        print(f"logs: {d}/shards-{array}_*.log, {d}/merge-{merge}.log")
    return 0


def _add_slurm_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (override the config's slurm: section)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", dest="gpus_per_node", type=int)
    g.add_argument(
        "--tasks-per-node", dest="tasks_per_node", type=int, help="ranks per node (default: GPUs, or 1)"
    )
    g.add_argument("--cpus-per-task", dest="cpus_per_task", type=int)
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--time", help="time limit, e.g. 24:00:00")
    g.add_argument("--job-name", dest="job_name")
    g.add_argument("--max-restarts", dest="max_restarts", type=int)
    g.add_argument(
        "--signal-seconds", dest="signal_seconds", type=int, help="USR1 this long before the limit"
    )
    g.add_argument("--container", help="command wrapping each rank, e.g. 'apptainer exec --nv img.sif'")
    g.add_argument("--python", help="python on the nodes (default: this one)")
    g.add_argument(
        "--setup", action="append", help="a shell line run first (repeatable), e.g. 'module load cuda'"
    )
    g.add_argument("--env", action="append", help="KEY=VALUE exported in the job (repeatable)")
    g.add_argument(
        "--sbatch-option", dest="sbatch_option", action="append", help="extra sbatch option (repeatable)"
    )
    g.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="render the scripts, submit nothing"
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from launch.export import export_run

    for path in export_run(
        args.run_dir, args.out, args.tag, tokenizer=not args.no_tokenizer, trusted=args.trusted
    ):
        what = "model" if args.no_tokenizer else "model + tokenizer"
        print(f"export: {path} ({what}; transformers: from_pretrained('{path}'))")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from trainer import checkpoint as ckpt
    from trainer.engine import to_universal, verify_checkpoint

    if args.to_long:
        from launch.long import convert_to_long
        from trainer.config import ConfigError

        if not args.out:
            raise ConfigError(
                "convert --to-long needs --out DIR (where the Longformer starting point is written)"
            )
        out, cfg = convert_to_long(args.run_dir, args.out, args.max_len, args.window, args.trusted)
        print(
            f"convert: {out} (LongformerForMaskedLM, max length {cfg.max_position_embeddings}, window "
            f"{cfg.attention_window[0]}; train from it with model.init_from={out})"
        )
        return 0
    root = Path(args.run_dir) / "checkpoints"
    tag = args.tag or ckpt.find_resume(root)
    if not tag:
        raise ckpt.CheckpointError(f"{root} holds no complete checkpoint to convert")
    new = ckpt.convert_to_universal(root, tag, to_universal, lambda p: verify_checkpoint(p, args.trusted))
    print(f"convert: {root / new} (universal: resume on any number of ranks; `latest` now names it)")
    return 0


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from data_pipeline.sources import InputError

    try:
        lr = [float(x) for x in args.lr.split(",")] if args.lr else None
    except ValueError:
        raise InputError(
            f"--lr {args.lr!r}: give learning rates separated by commas, e.g. 1e-4,3e-4"
        ) from None
    return dict(
        lr=lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        max_len=args.max_len,
        seeds=args.seeds,
    )


def _cmd_finetune(args: argparse.Namespace) -> int:
    from launch.downstream import run_finetune

    out = args.out or str(Path("finetune") / Path(args.task[0]).name.replace("builtin:", ""))
    run_finetune(
        args.checkpoint,
        args.task,
        out,
        _recipe_overrides(args),
        tag=args.tag,
        trusted=args.trusted,
        random_init=args.random_init,
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from data_pipeline.sources import InputError
    from launch.downstream import compare, evaluate_run

    if args.compare:
        print(compare(args.runs, args.chart or "downstream-compare.png"))
        return 0
    if len(args.runs) != 1 or not args.tasks:
        raise InputError(
            "usage: cloze evaluate RUN_DIR --tasks TASK [TASK ...] (or --compare RUN_A RUN_B ...)"
        )
    evaluate_run(
        args.runs[0], args.tasks, args.every_checkpoint, _recipe_overrides(args), trusted=args.trusted
    )
    return 0


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (defaults per task type: docs/downstream.md)")
    g.add_argument("--seeds", type=int, help="fine-tuning runs per learning rate (seeds 0..N-1; default 3)")
    g.add_argument("--lr", help="learning-rate grid, comma-separated, e.g. 1e-4,3e-4")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--warmup-ratio", dest="warmup_ratio", type=float)
    g.add_argument("--max-len", dest="max_len", type=int, help="tokens per example, framing included")


def _cmd_demo(args: argparse.Namespace) -> int:
    from launch.demo import run_demo

    return run_demo(args.out, nproc=args.nproc, steps=args.steps)


def _add_trusted_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted",
        action="store_true",
        help="skip the weights-only unpickling check of the checkpoint's files (only for checkpoints from a source "
        "you trust: unpickling can run code). Trust is never read from the run or checkpoint directory",
    )


PLUGIN_HELP = (
    "import MODULE on every rank and train with the callbacks MODULE.ATTR() returns (default ATTR: callbacks; "
    "repeatable; docs/training.md). Only from the command line: never read from a config, run directory or "
    "checkpoint, so a resumed run loads only the plugins its own command names"
)


def _add_plugin_flag(p: argparse.ArgumentParser, where: str = "", text: str = PLUGIN_HELP) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE[:ATTR]", help=text + where)


class _Parser(argparse.ArgumentParser):
    """argparse's parser; with `intermixed = True` a command's positionals may also come after its flags
    (`cloze submit CONFIG --nodes 2 optimizer.lr=1e-4`), through argparse's own intermixed parsing."""

    intermixed = False
    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self.intermixed or self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True  # parse_known_intermixed_args calls back into parse_known_args
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _defaults(of: Any) -> dict[str, Any]:
    """The defaults of an options dataclass, or of a function's keyword parameters: the code that uses a value owns
    its default, and a flag shows it (`%(default)s`) rather than repeating it."""
    if dataclasses.is_dataclass(of) and isinstance(of, type):
        inst = of()
        return {f.name: getattr(inst, f.name) for f in dataclasses.fields(inst)}
    params = inspect.signature(of).parameters.values()
    return {q.name: q.default for q in params if q.default is not inspect.Parameter.empty}


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    from data_pipeline.sources import SourceOptions

    d = _defaults(SourceOptions)
    p.add_argument("--format", default=d["format"], choices=["auto", "text", "jsonl", "parquet"])
    p.add_argument(
        "--text-mode",
        default=d["text_mode"],
        choices=["blocks", "lines"],
        help="text files: documents separated by blank lines, or one per line",
    )
    p.add_argument(
        "--field", default=d["field"], help="jsonl: the key holding the text (default %(default)s)"
    )
    p.add_argument(
        "--column", default=d["column"], help="parquet: the column holding the text (default %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    from data_pipeline.objectives import MLMParams, T5Params
    from data_pipeline.packing import GLOBAL_TOKENS
    from data_pipeline.tokenizer import train_tokenizer
    from data_pipeline.writer import ShardOptions, write_shards
    from launch.demo import run_demo

    p = argparse.ArgumentParser(prog="cloze", description="Pretrain autoencoding transformers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    td = _defaults(train_tokenizer)
    t = sub.add_parser("tokenizer", help="train a sentencepiece model with cloze's special tokens")
    t.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        help="text files, directories, globs, builtin:stdlib-docs or builtin:gettext:LANG; LANG=SOURCE tags a "
        "language (e.g. --input fr=builtin:gettext:fr --input de=corpus/de/): languages are then sampled "
        "with shares ~ n^alpha (repeatable)",
    )
    t.add_argument("--vocab-size", type=int, default=td["vocab_size"], help="(default %(default)s)")
    t.add_argument("--model-type", default=td["model_type"], choices=["unigram", "bpe"])
    t.add_argument(
        "--character-coverage",
        type=float,
        default=td["character_coverage"],
        help="(default 0.9995; 0.9999 with two or more language tags)",
    )
    t.add_argument(
        "--input-sentence-size",
        type=int,
        default=td["input_sentence_size"],
        help="sentences sampled for training (default %(default)s)",
    )
    t.add_argument(
        "--byte-fallback",
        action=argparse.BooleanOptionalAction,
        default=td["byte_fallback"],
        help="unknown characters as UTF-8 byte pieces (default: on with two or more language tags, else off)",
    )
    t.add_argument(
        "--alpha",
        type=float,
        default=td["alpha"],
        help="language sampling exponent for tagged inputs, in (0, 1]: shares ~ n^alpha (default %(default)s, "
        "mT5/XLM-R)",
    )
    t.add_argument(
        "--seed", type=int, default=td["seed"], help="seed of the language sampling (default %(default)s)"
    )
    _add_source_flags(t)
    t.add_argument("--out", required=True, help="directory for tokenizer.model and tokenizer.json")
    t.set_defaults(fn=_cmd_tokenizer)

    from data_pipeline.registry import objective_names

    sd, wd = _defaults(ShardOptions), _defaults(write_shards)
    mlm, t5 = MLMParams(), T5Params()
    s = sub.add_parser(
        "shards",
        help="tokenize, pack, corrupt and write WebDataset shards (`shards merge DIR` merges slices)",
    )
    s.add_argument(
        "--input", nargs="+", help="files, directories, globs (.gz too), builtin:stdlib-docs (required)"
    )
    s.add_argument("--tokenizer", help="directory holding tokenizer.model (required)")
    _add_plugin_flag(
        s,
        text="import MODULE and call MODULE.ATTR() (default ATTR: callbacks; repeatable) before writing, so the "
        "objectives it registers (data_pipeline.registry.register_objective) can be named by --objective; "
        "docs/extending.md",
    )
    s.add_argument(
        "--objective",
        default=sd["objective"],
        help=f"one of the registered objectives: {', '.join(objective_names())} (tokens: clean tokens, masked on "
        "the fly; default %(default)s)",
    )
    s.add_argument(
        "--seq-len",
        type=int,
        default=sd["seq_len"],
        help="tokens per sample (t5: input length; default %(default)s)",
    )
    s.add_argument("--seed", type=int, default=sd["seed"])
    s.add_argument(
        "--mask-rate",
        type=float,
        default=None,
        help=f"mlm/wwm/span/electra/tlm: fraction predicted ({mlm.rate:g})",
    )
    s.add_argument(
        "--noise-density",
        type=float,
        default=None,
        help=f"t5: fraction of tokens in spans ({t5.noise_density:g})",
    )
    s.add_argument(
        "--mean-span-length",
        type=float,
        default=None,
        help=f"t5: mean span length ({t5.mean_noise_span_length:g})",
    )
    s.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other objective parameters, e.g. --opt mask_prob=0.8 --opt permute_sentences=0.0",
    )
    s.add_argument(
        "--dupe-factor",
        type=int,
        default=sd["dupe_factor"],
        help="static masking: write each sequence D times (default %(default)s)",
    )
    s.add_argument(
        "--sentence-task",
        default=sd["sentence_task"],
        choices=["", "sop", "nsp"],
        help="write sentence pairs (token_type_ids, sentence_label) for SOP or NSP",
    )
    s.add_argument(
        "--doc-boundaries",
        action="store_true",
        default=sd["doc_boundaries"],
        help="no sequence holds two documents: a document's last sequence is padded, samples carry an "
        "attention_mask (encoder objectives: mlm, wwm, span, electra, tokens; for Longformer)",
    )
    s.add_argument(
        "--global-tokens",
        default=sd["global_tokens"],
        choices=["", *GLOBAL_TOKENS],
        help="write a global_attention_mask for Longformer: cls = the first position, first-of-each-line = it and "
        "the first token of every line of the text (default: none)",
    )
    s.add_argument(
        "--language",
        default=sd["language"],
        help="the language of monolingual text, recorded as the manifest's languages: [LANG] (default: none)",
    )
    s.add_argument(
        "--parallel",
        action="store_true",
        default=sd["parallel"],
        help="inputs are sentence pairs, one sample a pair (--objective tlm): TSV text1<TAB>text2<TAB>lang1<TAB>lang2, "
        "JSONL (--pair-keys), or builtin:gettext-pairs:LANG (en-LANG)",
    )
    s.add_argument(
        "--pair-format",
        default=sd["pair_format"],
        choices=["auto", "jsonl", "tsv"],
        help="--parallel: auto = .jsonl/.json/.ndjson JSONL, anything else TSV (default %(default)s)",
    )
    s.add_argument(
        "--pair-keys",
        default=",".join(sd["pair_keys"]),
        metavar="TEXT1,TEXT2,LANG1,LANG2",
        help="--parallel JSONL: the keys of the two texts and their languages (default %(default)s)",
    )
    s.add_argument(
        "--valid-fraction",
        type=float,
        default=sd["valid_fraction"],
        help="fraction of documents held out (default %(default)s)",
    )
    s.add_argument(
        "--docs-per-block",
        type=int,
        default=sd["docs_per_block"],
        help="documents per unit of work (and per shard; default %(default)s)",
    )
    _add_source_flags(s)
    s.add_argument("--workers", type=int, default=wd["workers"], help="processes on this node")
    s.add_argument(
        "--num-slices", type=int, default=wd["num_slices"], help="split the work across K invocations (nodes)"
    )
    s.add_argument("--slice", type=int, default=wd["slice_index"], help="which slice this invocation writes")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--out", help="the dataset directory (required)")
    s.set_defaults(fn=_cmd_shards)
    mg = s.add_subparsers(dest="shards_command", metavar="merge", required=False, parser_class=_Parser)
    m = mg.add_parser("merge", help="write manifest.json once every slice is done")
    m.add_argument("dir")
    m.set_defaults(fn=_cmd_merge)

    v = sub.add_parser("verify", help="check every shard against the manifest (sizes, sha256, counts)")
    v.add_argument("dir")
    v.set_defaults(fn=_cmd_verify)

    tc = sub.add_parser(
        "token-counts",
        help="count every token id of a dataset's split (DistilBERT's frequency-smoothed masking: distil_mlm)",
    )
    tc.add_argument("dir")
    tc.add_argument("--out", required=True, help="the .npy file to write")
    tc.add_argument("--split", default="train")
    tc.set_defaults(fn=_cmd_token_counts)

    # data_pipeline.inspect imports torch: the flags not given are left out, so its functions' defaults apply
    i = sub.add_parser("inspect", help="decode samples of a dataset to text")
    i.add_argument("dir")
    i.add_argument("--n", type=int, default=argparse.SUPPRESS, help="samples to decode")
    i.add_argument("--split", default=argparse.SUPPRESS, help="train or valid")
    i.add_argument(
        "--stats",
        action="store_true",
        help="measure the corruption (rate, 80/10/10 split, mean span length) against the reference values",
    )
    i.add_argument(
        "--max-samples",
        type=int,
        default=argparse.SUPPRESS,
        help="--stats: measure the first N samples (0: all)",
    )
    i.set_defaults(fn=_cmd_inspect)

    tr = sub.add_parser("train", help="pretrain from a YAML config (+ key=value overrides)")
    tr.intermixed = True  # overrides may follow the flags too
    tr.add_argument("config", help=_CONFIG_HELP)
    tr.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. optimizer.lr=3e-4 trainer.max_steps=100"
    )
    _add_trusted_flag(tr)
    _add_plugin_flag(tr)
    tr.set_defaults(fn=_cmd_train)

    sb = sub.add_parser(
        "submit", help="render <run_dir>/slurm/pretrain.sbatch from a config and submit it to SLURM"
    )
    sb.intermixed = True  # `cloze submit CONFIG --nodes 2 optimizer.lr=1e-4`
    sb.add_argument("config", help=_CONFIG_HELP)
    sb.add_argument("overrides", nargs="*", help="dotted overrides, as for `cloze train`")
    sb.add_argument(
        "--eval-tasks",
        dest="eval_tasks",
        nargs="+",
        default=[],
        help="after training, a dependent job (afterok) runs `cloze evaluate RUN_DIR --every-checkpoint` on these",
    )
    _add_plugin_flag(sb, " (passed on to the job's `cloze train`)")
    _add_slurm_flags(sb)
    sb.set_defaults(fn=_cmd_submit)

    ss = sub.add_parser(
        "submit-shards",
        help="write shards as a SLURM array job (one slice per task) plus a dependent merge job",
        usage="cloze submit-shards --slices N [SLURM flags] -- SHARDS ARGS (as for `cloze shards`)",
    )
    ss.add_argument("--slices", type=int, required=True, help="array tasks, each writing one slice")
    ss.add_argument(
        "--script-dir", default="", help="where to render the scripts and logs (default: OUT-slurm)"
    )
    _add_slurm_flags(ss)
    ss.add_argument("shards_args", nargs=argparse.REMAINDER, help="-- then the arguments of `cloze shards`")
    ss.set_defaults(fn=_cmd_submit_shards)

    cv = sub.add_parser(
        "convert",
        help="convert a run's checkpoint to DeepSpeed's universal format, or a RoBERTa/BERT into a Longformer",
    )
    cv.add_argument("run_dir", help="a cloze run directory (--to-long: or a transformers directory)")
    what = cv.add_mutually_exclusive_group(required=True)
    what.add_argument("--to-universal", action="store_true", help="resume on any number of ranks")
    what.add_argument(
        "--to-long", action="store_true", help="a Longformer starting point (transformers files in --out)"
    )
    cv.add_argument(
        "--max-len", type=int, default=4096, help="--to-long: the new maximum length (default 4096)"
    )
    cv.add_argument("--window", type=int, default=512, help="--to-long: the attention window (default 512)")
    cv.add_argument("--out", default="", help="--to-long: the output directory")
    cv.add_argument("--tag", default="", help="checkpoint tag (default: the one `latest` names)")
    _add_trusted_flag(cv)
    cv.set_defaults(fn=_cmd_convert)

    ex = sub.add_parser("export", help="write a run's checkpoint in Hugging Face transformers format")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True)
    ex.add_argument("--tag", default="", help="checkpoint tag (default: the one `latest` names)")
    _add_trusted_flag(ex)
    ex.add_argument(
        "--no-tokenizer",
        dest="no_tokenizer",
        action="store_true",
        help="export the model alone (without it, a run whose tokenizer cannot be found is an error)",
    )
    ex.set_defaults(fn=_cmd_export)

    d = sub.add_parser(
        "demo", help="tokenizer -> shards -> 2-process ZeRO-2 pretraining on the built-in corpus"
    )
    dd = _defaults(run_demo)
    d.add_argument("--out", default=dd["out"], help="(default %(default)s)")
    d.add_argument("--nproc", type=int, default=dd["nproc"], help="ranks (default %(default)s)")
    d.add_argument(
        "--steps", type=int, default=dd["steps"], help="override trainer.max_steps (0 = the recipe's)"
    )
    d.set_defaults(fn=_cmd_demo)

    ft = sub.add_parser(
        "finetune", help="fine-tune and score a checkpoint on a downstream task (GLUE layout or builtin:NAME)"
    )
    ft.add_argument("checkpoint", help="a run directory (with --tag), RUN_DIR/checkpoints/TAG, or an export")
    ft.add_argument(
        "--task", nargs="+", required=True, help="task directories (task.yaml + train/dev) or builtin:NAME"
    )
    ft.add_argument("--out", default="", help="where results.json goes (default: finetune/TASK)")
    ft.add_argument("--tag", default="", help="checkpoint tag (default: the one `latest` names)")
    ft.add_argument(
        "--random-init", dest="random_init", action="store_true", help="the same architecture, not pretrained"
    )
    _add_recipe_flags(ft)
    _add_trusted_flag(ft)
    ft.set_defaults(fn=_cmd_finetune)

    ev = sub.add_parser(
        "evaluate", help="downstream scores of a run's checkpoints into its TensorBoard; --compare runs"
    )
    ev.add_argument("runs", nargs="+", help="RUN_DIR (or several with --compare)")
    ev.add_argument("--tasks", nargs="+", default=[], help="task directories or builtin:NAME")
    ev.add_argument(
        "--every-checkpoint", dest="every_checkpoint", action="store_true", help="every complete checkpoint"
    )
    ev.add_argument("--compare", action="store_true", help="table + PNG chart of the runs' scores and losses")
    ev.add_argument(
        "--chart", default="", help="--compare: the PNG to write (default downstream-compare.png)"
    )
    _add_recipe_flags(ev)
    _add_trusted_flag(ev)
    ev.set_defaults(fn=_cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from cloze_errors import ClozeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ClozeError as e:  # every error a user can fix; anything else is a bug and keeps its traceback
        return _report_error(args.command, e)


QUIET_RANK_WAIT_S = 20.0
"""How long a rank other than 0 waits, silent, for the launcher to stop it after an error every rank shares."""


def _launch_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun, SLURM, Open MPI, MPICH); (0, 1) alone."""
    for rank_key, world_key in (
        ("RANK", "WORLD_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
    ):
        try:
            return int(os.environ[rank_key]), int(os.environ[world_key])
        except (KeyError, ValueError):
            continue
    return 0, 1


def _report_error(command: str, e: ClozeError) -> int:
    """Print a user error once: under a launcher, an error every rank meets alike (a bad config or input) is
    printed by rank 0 alone, first; the other ranks wait quietly to be stopped by the launcher when rank 0 exits
    (torchrun stops the others on the first failure), and print it themselves only if nobody stops them."""
    import signal

    rank, world = _launch_rank()
    if world > 1 and rank != 0 and e.same_on_every_rank:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher's stop ends this rank at once
        deadline = time.monotonic() + QUIET_RANK_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
    where = f" (rank {rank})" if world > 1 and rank != 0 else ""
    print(f"cloze {command}: error{where}: {e}", file=sys.stderr, flush=True)
    if (
        "torch.distributed" in sys.modules
    ):  # an error after the process group started: leave it before exiting
        import contextlib

        from trainer.distributed import shutdown

        with contextlib.suppress(Exception):  # the error above is what the user must see
            shutdown(barrier=False)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
