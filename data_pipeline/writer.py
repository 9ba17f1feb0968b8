"""Write corrupted pretraining samples as WebDataset tar shards, in parallel, resumably, identically.

The unit of work is a *block*: `docs_per_block` consecutive documents of the corpus (by global document index).
Block b is tokenized, packed, corrupted (seeded by (seed, split, b, sample)) and written to `train-<b>.tar` and
`valid-<b>.tar` (documents are routed to the validation split by a hash of their index). So the output does not
depend on how many processes or slices did the work:
  --workers N               N processes on this node take blocks;
  --num-slices K --slice I  this invocation takes the blocks b with b % K == I (a SLURM array task, an MPI rank);
  `cloze shards merge DIR`  writes manifest.json once every slice is done (run automatically when K == 1).

Crash safety: a shard is written as <name>.tmp and renamed when complete; a block's record (.build/block-<b>.json)
is written after its shards; a rerun with the same options skips blocks with a record and redoes the rest;
manifest.json is written last, after which .build/ is removed. A full disk stops the run with the path named and
keeps what was written (the rerun resumes); worker processes die with the process that started them (kill -9
included), so no orphan keeps its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import MANIFEST, Manifest, ShardEntry, atomic_write, read_manifest
from .objectives import SPLIT_CODES, SentencePair, Vocab, build_objective, sample_rng
from .packing import (
    GLOBAL_TOKENS,
    PackedBlock,
    PairBlock,
    global_attention_mask,
    pack_block,
    packer_for,
    pair_block,
)
from .parallel import (
    DEFAULT_KEYS,
    PairStats,
    ParallelOptions,
    iter_pairs,
    resolve_parallel_inputs,
    scan_parallel_inputs,
)
from .registry import ObjectiveError, get_objective, objective_names
from .sources import (
    InputError,
    SourceOptions,
    SourceStats,
    check_inputs,
    iter_documents,
    no_documents_message,
    resolve_inputs,
)
from .tarshard import ShardTarWriter
from .tokenizer import MODEL_FILE, Tokenizer, sha256_file, tokenizer_meta, vocab_of

BUILD = ".build"
PLAN = "plan.json"
PARALLEL = "parallel"
"""The packing kind of pair objectives (tlm): one sample per sentence pair, read by data_pipeline/parallel.py."""


@dataclass
class ShardOptions:
    """Everything that decides the dataset's contents (recorded in the manifest under `build`)."""

    objective: str = "mlm"
    seq_len: int = 128
    seed: int = 0
    valid_fraction: float = 0.02
    docs_per_block: int = 4096
    dupe_factor: int = 1
    sentence_task: str = ""
    """'' (packed sequences), 'sop' or 'nsp': sentence pairs with token_type_ids and a sentence_label."""
    doc_boundaries: bool = False
    """No sequence holds two documents: each document's last sequence is padded and samples carry an
    attention_mask (`--doc-boundaries`; packings that can be padded only)."""
    global_tokens: str = ""
    """'' (none), 'cls' or 'first-of-each-line': samples carry a global_attention_mask for Longformer
    (`--global-tokens`)."""
    objective_options: dict[str, Any] = field(default_factory=dict)
    sources: SourceOptions = field(default_factory=SourceOptions)
    language: str = ""
    """Monolingual text: its language, recorded as the manifest's `languages: [LANG]` (`--language`)."""
    parallel: bool = False
    """Inputs are sentence pairs (data_pipeline/parallel.py), one sample a pair (`--parallel`; objectives with
    packing 'parallel', e.g. tlm)."""
    pair_format: str = "auto"
    """Parallel inputs: 'auto', 'jsonl' or 'tsv' (`--pair-format`)."""
    pair_keys: list[str] = field(default_factory=lambda: list(DEFAULT_KEYS))
    """Parallel JSONL: the keys of text1, text2, lang1, lang2 (`--pair-keys`)."""
    languages: list[str] = field(default_factory=list)
    """Parallel: the dataset's languages, sorted (filled in by `write_shards` from the inputs; `langs` holds
    indices into it)."""

    def __post_init__(self) -> None:
        try:
            spec = get_objective(self.objective)
        except ObjectiveError as e:
            raise InputError(str(e)) from None
        if self.parallel != (spec.packing == PARALLEL):
            pairs = ", ".join(objective_names(lambda s: s.packing == PARALLEL))
            raise InputError(
                f"--objective {self.objective} reads sentence pairs; add --parallel"
                if not self.parallel
                else f"--parallel writes one sample per sentence pair: use --objective {pairs or 'tlm'}, or drop "
                "--parallel"
            )
        if self.parallel and (
            self.sentence_task or self.doc_boundaries or self.global_tokens or self.language
        ):
            flag = (
                f"--sentence-task {self.sentence_task}"
                if self.sentence_task
                else "--doc-boundaries"
                if self.doc_boundaries
                else f"--language {self.language}"
                if self.language
                else f"--global-tokens {self.global_tokens}"
            )
            raise InputError(
                f"{flag} does not go with --parallel (each sample is one sentence pair; its languages come from "
                "the pairs); drop it"
            )
        if self.language and (not self.language.strip() or any(c.isspace() for c in self.language)):
            raise InputError(f"--language {self.language!r}: give a language code such as en or fr")
        ParallelOptions(self.pair_format, list(self.pair_keys))  # checks them
        if not 0.0 <= self.valid_fraction < 1.0:
            raise InputError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if self.docs_per_block < 1:
            raise InputError(f"--docs-per-block must be >= 1, got {self.docs_per_block}")
        if self.dupe_factor < 1:
            raise InputError(f"--dupe-factor must be >= 1, got {self.dupe_factor}")
        if self.sentence_task not in ("", "sop", "nsp"):
            raise InputError(f"--sentence-task {self.sentence_task!r}: use sop or nsp")
        if self.sentence_task and not spec.sentence_pairs:
            pairs = ", ".join(objective_names(lambda s: s.sentence_pairs))
            raise InputError(f"--sentence-task {self.sentence_task} goes with an encoder objective ({pairs})")
        if self.global_tokens not in ("", *GLOBAL_TOKENS):
            raise InputError(
                f"--global-tokens {self.global_tokens!r} is not known: use {' or '.join(GLOBAL_TOKENS)}, or leave "
                "the flag out (no global attention mask)"
            )
        if self.sentence_task and (self.doc_boundaries or self.global_tokens):
            flag = "--doc-boundaries" if self.doc_boundaries else f"--global-tokens {self.global_tokens}"
            raise InputError(
                f"{flag} does not go with --sentence-task {self.sentence_task} (sentence pairs are already cut "
                "within documents and padded); drop one of the two"
            )
        if self.dupe_factor > 1 and spec.clean:
            raise InputError(
                f"--dupe-factor applies to static masking; `--objective {self.objective}` is masked anew every epoch"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pads(kind: str, seq_len: int, vocab: Vocab) -> bool:
    """Whether the packing `kind` can be padded and marked position by position (Packer.pads)."""
    try:
        return packer_for(kind, seq_len, vocab).pads
    except ValueError:
        return False


def _writable(objective: str, vocab: Vocab, seq_len: int) -> bool:
    """Whether `cloze shards --objective NAME` can write it with its default options (not a batch-level one)."""
    if get_objective(objective).clean:
        return True
    try:
        return not getattr(build_objective(objective, vocab, seq_len), "batch_level", False)
    except ObjectiveError:
        return False


def check_layout(opts: ShardOptions, vocab: Vocab) -> None:
    """--doc-boundaries and --global-tokens need an objective whose inputs are its packed sequence position for
    position, special tokens untouched (the encoder packing): T5's span corruption and BART's noise rewrite the
    sequence, so padding would be corrupted as text and a mask would point at moved tokens. Refused before
    anything is written."""
    if not (opts.doc_boundaries or opts.global_tokens):
        return
    kind = get_objective(opts.objective).packing
    if _pads(kind, opts.seq_len, vocab):
        return
    flag = "--doc-boundaries" if opts.doc_boundaries else f"--global-tokens {opts.global_tokens}"
    ok = objective_names(
        lambda s: _pads(s.packing, opts.seq_len, vocab) and _writable(s.name, vocab, opts.seq_len)
    )
    raise InputError(
        f"{flag} cannot be written with --objective {opts.objective}: its {kind!r} packing cannot be padded or "
        "marked position by position (the objective rewrites the sequence, so its inputs no longer line up with "
        f"the packed tokens); use one of {', '.join(ok)} (Longformer pretrains with mlm or tokens), or drop {flag}"
    )


def split_of(doc_index: int, seed: int, valid_fraction: float) -> str:
    """Documents (not sequences) go to the validation split, so no text is shared between the splits."""
    if valid_fraction <= 0:
        return "train"
    x = (doc_index + 0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 29
    return "valid" if (x % 1_000_000) < valid_fraction * 1_000_000 else "train"


def sample_byte_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) byte range of each sample (its consecutive members) in a finished tar shard."""
    ranges: list[tuple[int, int]] = []
    last_key = None
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            key = m.name.split(".", 1)[0]
            end = m.offset_data + ((m.size + 511) // 512) * 512
            if key != last_key:
                ranges.append((m.offset, end))
                last_key = key
            else:
                ranges[-1] = (ranges[-1][0], end)
    return ranges


def write_tar(
    out: Path, name: str, samples: list[tuple[str, dict[str, np.ndarray]]], tokens: int, split: str
) -> ShardEntry:
    """One complete shard + its index, each via a temporary name."""
    tmp = out / (name + ".tmp")
    idx_name = name + ".idx"
    idx_tmp = out / (idx_name + ".tmp")
    current = tmp
    try:
        with open(tmp, "wb") as f:
            tw = ShardTarWriter(f)
            for key, sample in samples:
                tw.write(key, sample)
            tw.close()
            os.fsync(f.fileno())
        buf = io.BytesIO()
        np.save(buf, tw.index())  # [start, end, crc32] per sample (docs/shard-format.md)
        current = idx_tmp
        idx_tmp.write_bytes(buf.getvalue())
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a partial shard only takes space; the rerun writes it again
        idx_tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(current)) from e
        raise
    os.replace(idx_tmp, out / idx_name)
    os.replace(tmp, out / name)
    return ShardEntry(
        name=name,
        split=split,
        samples=len(samples),
        tokens=tokens,
        bytes=(out / name).stat().st_size,
        sha256=sha256_file(out / name),
        index=idx_name,
        index_sha256=sha256_file(out / idx_name),
    )


# ---- one block, in a worker process ---------------------------------------------------------------------------

_worker: dict[str, Any] = {}

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that created it exits (Linux)."""


def _die_with_parent(parent: int) -> None:
    """Make this worker process end when its parent does, even on kill -9 of the parent: SIGKILL from the kernel
    (PR_SET_PDEATHSIG, Linux) and, on any platform, a thread that sees the parent change."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the thread below still works
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    ppid = os.getppid()
    if parent and ppid != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="cloze-parent-watch", daemon=True).start()


def _init_pool_worker(parent: int, tokenizer_path: str, opts: dict[str, Any]) -> None:
    """`parent`: the pid that forked this worker (0 when a fork server did, as its parent is then the server)."""
    _die_with_parent(parent)
    _init_worker(tokenizer_path, opts)


def _init_worker(tokenizer_path: str, opts: dict[str, Any]) -> None:
    tok = Tokenizer(tokenizer_path)
    o = ShardOptions(**{**opts, "sources": SourceOptions(**opts["sources"])})
    vocab = vocab_of(tok)
    spec = get_objective(o.objective)
    objective = None if spec.clean else build_objective(o.objective, vocab, o.seq_len, o.objective_options)
    kind = spec.packing
    length = (
        o.seq_len if spec.packed_length is None or o.parallel else spec.packed_length(objective, o.seq_len)
    )
    _worker.update(tok=tok, opts=o, vocab=vocab, objective=objective, kind=kind, length=length)


def process_block(out: str, block: int, first_doc: int, joined: list[str]) -> dict[str, Any]:
    """Tokenize, pack, corrupt and write one block; record it in .build/block-<b>.json. Returns the record.

    `joined` holds each document's lines joined by newlines (one string a document is cheap to send to a worker);
    `first_doc` is the global index of the first."""
    w = _worker
    o: ShardOptions = w["opts"]
    outp = Path(out)
    docs = [(first_doc + i, text.split("\n")) for i, text in enumerate(joined)]
    flat = [line for _, lines in docs for line in lines]
    encoded = w["tok"].encode(
        flat
    )  # one call per block: sentencepiece's per-call overhead dominates small calls
    by_split: dict[str, list[list[list[int]]]] = {s: [] for s in SPLIT_CODES}
    cursor = 0
    for doc_index, lines in docs:
        by_split[split_of(doc_index, o.seed, o.valid_fraction)].append(encoded[cursor : cursor + len(lines)])
        cursor += len(lines)
    entries, dropped, longest, padding = [], 0, 0, 0
    for split, code in SPLIT_CODES.items():
        packed: PackedBlock | PairBlock
        extra: dict[str, np.ndarray] = {}
        if o.sentence_task:
            packed = pair_block(
                by_split[split], o.seq_len, w["vocab"], o.sentence_task, sample_rng(o.seed, code, block, 0x5E)
            )
            extra = {"token_type_ids": packed.token_type_ids, "sentence_label": packed.sentence_label}
        else:
            packed = pack_block(
                by_split[split], packer_for(w["kind"], w["length"], w["vocab"]), o.doc_boundaries
            )
            if packed.padded:
                extra["attention_mask"] = packed.attention_mask()
            if o.global_tokens:
                extra["global_attention_mask"] = global_attention_mask(packed, o.global_tokens)
        dropped += packed.dropped_tokens
        if len(packed) == 0:
            continue
        n = len(packed)
        # columns[d] = the arrays of every sequence for copy d (dupe factor)
        columns: list[dict[str, np.ndarray] | list[dict[str, np.ndarray]]] = []
        for d in range(o.dupe_factor):
            obj = w["objective"]
            if obj is None:
                columns.append({"input_ids": packed.tokens})
            elif getattr(obj, "batched", False):  # vectorised over the block, seeded by the block's identity
                columns.append(obj.batch(packed.tokens, sample_rng(o.seed, code, block, d, 0xB)))
            else:
                columns.append(
                    [obj(packed.sequence(i), sample_rng(o.seed, code, block, i, d)) for i in range(n)]
                )
        samples = []
        for i in range(n):
            for d in range(o.dupe_factor):
                col = columns[d]
                sample = {k: v[i] for k, v in col.items()} if isinstance(col, dict) else col[i]
                sample = {**sample, **{k: v[i] for k, v in extra.items()}}
                samples.append((f"{split}-{block:06d}-{i * o.dupe_factor + d:07d}", sample))
        tokens = sum(int(s["input_ids"].size) for _, s in samples)
        if "attention_mask" in extra:  # padding is not counted as tokens
            pad = sum(int(s["input_ids"].size - s["attention_mask"].sum()) for _, s in samples)
            tokens, padding = tokens - pad, padding + pad
        longest = max(longest, *(int(s["input_ids"].size) for _, s in samples))
        entries.append(write_tar(outp, f"{split}-{block:06d}.tar", samples, tokens, split))
    record = {
        "block": block,
        "shards": [asdict(e) for e in entries],
        "dropped_tokens": dropped,
        "documents": len(docs),
        "longest_input": longest,
        "pad_tokens": padding,
    }
    _atomic_json(outp / BUILD / f"block-{block:06d}.json", record)
    return record


def process_pair_block(
    out: str, block: int, first_pair: int, pairs: list[tuple[str, str, str, str]]
) -> dict[str, Any]:
    """`--parallel`: tokenize, fit, mask and write one block of sentence pairs (global indices from
    `first_pair`); pairs go to the validation split by a hash of their index. A pair that does not fit seq_len is
    dropped or truncated as the objective says (`TLM.fit`), and counted. Returns the block's record."""
    w = _worker
    o: ShardOptions = w["opts"]
    obj = w["objective"]
    outp = Path(out)
    lang_index = {lang: i for i, lang in enumerate(o.languages)}
    encoded = w["tok"].encode([p[0] for p in pairs] + [p[1] for p in pairs])  # one call per block
    n_pairs = len(pairs)
    by_split: dict[str, list[SentencePair]] = {s: [] for s in SPLIT_CODES}
    dropped = dropped_pairs = truncated = 0
    for i, (_, _, la, lb) in enumerate(pairs):
        a = np.asarray(encoded[i], dtype=np.int32)
        b = np.asarray(encoded[n_pairs + i], dtype=np.int32)
        fitted = obj.fit(a, b)
        if fitted is None:
            dropped_pairs += 1
            dropped += len(a) + len(b)
            continue
        fa, fb, how = fitted
        if how == "truncated":
            truncated += 1
            dropped += len(a) + len(b) - len(fa) - len(fb)
        split = split_of(first_pair + i, o.seed, o.valid_fraction)
        by_split[split].append(SentencePair(fa, fb, lang_index[la], lang_index[lb]))
    entries, longest = [], 0
    for split, code in SPLIT_CODES.items():
        kept = by_split[split]
        if not kept:
            continue
        samples = []
        for i, pair in enumerate(kept):
            for d in range(o.dupe_factor):
                sample = obj(pair, sample_rng(o.seed, code, block, i, d))
                samples.append((f"{split}-{block:06d}-{i * o.dupe_factor + d:07d}", sample))
        tokens = sum(int(s["input_ids"].size) for _, s in samples)
        longest = max(longest, *(int(s["input_ids"].size) for _, s in samples))
        entries.append(write_tar(outp, f"{split}-{block:06d}.tar", samples, tokens, split))
    record = {
        "block": block,
        "shards": [asdict(e) for e in entries],
        "dropped_tokens": dropped,
        "dropped_pairs": dropped_pairs,
        "truncated_pairs": truncated,
        "documents": n_pairs,
        "longest_input": longest,
        "pad_tokens": 0,
    }
    _atomic_json(outp / BUILD / f"block-{block:06d}.json", record)
    return record


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _block_done(out: Path, block: int) -> bool:
    rec = out / BUILD / f"block-{block:06d}.json"
    if not rec.is_file():
        return False
    try:
        shards = json.loads(rec.read_text())["shards"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((out / s["name"]).is_file() and (out / s["name"]).stat().st_size == s["bytes"] for s in shards)


# ---- the driver -----------------------------------------------------------------------------------------------


def _blocks(files: list[str], opts: ShardOptions, stats: SourceStats) -> Iterator[tuple[int, int, list[Any]]]:
    """(block number, global index of its first document, its documents as newline-joined strings; with
    --parallel its sentence pairs as (text1, text2, lang1, lang2))."""
    block: list[Any] = []
    b = 0
    items: Iterator[Any]
    if opts.parallel:
        assert isinstance(stats, PairStats)
        items = iter_pairs(files, stats, ParallelOptions(opts.pair_format, list(opts.pair_keys)))
    else:
        items = ("\n".join(doc) for doc in iter_documents(files, stats, opts.sources))
    for item in items:
        block.append(item)
        if len(block) == opts.docs_per_block:
            yield b, b * opts.docs_per_block, block
            b, block = b + 1, []
    if block:
        yield b, b * opts.docs_per_block, block


def write_shards(
    inputs: list[str],
    tokenizer: str | Path,
    out: str | Path,
    opts: ShardOptions | None = None,
    workers: int = 1,
    num_slices: int = 1,
    slice_index: int = 0,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> Manifest | None:
    """Write this invocation's share of the dataset into `out`; returns the manifest (None when other slices are
    still to be merged with `merge`)."""
    opts = opts or ShardOptions()
    if num_slices < 1 or not 0 <= slice_index < num_slices:
        raise InputError(f"--slice {slice_index} must be in [0, --num-slices {num_slices})")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if opts.parallel:  # every input read once before anything is written: bad files, and the languages
        files = resolve_parallel_inputs(inputs)
        opts = replace(
            opts, languages=scan_parallel_inputs(files, ParallelOptions(opts.pair_format, opts.pair_keys))
        )
    else:
        files = resolve_inputs(inputs)  # every input checked before anything is written
        check_inputs(files, opts.sources)
    tok = Tokenizer(tokenizer)
    if not get_objective(opts.objective).clean:
        built = build_objective(
            opts.objective, vocab_of(tok), opts.seq_len, opts.objective_options
        )  # validates options
        check_layout(opts, vocab_of(tok))
        if getattr(built, "batch_level", False):
            raise InputError(
                f"--objective {opts.objective} masks whole training micro-batches at once: write `--objective tokens` "
                f"shards and train with data.objective={opts.objective}"
            )
    else:  # not reached with --parallel: pair objectives are built (not clean)
        packer_for(get_objective(opts.objective).packing, opts.seq_len, vocab_of(tok))
        check_layout(opts, vocab_of(tok))
    out = Path(out)
    if (out / MANIFEST).exists():
        raise InputError(
            f"{out} already holds a dataset ({MANIFEST} exists); choose another --out or delete it"
        )
    plan = {
        "inputs": list(inputs),
        "options": opts.to_dict(),
        "tokenizer_sha256": tok.info.sha256,
        "num_slices": num_slices,
    }
    created = not out.exists()
    try:
        (out / BUILD).mkdir(parents=True, exist_ok=True)
        plan_path = out / BUILD / PLAN
        if plan_path.exists():
            before = json.loads(plan_path.read_text())
            if before != plan:
                raise InputError(
                    f"{out} holds a partial dataset written with other options ({plan_path}); "
                    "rerun with the same options to finish it, or delete the directory"
                )
        else:
            _atomic_json(plan_path, plan)
        stage_tokenizer(tok.path, out)
        try:
            _run(files, str(tok.path), out, opts, workers, num_slices, slice_index, progress)
            done = all((out / BUILD / f"slice-{i}-of-{num_slices}.json").is_file() for i in range(num_slices))
            # every slice done, or another slice finished at the same moment and already merged (removing the
            # records)
            return merge(out) if done or (out / MANIFEST).exists() else None
        except InputError:
            if created and num_slices == 1:  # other slices may share the directory: never remove their work
                shutil.rmtree(out, ignore_errors=True)
            raise
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = len(list((out / BUILD).glob("block-*.json"))) if (out / BUILD).is_dir() else 0
        raise InputError(
            f"disk full while writing {e.filename or out} ({e.strerror}); {kept} finished block(s) are kept in "
            f"{out}: free space (or move {out} to a larger disk) and rerun the same command, it resumes from them"
        ) from None


def _run(
    files: list[str],
    tok_path: str,
    out: Path,
    opts: ShardOptions,
    workers: int,
    num_slices: int,
    slice_index: int,
    progress: Callable[[dict[str, float]], None] | None,
) -> None:
    stats = PairStats() if opts.parallel else SourceStats()
    work = process_pair_block if opts.parallel else process_block
    t0 = time.perf_counter()
    done_tokens = done_docs = done_blocks = reused_blocks = reused_docs = 0
    total_blocks = 0

    def report() -> None:
        if progress is not None:
            # rates count only the work done by this run: blocks reused from an earlier run cost no tokenizing
            dt = max(time.perf_counter() - t0, 1e-9)
            progress(
                {
                    "documents": done_docs + reused_docs,
                    "written_documents": done_docs,
                    "written_blocks": done_blocks,
                    "reused_blocks": reused_blocks,
                    "reused_documents": reused_docs,
                    "docs_per_s": done_docs / dt,
                    "tokens_per_s": done_tokens / dt,
                }
            )

    def account(rec: dict[str, Any]) -> None:
        nonlocal done_tokens, done_docs, done_blocks
        done_tokens += sum(s["tokens"] for s in rec["shards"])
        done_docs += rec["documents"]
        done_blocks += 1
        report()

    def reused(b: int, docs: list[str]) -> bool:
        """True if block b is done already (by an earlier run): counted, not redone."""
        nonlocal reused_blocks, reused_docs
        if not _block_done(out, b):
            return False
        reused_blocks += 1
        reused_docs += len(docs)
        report()
        return True

    opts_dict = opts.to_dict()
    if workers == 1:
        _init_worker(tok_path, opts_dict)
        for b, first, docs in _blocks(files, opts, stats):
            total_blocks = b + 1
            if b % num_slices == slice_index and not reused(b, docs):
                account(work(str(out), b, first, docs))
    else:
        pending: list[Future] = []
        parent = 0 if multiprocessing.get_start_method() == "forkserver" else os.getpid()
        with ProcessPoolExecutor(
            workers, initializer=_init_pool_worker, initargs=(parent, tok_path, opts_dict)
        ) as pool:
            for b, first, docs in _blocks(files, opts, stats):
                total_blocks = b + 1
                if b % num_slices != slice_index or reused(b, docs):
                    continue
                pending.append(pool.submit(work, str(out), b, first, docs))
                while len(pending) >= 2 * workers:  # bound the documents held in memory
                    account(pending.pop(0).result())
            for f in pending:
                account(f.result())
    report()
    _atomic_json(
        out / BUILD / f"slice-{slice_index}-of-{num_slices}.json",
        {"total_blocks": total_blocks, "source_stats": stats.to_dict()},
    )


def merge(out: str | Path) -> Manifest:
    """Write manifest.json from the blocks of every slice; then remove the build records. A dataset already merged
    (the last slice to finish merges by itself, before a separate merge step such as SLURM's afterok job runs) is
    returned as it is.

    Several merges may run at once (two slices finishing together both see every slice done). They compute the same
    manifest, written atomically; a merge whose build records vanish under it, whatever it was reading then (a JSON
    record, the staged tokenizer), returns the finished dataset.
    """
    out = Path(out)
    try:
        return _merge(out)
    except Exception:
        # Build records are removed only after manifest.json is in place, so a failure with the manifest present
        # means another merge finished (or the dataset was complete): the same manifest this one would write.
        if (out / MANIFEST).exists():
            return read_manifest(out)
        raise


def _merge(out: Path) -> Manifest:
    plan_path = out / BUILD / PLAN
    if (out / MANIFEST).exists():  # written last by a merge: the dataset is complete
        return read_manifest(out)
    if not plan_path.is_file():
        raise InputError(
            f"{out} has no {BUILD}/{PLAN}: nothing to merge; write shards with `cloze shards` first"
        )
    plan = json.loads(plan_path.read_text())
    k = plan["num_slices"]
    slices = []
    for i in range(k):
        p = out / BUILD / f"slice-{i}-of-{k}.json"
        if not p.is_file():
            raise InputError(
                f"slice {i} of {k} has not finished ({p} is missing); run `cloze shards ... --slice {i}`"
            )
        slices.append(json.loads(p.read_text()))
    total = {s["total_blocks"] for s in slices}
    if len(total) != 1:
        raise InputError(
            f"slices of {out} disagree on the number of blocks ({sorted(total)}): were the inputs changed?"
        )
    n_blocks = total.pop()
    records = []
    for b in range(n_blocks):
        p = out / BUILD / f"block-{b:06d}.json"
        if not p.is_file():
            raise InputError(f"block {b} of {out} was not written ({p} is missing); rerun its slice")
        records.append(json.loads(p.read_text()))
    opts = plan["options"]
    documents = bool(opts.get("doc_boundaries", False))
    parallel = bool(opts.get("parallel", False))
    stats = slices[0]["source_stats"]
    inputs = " ".join(plan["inputs"])
    shards = [ShardEntry(**s) for r in records for s in r["shards"]]
    shards.sort(key=lambda s: (s.split != "train", s.name))
    splits = {
        sp: {
            "samples": sum(s.samples for s in shards if s.split == sp),
            "tokens": sum(s.tokens for s in shards if s.split == sp),
            "shards": sum(1 for s in shards if s.split == sp),
        }
        for sp in SPLIT_CODES
    }
    if stats["documents"] == 0:
        raise InputError(no_documents_message(plan["inputs"], stats, SourceOptions(**opts["sources"])))
    # every token of the corpus, packed or not (tokens that fill no whole sequence are dropped)
    corpus_tokens = sum(v["tokens"] for v in splits.values()) + sum(r["dropped_tokens"] for r in records)
    if splits["train"]["samples"] == 0 and parallel:
        kept = sum(int(r.get("dropped_pairs", 0)) for r in records)
        raise InputError(
            f"the pairs of {inputs} ({stats['documents']} pairs read, {kept} dropped as longer than --seq-len "
            f"{opts['seq_len']} or empty) give no training sample; raise --seq-len, or truncate long pairs "
            "(--opt long_pairs=truncate)"
        )
    if splits["train"]["samples"] == 0:
        raise InputError(
            f"the corpus {inputs} ({stats['documents']} documents, about {corpus_tokens} tokens) gives no training "
            f"sequence of --seq-len {opts['seq_len']}; add text or lower --seq-len"
        )
    if opts["valid_fraction"] > 0 and splits["valid"]["samples"] == 0:
        # documents are held out whole, so a validation sequence needs about seq_len tokens of held-out documents
        need = 2 * opts["seq_len"] / max(corpus_tokens, 1)
        fix = (
            f"--valid-fraction {min(0.5, float(f'{need:.2g}'))} (about {2 * opts['seq_len']} tokens held out) or "
            if need < 0.5
            else ""
        )
        raise InputError(
            f"--valid-fraction {opts['valid_fraction']} gives no validation sequence of --seq-len {opts['seq_len']} "
            f"from {inputs}: the corpus has {stats['documents']} documents, about {corpus_tokens} tokens; use "
            f"{fix}--valid-fraction 0 (no validation split), add text, or lower --seq-len"
        )
    tok = Tokenizer(out / BUILD / MODEL_FILE)
    atomic_write(out / MODEL_FILE, tok.path.read_bytes())
    meta = tokenizer_meta(tok.info)
    objective_params: dict[str, Any] = {}
    spec = get_objective(opts["objective"])
    if not spec.clean:
        objective_params = build_objective(
            opts["objective"], vocab_of(tok), opts["seq_len"], opts["objective_options"]
        ).params()
    manifest = Manifest(
        objective=opts["objective"],
        seq_len=opts["seq_len"],
        seed=opts["seed"],
        tokenizer={k2: meta[k2] for k2 in ("file", "sha256", "vocab_size", "model_type")},
        special_tokens=tok.special.to_dict(),
        sentinel_ids=tok.info.sentinel_ids,
        objective_params=objective_params,
        splits=splits,
        shards=shards,
        packing={
            "method": PARALLEL
            if parallel
            else "pairs"
            if opts["sentence_task"]
            else "documents"
            if documents
            else "concat",
            "dropped_tokens": sum(r["dropped_tokens"] for r in records),
            # The longest input written: BART's noise makes inputs longer than seq_len by an amount no formula
            # bounds (every zero-length span inserts a mask); the loader and the model's positions check this.
            "longest_input": max((int(r.get("longest_input", 0)) for r in records), default=0),
            "kind": spec.packing,
        }
        | ({"pad_tokens": sum(int(r.get("pad_tokens", 0)) for r in records)} if documents else {})
        | (
            {
                "dropped_pairs": sum(int(r.get("dropped_pairs", 0)) for r in records),
                "truncated_pairs": sum(int(r.get("truncated_pairs", 0)) for r in records),
            }
            if parallel
            else {}
        ),
        source_stats=stats,
        inputs=plan["inputs"],
        build={
            k2: opts[k2]
            for k2 in ("valid_fraction", "docs_per_block", "dupe_factor", "sentence_task", "sources")
        }
        | {"doc_boundaries": documents, "global_tokens": opts.get("global_tokens", "")}
        | {"num_slices": k, "blocks": n_blocks}
        | (
            {"parallel": True, "pair_format": opts["pair_format"], "pair_keys": opts["pair_keys"]}
            if parallel
            else {}
        ),
        languages=list(opts.get("languages") or [])
        if parallel
        else [opts["language"]]
        if opts.get("language")
        else [],
    )
    manifest.write(out)
    shutil.rmtree(out / BUILD, ignore_errors=True)
    return manifest


def stage_tokenizer(tok_path: Path, out: Path) -> None:
    """Keep a copy of the tokenizer with the build, so `merge` (maybe on another node) needs no other path."""
    target = out / BUILD / MODEL_FILE
    if not target.exists():
        atomic_write(target, tok_path.read_bytes())
