"""Corpus sources: text files (documents separated by blank lines) and built-in corpora.

Inputs are resolved and checked before anything is written (`resolve_inputs`); reading streams one document at a
time, so memory stays flat whatever the corpus size. Anything odd in the input is counted in `SourceStats` (and so
in the manifest), never dropped silently.
"""

from __future__ import annotations

import ast
import glob
import gzip
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("stdlib-docs",)
MAX_LINE_CHARS = 20_000
"""Longer lines are split into pieces of at most this many characters (counted as `long_lines_split`)."""


class InputError(ValueError):
    """Bad input named by path, with what to do about it."""


@dataclass
class SourceStats:
    files: int = 0
    documents: int = 0
    empty_documents: int = 0
    invalid_utf8_lines: int = 0
    long_lines_split: int = 0
    characters: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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


def _lines(path: str, stats: SourceStats) -> Iterator[str]:
    """Lines of a text file (gzip by suffix), streamed; lines that are not UTF-8 are decoded with replacement
    characters and counted in `invalid_utf8_lines`."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.invalid_utf8_lines += 1
                yield raw.decode("utf-8", errors="replace")


def iter_text_file(path: str, stats: SourceStats) -> Iterator[list[str]]:
    """Documents of a text file: blocks separated by blank lines; each document is a list of lines."""
    stats.files += 1
    doc: list[str] = []
    for line in _lines(path, stats):
        line = line.strip()
        if line:
            doc.extend(_split_long(line, stats))
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def stdlib_docstrings() -> Iterator[list[str]]:
    """Docstrings of the Python standard library (modules, classes, functions), in a fixed order.

    Real English technical prose present on every machine with Python; test suites and private packages are
    skipped. Each docstring is one document, each non-empty line a sentence-ish unit.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "__pycache__",
        "lib2to3",
        "turtledemo",
    }
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
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
                        lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
                        if lines:
                            yield lines


def iter_documents(inputs: list[str], stats: SourceStats) -> Iterator[list[str]]:
    """Every document of the resolved inputs, in order. Empty documents are counted and skipped."""
    for item in inputs:
        if item.startswith(BUILTIN_PREFIX):
            stats.files += 1
            docs: Iterator[list[str]] = stdlib_docstrings()
        else:
            docs = iter_text_file(item, stats)
        for doc in docs:
            if not any(doc):
                stats.empty_documents += 1
                continue
            stats.documents += 1
            stats.characters += sum(len(x) for x in doc)
            yield doc


def iter_lines(inputs: list[str]) -> Iterator[str]:
    """Every non-empty line, for tokenizer training."""
    stats = SourceStats()
    for doc in iter_documents(inputs, stats):
        yield from doc
