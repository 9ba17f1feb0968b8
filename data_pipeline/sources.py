"""Corpus sources: text files (documents separated by blank lines) and built-in corpora.

Inputs are resolved and checked before anything is written (`resolve_inputs`); reading streams one document at a
time, so memory stays flat whatever the corpus size. Anything odd in the input is counted in `SourceStats` (and so
in the manifest), never dropped silently.
"""

from __future__ import annotations

import ast
import functools
import glob
import gzip
import json
import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloze_errors import ClozeError

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("stdlib-docs",)
MAX_EXAMPLES = 5
MAX_LINE_CHARS = 20_000
"""Longer lines are split into pieces of at most this many characters (counted as `long_lines_split`)."""


class InputError(ClozeError, ValueError):
    """Bad input named by path, with what to do about it."""

    same_on_every_rank = True


@dataclass
class SourceStats:
    files: int = 0
    documents: int = 0
    empty_documents: int = 0
    invalid_utf8_lines: int = 0
    long_lines_split: int = 0
    characters: int = 0
    bad_json_lines: int = 0
    missing_field: int = 0
    examples: list[str] = field(default_factory=list)
    """file:line of the first few skipped records, for the summary."""
    field_types: dict[str, int] = field(default_factory=dict)
    """Records skipped for want of a string text field/column, by what was there instead ('absent', 'int', ...)."""
    keys_seen: list[str] = field(default_factory=list)
    """Keys of the first JSON records that lacked the text field (at most MAX_KEYS_SEEN), to suggest --field."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def skipped(self, where: str, why: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {why}")

    def not_text(self, value: Any, keys: list[str] | None = None) -> None:
        """Count a record whose text field/column held `value` (or nothing: `keys` are the record's keys)."""
        self.missing_field += 1
        kind = "absent" if keys is not None else type(value).__name__
        self.field_types[kind] = self.field_types.get(kind, 0) + 1
        for k in keys or []:
            if k not in self.keys_seen and len(self.keys_seen) < MAX_KEYS_SEEN:
                self.keys_seen.append(k)


MAX_KEYS_SEEN = 20


def no_documents_message(inputs: list[str], stats: SourceStats | dict[str, Any], opts: SourceOptions) -> str:
    """Why a corpus gave no document, naming the field or column read and what was found there instead."""
    s = stats.to_dict() if isinstance(stats, SourceStats) else stats
    where = " ".join(inputs)
    if s.get("missing_field"):
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(s.get("field_types", {}).items()))
        keys = s.get("keys_seen") or []
        seen = f"; keys seen in those records: {', '.join(keys)}" if keys else ""
        return (
            f"the corpus {where} gives no documents: none of its {s['missing_field']} records has text in the "
            f"field --field {opts.field!r} (JSONL) / column --column {opts.column!r} (Parquet) (found: {found}"
            f"{seen}); pass --field NAME or --column NAME naming the text"
        )
    if s.get("bad_json_lines"):
        return (
            f"the corpus {where} gives no documents: all {s['bad_json_lines']} non-empty lines are not JSON "
            f"(e.g. {s['examples'][0] if s.get('examples') else '?'}); for plain text pass --format text"
        )
    return f"the corpus {where} holds no documents; check the input files"


FORMATS = ("auto", "text", "jsonl", "parquet")
TEXT_MODES = ("blocks", "lines")


@dataclass
class SourceOptions:
    """How input files are read."""

    format: str = "auto"
    """'auto' (by suffix: .jsonl/.json -> jsonl, .parquet -> parquet, else text), 'text', 'jsonl', 'parquet'."""
    text_mode: str = "blocks"
    """Text files: 'blocks' (documents separated by blank lines) or 'lines' (one document per line)."""
    field: str = "text"
    """JSONL: the key holding a record's text."""
    column: str = "text"
    """Parquet: the column holding a row's text."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.text_mode not in TEXT_MODES:
            raise InputError(f"--text-mode {self.text_mode!r}: choose one of {', '.join(TEXT_MODES)}")


def format_of(path: str, opts: SourceOptions) -> str:
    if path.startswith(BUILTIN_PREFIX):
        return "builtin"
    if opts.format != "auto":
        return opts.format
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def check_inputs(files: list[str], opts: SourceOptions) -> None:
    """Checks that need the files' contents but no full read: Parquet columns exist."""
    for f in files:
        if format_of(f, opts) == "parquet":
            import pyarrow.parquet as pq

            try:
                schema = pq.read_schema(f)
            except Exception as e:  # pyarrow raises several types for a file that is not Parquet
                raise InputError(
                    f"input {f} is not a readable Parquet file ({e}); check the file or --format"
                ) from None
            if opts.column not in schema.names:
                raise InputError(
                    f"input {f} has no column {opts.column!r} (columns: {', '.join(schema.names)}); pass --column NAME"
                )
            import pyarrow as pa

            tp = schema.field(opts.column).type
            if not (pa.types.is_string(tp) or pa.types.is_large_string(tp)):
                text_cols = [
                    n
                    for n in schema.names
                    if pa.types.is_string(schema.field(n).type)
                    or pa.types.is_large_string(schema.field(n).type)
                ]
                raise InputError(
                    f"input {f}: column {opts.column!r} holds {tp}, not text; pass --column NAME naming a string "
                    f"column (string columns: {', '.join(text_cols) or 'none'})"
                )


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Expand directories and globs; every plain path must exist. Returns files and `builtin:` names in order."""
    if not inputs:
        raise InputError("no --input given; pass text files, directories, globs or builtin:stdlib-docs")
    out: list[str] = []
    for item in inputs:
        if item.startswith(BUILTIN_PREFIX):
            name = item[len(BUILTIN_PREFIX) :]
            if name not in BUILTINS:
                raise InputError(
                    f"unknown built-in corpus {item!r}; available: {', '.join('builtin:' + b for b in BUILTINS)}"
                )
            out.append(item)
        elif any(c in item for c in "*?["):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(
                    f"input glob {item} matches no file; check the pattern or quote it for the shell"
                )
            out.extend(matches)
        elif os.path.isdir(item):
            files = sorted(
                str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith(".")
            )
            if not files:
                raise InputError(f"input directory {item} holds no files; point --input at text files")
            out.extend(files)
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise InputError(f"input file {item} does not exist; check the path (or use builtin:stdlib-docs)")
    return out


def _split_long(line: str, stats: SourceStats) -> list[str]:
    if len(line) <= MAX_LINE_CHARS:
        return [line]
    stats.long_lines_split += 1
    return [line[i : i + MAX_LINE_CHARS] for i in range(0, len(line), MAX_LINE_CHARS)]


CHUNK_BYTES = 8 << 20
GZ_CHUNK_BYTES = 256 << 10
"""Compressed input is read in smaller pieces, so damage is located to within 256 KiB of text."""


def _lines(path: str, stats: SourceStats) -> Iterator[str]:
    """Lines of a text file (gzip by suffix), read in 8 MiB chunks (memory stays flat). A chunk that is not valid
    UTF-8 is decoded line by line: bad lines get replacement characters and are counted in `invalid_utf8_lines`."""
    opener = gzip.open if path.endswith(".gz") else open
    rest = b""
    lines = 0
    with opener(path, "rb") as f:
        while True:
            try:
                chunk = f.read(GZ_CHUNK_BYTES if path.endswith(".gz") else CHUNK_BYTES)
            except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt compressed stream, I/O error
                raise InputError(
                    f"input {path} is damaged: unreadable after line {lines} "
                    f"({type(e).__name__}: {' '.join(str(e).split())}); stopped, nothing of it was skipped silently: replace the file "
                    "or leave it out of --input, then rerun"
                ) from None
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest = chunk
                continue
            rest = chunk[cut:]
            lines += chunk.count(b"\n", 0, cut)
            yield from _decode(chunk[:cut], stats)
    if rest:
        yield from _decode(rest, stats)


def _decode(raw: bytes, stats: SourceStats) -> list[str]:
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        out = []
        for line in raw.split(b"\n"):
            try:
                out.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                stats.invalid_utf8_lines += 1
                out.append(line.decode("utf-8", errors="replace"))
        if out and out[-1] == "":
            out.pop()
        return out


def iter_text_file(path: str, stats: SourceStats, mode: str = "blocks") -> Iterator[list[str]]:
    """Documents of a text file: blocks separated by blank lines (or one per line); each a list of lines."""
    stats.files += 1
    doc: list[str] = []
    for line in _lines(path, stats):
        line = line.strip()
        if mode == "lines":
            yield _split_long(line, stats) if line else []
        elif line:
            doc.extend(_split_long(line, stats))
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _text_to_doc(text: str, stats: SourceStats) -> list[str]:
    return [piece for raw in text.splitlines() if (ln := raw.strip()) for piece in _split_long(ln, stats)]


def iter_jsonl_file(path: str, stats: SourceStats, key: str) -> Iterator[list[str]]:
    """One document per JSON line, from `key`. Lines that are not JSON objects or lack `key` are skipped and counted."""
    stats.files += 1
    for lineno, line in enumerate(_lines(path, stats), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats.bad_json_lines += 1
            stats.skipped(f"{path}:{lineno}", "not JSON")
            continue
        text = record.get(key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            if isinstance(record, dict) and key not in record:
                stats.not_text(None, keys=[str(k) for k in record])
            else:
                stats.not_text(text if isinstance(record, dict) else record)
            stats.skipped(f"{path}:{lineno}", f"no string field {key!r}")
            continue
        yield _text_to_doc(text, stats)


def iter_parquet_file(path: str, stats: SourceStats, column: str) -> Iterator[list[str]]:
    """One document per row of `column`, read one row group at a time (memory stays flat)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stats.files += 1
    rg = -1
    try:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            texts = pf.read_row_group(rg, columns=[column]).column(0).to_pylist()
            for text in texts:
                if not isinstance(text, str):
                    stats.not_text(text)
                    stats.skipped(f"{path}:row group {rg}", f"null or non-text {column!r}")
                    continue
                yield _text_to_doc(text, stats)
    except (OSError, pa.ArrowException) as e:  # a corrupt page, footer or compressed block
        at = f"row group {rg}" if rg >= 0 else "its footer"
        raise InputError(
            f"input {path} is damaged: {at} is unreadable ({type(e).__name__}: {' '.join(str(e).split())}); stopped, nothing of it was "
            "skipped silently: replace the file or leave it out of --input, then rerun"
        ) from None


STDLIB_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "__pycache__",
        "lib2to3",
        "turtledemo",
    }
)
"""Standard-library folders whose docstrings are left out: test suites, installed and private packages."""


def stdlib_docstring_nodes() -> Iterator[tuple[tuple[str, ...], ast.AST, list[str]]]:
    """(the file's folder below the stdlib root as path parts, the module/class/function node, the docstring's
    stripped non-empty lines) of every docstring of 40 characters or more, in a fixed order (sorted folders and
    files, `ast.walk` order within a file). Shared by the pretraining corpus (`stdlib_docstrings`) and the
    downstream tasks built from it (data_pipeline/tasks.py)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith("."))
        rel = Path(dirpath).relative_to(root).parts
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(dirpath, fn).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= 40:
                        yield rel, node, [ln.strip() for ln in doc.splitlines() if ln.strip()]


def stdlib_docstrings() -> Iterator[list[str]]:
    """Docstrings of the Python standard library (modules, classes, functions), in a fixed order.

    Real English technical prose present on every machine with Python; test suites and private packages are
    skipped. Each docstring is one document, each non-empty line a sentence-ish unit.
    """
    for lines in _stdlib_docstring_lines():
        yield list(lines)


@functools.cache
def _stdlib_docstring_lines() -> tuple[tuple[str, ...], ...]:
    """The built-in corpus, parsed once per process (walking and parsing the stdlib takes seconds; the tokenizer,
    the shard writer and the demo each read it)."""
    return tuple(tuple(lines) for _, _, lines in stdlib_docstring_nodes() if lines)


def iter_documents(
    inputs: list[str], stats: SourceStats, opts: SourceOptions | None = None
) -> Iterator[list[str]]:
    """Every document of the resolved inputs, in order. Empty documents are counted and skipped."""
    opts = opts or SourceOptions()
    for item in inputs:
        fmt = format_of(item, opts)
        docs: Iterator[list[str]]
        if fmt == "builtin":
            stats.files += 1
            docs = stdlib_docstrings()
        elif fmt == "jsonl":
            docs = iter_jsonl_file(item, stats, opts.field)
        elif fmt == "parquet":
            docs = iter_parquet_file(item, stats, opts.column)
        else:
            docs = iter_text_file(item, stats, opts.text_mode)
        for doc in docs:
            if not any(doc):
                stats.empty_documents += 1
                continue
            stats.documents += 1
            stats.characters += sum(len(x) for x in doc)
            yield doc


def iter_lines(
    inputs: list[str], opts: SourceOptions | None = None, stats: SourceStats | None = None
) -> Iterator[str]:
    """Every non-empty line, for tokenizer training."""
    stats = SourceStats() if stats is None else stats
    for doc in iter_documents(inputs, stats, opts):
        yield from doc
