"""Parallel (translation) pairs for `cloze shards --parallel` (the tlm objective): reading, counting, checking.

A pair is (text1, text2, lang1, lang2). Inputs:
  - JSONL: one object per line, the texts and languages under `keys` (default src, tgt, src_lang, tgt_lang);
  - TSV: four tab-separated columns text1, text2, lang1, lang2 (by suffix, or `--pair-format tsv`);
  - `builtin:gettext-pairs:LANG`: English messages and their LANG translations from the system's gettext
    catalogues (data_pipeline/sources.py `iter_gettext_pairs`).
A line that gives no pair (not JSON, a wrong number of columns, a missing or empty side or language, both sides in
the same language) is counted in `PairStats` and skipped, like bad records of other inputs; a missing file, or a
file none of whose lines gives a pair, is an `InputError` naming the file (and its first bad line) before anything
is written (`scan_parallel_inputs`, which also collects the dataset's languages).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from .sources import InputError, SourceStats, _lines, resolve_inputs

GETTEXT_PREFIX = "builtin:gettext-pairs:"
PAIR_FORMATS = ("auto", "jsonl", "tsv")
DEFAULT_KEYS = ("src", "tgt", "src_lang", "tgt_lang")

Pair = tuple[str, str, str, str]
"""(text1, text2, lang1, lang2)."""


class ParallelInputError(InputError):
    """Parallel input that gives no pair: the message names the file, its line and what to do."""


@dataclass
class ParallelOptions:
    """How parallel inputs are read (`--pair-format`, `--pair-keys`)."""

    format: str = "auto"
    """'auto' (.jsonl/.json/.ndjson -> jsonl, anything else tsv), 'jsonl' or 'tsv'."""
    keys: list[str] = field(default_factory=lambda: list(DEFAULT_KEYS))
    """JSONL keys of text1, text2, lang1, lang2."""

    def __post_init__(self) -> None:
        if self.format not in PAIR_FORMATS:
            raise InputError(f"--pair-format {self.format!r}: choose one of {', '.join(PAIR_FORMATS)}")
        if len(self.keys) != 4 or len(set(self.keys)) != 4 or not all(self.keys):
            raise InputError(
                f"--pair-keys {','.join(self.keys)!r}: give four different JSON keys, text1,text2,lang1,lang2 "
                f"(default {','.join(DEFAULT_KEYS)})"
            )


@dataclass
class PairStats(SourceStats):
    """SourceStats of parallel input (`documents` counts pairs read): the reasons a line gave no pair."""

    bad_tsv_lines: int = 0
    """TSV lines without exactly 4 tab-separated columns."""
    missing_side: int = 0
    """A text absent, not a string, or empty."""
    missing_language: int = 0
    """A language absent, not a string, or empty."""
    same_language: int = 0
    """Both sides in the same language (XLM's concat_batches with reset_positions asserts lang1 != lang2)."""

    def bad_lines(self) -> int:
        return (
            self.bad_json_lines
            + self.bad_tsv_lines
            + self.missing_side
            + self.missing_language
            + self.same_language
        )


def pair_format_of(path: str, opts: ParallelOptions) -> str:
    if path.startswith(GETTEXT_PREFIX):
        return "gettext"
    if opts.format != "auto":
        return opts.format
    name = path[:-3] if path.endswith(".gz") else path
    return "jsonl" if name.endswith((".jsonl", ".json", ".ndjson")) else "tsv"


def resolve_parallel_inputs(inputs: list[str]) -> list[str]:
    """Files, directories and globs as for other inputs (every path must exist), and `builtin:gettext-pairs:LANG`."""
    if not inputs:
        raise InputError(
            "no --input given; pass TSV/JSONL pair files or builtin:gettext-pairs:LANG (e.g. fr)"
        )
    out: list[str] = []
    for item in inputs:
        if item.startswith(GETTEXT_PREFIX):
            if not item[len(GETTEXT_PREFIX) :].strip():
                raise InputError(f"input {item!r} names no language; use e.g. {GETTEXT_PREFIX}fr")
            out.append(item)
        elif item.startswith("builtin:"):
            raise InputError(
                f"input {item!r} is not parallel text; --parallel reads TSV/JSONL pair files or "
                f"{GETTEXT_PREFIX}LANG"
            )
        else:
            out.extend(resolve_inputs([item]))
    return out


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _check(
    path: str, lineno: int, pair: tuple[object, object, object, object], stats: PairStats
) -> Pair | None:
    """The stripped pair, or None (counted, with the first examples kept) when a side or language is missing."""
    a, b, la, lb = (_text(x) for x in pair)
    where = f"{path}:{lineno}"
    if not a or not b:
        stats.missing_side += 1
        stats.skipped(where, f"no text in {'the first' if not a else 'the second'} side")
        return None
    if not la or not lb:
        stats.missing_language += 1
        stats.skipped(where, f"no language for {'the first' if not la else 'the second'} side")
        return None
    if la == lb:
        stats.same_language += 1
        stats.skipped(where, f"both sides in language {la!r}")
        return None
    return a, b, la, lb


def _raw_pairs(path: str, stats: PairStats, opts: ParallelOptions) -> Iterator[tuple[int, Pair | None]]:
    """(line number, the pair or None when the line gives none) for every non-blank line."""
    fmt = pair_format_of(path, opts)
    if fmt == "gettext":
        try:
            from .sources import iter_gettext_pairs
        except ImportError:
            raise InputError(
                f"input {path}: this cloze has no gettext corpus (data_pipeline.sources.iter_gettext_pairs); "
                "pass TSV or JSONL pair files instead"
            ) from None
        for n, pair in enumerate(iter_gettext_pairs(path[len(GETTEXT_PREFIX) :]), 1):
            yield n, _check(path, n, (pair[0], pair[1], pair[2], pair[3]), stats)
        return
    for lineno, line in enumerate(_lines(path, stats), 1):
        if not line.strip():
            continue
        if fmt == "tsv":
            cols = line.split("\t")
            if len(cols) != 4:
                stats.bad_tsv_lines += 1
                stats.skipped(f"{path}:{lineno}", f"{len(cols)} tab-separated columns, expected 4")
                yield lineno, None
                continue
            yield lineno, _check(path, lineno, (cols[0], cols[1], cols[2], cols[3]), stats)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            stats.bad_json_lines += 1
            stats.skipped(f"{path}:{lineno}", "not a JSON object")
            yield lineno, None
            continue
        k1, k2, k3, k4 = opts.keys
        yield (
            lineno,
            _check(path, lineno, (record.get(k1), record.get(k2), record.get(k3), record.get(k4)), stats),
        )


def iter_pair_file(path: str, stats: PairStats, opts: ParallelOptions | None = None) -> Iterator[Pair]:
    """The pairs of one input, bad lines counted in `stats` and skipped."""
    stats.files += 1
    for _, pair in _raw_pairs(path, stats, opts or ParallelOptions()):
        if pair is not None:
            stats.documents += 1
            stats.characters += len(pair[0]) + len(pair[1])
            yield pair


def iter_pairs(files: list[str], stats: PairStats, opts: ParallelOptions | None = None) -> Iterator[Pair]:
    """Every pair of the resolved inputs, in order."""
    for path in files:
        yield from iter_pair_file(path, stats, opts)


def _why_no_pair(path: str, stats: PairStats, lines: int, opts: ParallelOptions) -> str:
    fmt = pair_format_of(path, opts)
    if not lines:
        return f"input {path} holds no pairs (no non-blank line); check the file, or leave it out of --input"
    first = stats.examples[0] if stats.examples else f"{path}:1"
    if fmt == "jsonl":
        how = (
            f"each line must be a JSON object with the keys {', '.join(opts.keys)} (text1, text2, lang1, lang2; "
            "other keys: --pair-keys K1,K2,K3,K4)"
        )
    elif fmt == "tsv":
        how = "each line must be text1<TAB>text2<TAB>lang1<TAB>lang2 (JSONL: name the file .jsonl or --pair-format jsonl)"
    else:
        how = "pick a language the system has translations for"
    return f"input {path}: none of its {lines} lines gives a pair (first: {first}); {how}"


def scan_parallel_inputs(files: list[str], opts: ParallelOptions | None = None) -> list[str]:
    """Read every input once before anything is written: a file none of whose lines gives a pair is an
    InputError naming the file and its first bad line; returns the dataset's languages, sorted (the indices the
    `langs` member holds)."""
    opts = opts or ParallelOptions()
    languages: set[str] = set()
    for path in files:
        stats = PairStats()
        lines = good = 0
        for _, pair in _raw_pairs(path, stats, opts):
            lines += 1
            if pair is not None:
                good += 1
                languages.update(pair[2:])
        if not good:
            raise ParallelInputError(_why_no_pair(path, stats, lines, opts))
    return sorted(languages)
