"""Corpus sources: text files (documents separated by blank lines) and built-in corpora.

Inputs are resolved and checked before anything is written (`resolve_inputs`); reading streams one document at a
time, so memory stays flat whatever the corpus size. Anything odd in the input is counted in `SourceStats` (and so
in the manifest), never dropped silently.
"""

from __future__ import annotations

import ast
import codecs
import functools
import glob
import gzip
import json
import os
import re
import struct
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloze_errors import ClozeError

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("stdlib-docs",)
GETTEXT = "gettext"
GETTEXT_PAIRS = "gettext-pairs"
"""`builtin:gettext:LANG` (monolingual text in LANG) and `builtin:gettext-pairs:LANG` (parallel en-LANG), from the
system's GNU gettext catalogs (see `iter_gettext_documents`, `iter_gettext_pairs`)."""
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
            kind, _, lang = name.partition(":")
            if kind in (GETTEXT, GETTEXT_PAIRS) and _:
                check_gettext_language(lang, parallel=kind == GETTEXT_PAIRS, item=item)
            elif name not in BUILTINS:
                names = [f"builtin:{b}" for b in BUILTINS] + [
                    f"builtin:{GETTEXT}:LANG",
                    f"builtin:{GETTEXT_PAIRS}:LANG",
                ]
                raise InputError(f"unknown built-in corpus {item!r}; available: {', '.join(names)}")
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
            docs = _builtin_documents(item)
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


# ---- built-in multilingual corpora: the system's GNU gettext catalogs ---------------------------------------------

GETTEXT_ROOT = "/usr/share/locale"
"""Where the catalogs are: GETTEXT_ROOT/LANG/LC_MESSAGES/DOMAIN.mo (Debian and most Linux distributions)."""
ENGLISH = "en"
"""`builtin:gettext:en` is the catalogs' English source strings (msgids), not the `en` locale's translations."""
CHAR_LANGS = frozenset({"ja", "zh", "ko", "th", "lo", "km", "my"})
"""Languages (the code before `_`/`@`) whose strings are measured in characters, not space-separated words."""
MIN_WORDS = 3
MIN_CHARS = 6
MIN_LETTER_SHARE = 0.5
"""A string is kept if at least this share of its non-space characters are letters (formats removed first)."""

_FORMAT = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32|I)?[diouxXeEfFgGaAcCsSpnm%]"
    r"|%<PRI[a-zA-Z0-9]+>|%\([^)\s]{1,40}\)[-+ #0]*\d*(?:\.\d+)?[a-zA-Z]|%\d+|\{[\w.]*(?::[^{}]*)?\}"
)
"""printf (`%s`, `%-10.3lf`, `%1$s`, `%<PRIu64>`), Python (`%(name)s`, `{0}`, `{name:>4}`) and Qt (`%1`) formats."""
_ACCEL_PAREN = re.compile(r"\s*[(（]\s*[_&~][^\W_]\s*[)）]")
"""A CJK-style accelerator after the label: `ファイル(_F)`, `文件(&F)`."""
_ACCEL_UNDERSCORE = re.compile(r"(?<!\w)_(?=[^\W\d_])")
"""GTK: `_File`, `Save _As` (an underscore inside a word, `file_name`, is kept)."""
_ACCEL_AMP = re.compile(r"&(?=[^\W\d_])(?![A-Za-z]{2,8};|#\d+;)")
"""Qt/KDE: `&File` (`&amp;`-style entities and `&&` are not accelerators)."""


_NOT_LETTER = re.compile(
    r"[\d!-/:-@\[-`{-~\u00a0-\u00bf\u00d7\u00f7\u2000-\u2bff\u3000-\u303f\uff01-\uff20\uff3b-\uff40\uff5b-\uff65]"
)
"""What is not a letter (but space): digits, ASCII and Latin-1 punctuation, general punctuation, arrows and symbols,
CJK and full-width punctuation (so combining marks of Indic scripts count as letters)."""
NAME_LIST_DOMAINS = re.compile(r"iso_\d+")
"""iso-codes' catalogs (iso_639-3, iso_3166-2, ...): lists of language, country and place names, not text."""


class GettextLanguageError(InputError):
    """A `builtin:gettext[-pairs]:LANG` naming a language without catalogs, or parallel text read as monolingual."""


def _lang_base(lang: str) -> str:
    return re.split(r"[_@.-]", lang, maxsplit=1)[0].lower()


def clean_gettext_string(text: str) -> str:
    """A catalog string as text: accelerators stripped (`_File`, `&File`, `(_F)`), `&&` -> `&`, every run of
    whitespace (newlines, tabs) one space, stripped."""
    if "(" in text or "\uff08" in text:
        text = _ACCEL_PAREN.sub("", text)
    if "_" in text:
        text = _ACCEL_UNDERSCORE.sub("", text)
    if "&" in text:
        text = _ACCEL_AMP.sub("", text).replace("&&", "&")
    return " ".join(text.split())


def gettext_string_ok(text: str, lang: str) -> bool:
    """Whether a cleaned string is worth keeping as text in `lang`: at least MIN_LETTER_SHARE of its non-space
    characters are letters (or combining marks) once format specifiers are removed, and it has at least MIN_WORDS
    words holding a letter (space-separated languages) or MIN_CHARS letters (CHAR_LANGS). Regular expressions
    only (no per-character Python loop): a language's ~100 catalogs are filtered in well under a second."""
    chars = len(text) - text.count(" ")
    if chars == 0:
        return False
    bare = _FORMAT.sub("", text) if "%" in text or "{" in text else text
    words = _NOT_LETTER.sub("", bare).split()  # words holding a letter, reduced to their letters
    letters = sum(map(len, words))
    if letters < MIN_LETTER_SHARE * chars:
        return False
    if _lang_base(lang) in CHAR_LANGS:
        return letters >= MIN_CHARS
    return len(words) >= MIN_WORDS


def read_mo(path: str, translations: bool = True) -> list[tuple[str, str]]:
    """(msgid, msgstr) of every translated message of a GNU .mo catalog, in the file's order (sorted by msgid).

    Ports the parser of Python's `gettext.GNUTranslations._parse` (the .mo layout of GNU gettext), with three
    differences: the header (empty msgid) is read for its charset only, and is not decoded as UTF-8 first nor its
    Plural-Forms parsed (the stdlib fails on 8 of this machine's catalogs: 7 whose header names a translator in
    Latin-1, 1 with a malformed Plural-Forms line); a plural message
    gives one pair, its singular msgid with the first form; a `msgctxt` prefix (`ctx\\x04`) is dropped. Undecodable
    bytes become U+FFFD. `translations=False` leaves msgstr empty (reads the English side only, faster).
    A file that is not a .mo catalog is an InputError naming it."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic == b"\xde\x12\x04\x95":
        end = "<"
    elif magic == b"\x95\x04\x12\xde":
        end = ">"
    else:
        raise InputError(
            f"{path} is not a GNU .mo catalog (bad magic number); remove it or reinstall its package"
        )
    try:
        _, n, orig_at, trans_at = struct.unpack_from(end + "4I", data, 4)
        orig = struct.unpack_from(f"{end}{2 * n}I", data, orig_at)
        trans = struct.unpack_from(f"{end}{2 * n}I", data, trans_at)
    except struct.error:
        raise InputError(f"{path} is a truncated .mo catalog; reinstall its package") from None
    charset = "utf-8"
    raw: list[tuple[bytes, bytes]] = []
    for i in range(0, 2 * n, 2):
        mlen, mat, tlen, tat = orig[i], orig[i + 1], trans[i], trans[i + 1]
        if tlen == 0:
            continue
        if mlen == 0:
            found = re.search(rb"charset=([-\w]+)", data[tat : tat + tlen])
            if found:
                charset = found.group(1).decode("ascii")
            continue
        msgid = data[mat : mat + mlen]
        ctx = msgid.find(b"\x04")
        if ctx >= 0:
            msgid = msgid[ctx + 1 :]
        msgid = msgid.split(b"\x00", 1)[0]
        raw.append((msgid, data[tat : tat + tlen].split(b"\x00", 1)[0] if translations else b""))
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return [(m.decode(charset, "replace"), t.decode(charset, "replace")) for m, t in raw]


@functools.cache
def gettext_catalogs() -> dict[str, tuple[str, ...]]:
    """Every language directory under GETTEXT_ROOT holding catalogs -> its .mo paths, sorted (read once per
    process; a directory listing, no catalog is opened)."""
    out: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(GETTEXT_ROOT, "*", "LC_MESSAGES", "*.mo"))):
        out.setdefault(Path(path).parent.parent.name, []).append(path)
    return {lang: tuple(paths) for lang, paths in sorted(out.items())}


@dataclass(frozen=True)
class GettextCorpus:
    """One language's filtered catalogs: (domain, its (english, translation) pairs) in sorted path order, every
    pair once in the language (the first catalog holding it keeps it), and what each filter dropped."""

    lang: str
    catalogs: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    stats: dict[str, int]

    def pairs(self) -> Iterator[tuple[str, str]]:
        for _, pairs in self.catalogs:
            yield from pairs


@functools.lru_cache(maxsize=1 << 18)
def _english(msgid: str) -> tuple[str, bool]:
    """A msgid cleaned, and whether it passes the English rules (cached: most msgids recur in every language)."""
    en = clean_gettext_string(msgid)
    return en, gettext_string_ok(en, ENGLISH)


@functools.cache
def gettext_corpus(lang: str) -> GettextCorpus:
    """LANG's catalogs read and filtered (cached per process: one language's ~100 catalogs take ~0.05-0.1 s).

    Rules (docs/data.md, "Multilingual and parallel text"), in this order, each counted in `stats`: the header and
    untranslated messages are skipped; iso-codes' name lists are dropped (`name_lists`); both strings are cleaned (`clean_gettext_string`); a pair whose
    translation equals its msgid (case-insensitively) is dropped (`identical`); the English side must pass
    `gettext_string_ok(.., "en")` and the translation `gettext_string_ok(.., LANG)` (`too_short_or_symbols`); a
    pair already kept from an earlier catalog is dropped (`duplicate`)."""
    paths = gettext_catalogs().get(lang)
    if not paths:
        raise GettextLanguageError(_unknown_language(lang, f"builtin:{GETTEXT}:{lang}"))
    stats = {
        "catalogs": len(paths),
        "messages": 0,
        "name_lists": 0,
        "identical": 0,
        "too_short_or_symbols": 0,
        "duplicate": 0,
    }
    seen: set[tuple[str, str]] = set()
    catalogs = []
    for path in paths:
        kept: list[tuple[str, str]] = []
        messages = read_mo(path)
        if NAME_LIST_DOMAINS.match(Path(path).stem):
            stats["messages"] += len(messages)
            stats["name_lists"] += len(messages)
            messages = []
        for msgid, msgstr in messages:
            stats["messages"] += 1
            en, en_ok = _english(msgid)
            tr = clean_gettext_string(msgstr)
            if tr.casefold() == en.casefold():
                stats["identical"] += 1
            elif not (en_ok and gettext_string_ok(tr, lang)):
                stats["too_short_or_symbols"] += 1
            elif (en, tr) in seen:
                stats["duplicate"] += 1
            else:
                seen.add((en, tr))
                kept.append((en, tr))
        catalogs.append((Path(path).stem, tuple(kept)))
    stats["pairs"] = len(seen)
    return GettextCorpus(lang, tuple(catalogs), stats)


@functools.cache
def _gettext_english() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`builtin:gettext:en`: the cleaned English msgids of every catalog (but the iso-codes name lists) that pass
    `gettext_string_ok(.., "en")`,
    once each, one document per domain (sorted domain names; a string belongs to the domain first seen holding it,
    scanning catalogs in sorted path order). Reads the msgid side only, each distinct msgid decoded once."""
    seen: set[str] = set()
    domains: dict[str, list[str]] = {}
    raw_seen: set[bytes] = set()
    for path in sorted(p for paths in gettext_catalogs().values() for p in paths):
        domain = Path(path).stem
        if NAME_LIST_DOMAINS.match(domain):
            continue
        for msgid, _ in read_mo(path, translations=False):
            key = msgid.encode()
            if key in raw_seen:
                continue
            raw_seen.add(key)
            en, ok = _english(msgid)
            if ok and en not in seen:
                seen.add(en)
                domains.setdefault(domain, []).append(en)
    return tuple((d, tuple(lines)) for d, lines in sorted(domains.items()))


def _language_counts() -> list[tuple[str, int]]:
    """(language, messages in its catalogs) from the catalogs' headers only (fast), most first."""
    counts = []
    for lang, paths in gettext_catalogs().items():
        n = 0
        for path in paths:
            with open(path, "rb") as f:
                head = f.read(12)
            if len(head) == 12 and head[:4] in (b"\xde\x12\x04\x95", b"\x95\x04\x12\xde"):
                n += struct.unpack("<I" if head[0] == 0xDE else ">I", head[8:12])[0]
        counts.append((lang, n))
    return sorted(counts, key=lambda x: (-x[1], x[0]))


def _unknown_language(lang: str, item: str) -> str:
    if not gettext_catalogs():
        return (
            f"{item}: there are no gettext catalogs under {GETTEXT_ROOT} (*/LC_MESSAGES/*.mo) on this machine; "
            "install some packages' translations (Debian: they come with the packages) or use other inputs"
        )
    top = ", ".join(f"{lg} ({n:,})" for lg, n in _language_counts()[:20])
    what = "an empty language" if not lang else f"no language {lang!r}"
    return (
        f"{item}: {what} in the gettext catalogs under {GETTEXT_ROOT}; the language is a locale directory name "
        f"(fr, de, pt_BR, zh_CN, ...). {len(gettext_catalogs())} languages; the 20 with most catalog messages "
        f"(before filtering): {top}; gettext_languages(min_pairs) in data_pipeline/sources.py lists filtered counts"
    )


def check_gettext_language(lang: str, parallel: bool = False, item: str | None = None) -> None:
    """A clear GettextLanguageError unless `lang` has catalogs (no catalog is parsed: cheap, for resolve_inputs)."""
    item = item or f"builtin:{GETTEXT_PAIRS if parallel else GETTEXT}:{lang}"
    if parallel and lang == ENGLISH:
        raise GettextLanguageError(
            f"{item}: English is the source side of every pair; name the other language "
            f"(builtin:{GETTEXT_PAIRS}:fr gives en-fr pairs)"
        )
    if lang == ENGLISH and not parallel and gettext_catalogs():
        return
    if not lang or "/" in lang or lang not in gettext_catalogs():
        raise GettextLanguageError(_unknown_language(lang, item))


def iter_gettext_pairs(lang: str) -> Iterator[tuple[str, str, str, str]]:
    """Parallel text: (english, translation, "en", lang) for every filtered pair of LANG's catalogs, in a fixed
    order (sorted catalog paths, then each catalog's order); `builtin:gettext-pairs:LANG`. Raises
    GettextLanguageError for a language without catalogs."""
    check_gettext_language(lang, parallel=True)
    for en, tr in gettext_corpus(lang).pairs():
        yield en, tr, ENGLISH, lang


def iter_gettext_documents(lang: str) -> Iterator[list[str]]:
    """Monolingual text in LANG (`builtin:gettext:LANG`): one document per catalog (its kept translations, one
    per line; catalogs left empty are skipped), each string once in the language, in sorted catalog path order.
    `en` gives the English msgids of all catalogs (`_gettext_english`)."""
    check_gettext_language(lang)
    if lang == ENGLISH:
        for _, lines in _gettext_english():
            yield list(lines)
        return
    seen: set[str] = set()
    for _, pairs in gettext_corpus(lang).catalogs:
        doc = []
        for _, tr in pairs:
            if tr not in seen:
                seen.add(tr)
                doc.append(tr)
        if doc:
            yield doc


def gettext_stats(lang: str) -> dict[str, int]:
    """What the filters did to LANG's catalogs: catalogs, messages (translated, header excluded), name_lists, identical,
    too_short_or_symbols, duplicate (pairs dropped by each rule), pairs (kept), lines (monolingual strings kept)."""
    check_gettext_language(lang)
    if lang == ENGLISH:
        docs = _gettext_english()
        return {"catalogs": len(docs), "lines": sum(len(lines) for _, lines in docs)}
    out = dict(gettext_corpus(lang).stats)
    out["lines"] = sum(len(doc) for doc in iter_gettext_documents(lang))
    return out


def gettext_languages(min_pairs: int = 1) -> dict[str, int]:
    """Languages with at least `min_pairs` filtered en-LANG pairs -> their pair count, most first. Parses every
    catalog once per process (~3,700 here: a few seconds)."""
    counts = {lang: gettext_corpus(lang).stats["pairs"] for lang in gettext_catalogs() if lang != ENGLISH}
    return dict(sorted(((k, v) for k, v in counts.items() if v >= min_pairs), key=lambda x: (-x[1], x[0])))


def _builtin_documents(item: str) -> Iterator[list[str]]:
    """The documents of a resolved `builtin:` input."""
    kind, _, lang = item[len(BUILTIN_PREFIX) :].partition(":")
    if kind == GETTEXT:
        return iter_gettext_documents(lang)
    if kind == GETTEXT_PAIRS:
        raise GettextLanguageError(
            f"{item} is parallel text (en-{lang} pairs), not monolingual documents: read it with the parallel "
            f"option (`cloze shards --parallel`, iter_gettext_pairs in data_pipeline/sources.py), or use "
            f"builtin:{GETTEXT}:{lang} for {lang} text alone"
        )
    return stdlib_docstrings()
