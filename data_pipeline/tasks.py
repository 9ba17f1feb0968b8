"""Downstream tasks for `cloze finetune` / `cloze evaluate`: GLUE-layout directories and built-in tasks.

A task directory (GLUE layout):

    task.yaml            type: classification | regression | pseudo_perplexity | seq2seq_loss
                         labels: [...]          (classification: the declared label set, as strings)
                         metric: accuracy       (the primary metric; see METRICS)
                         label_words: {0: negative, 1: positive}   (optional: the words T5/BART generate)
    train.tsv | train.jsonl     sentence1, optional sentence2, label (TSV: a header row naming the columns)
    dev.tsv   | dev.jsonl       the same; scores are reported on dev

`pseudo_perplexity` and `seq2seq_loss` tasks score text only: they need `dev` with `sentence1` and no labels (and no
train split). Every example is checked before any training: a missing label, a label outside the declared set, a
non-numeric regression label, a missing text column are errors naming the file and line.

Built-in tasks (`builtin:NAME`), made from text every machine with Python has (data_pipeline/sources.py), in a
fixed order with a deterministic train/dev split (crc32 of the document's text), described in docs/downstream.md:

    builtin:docstring-package  which stdlib package a docstring comes from (one class per package with >= 90
                               docstrings, each capped at 150; 12 classes on CPython 3.11)
    builtin:same-docstring     pair task: do two lines come from the same docstring (balanced)
    builtin:docstring-kind     does a docstring document a module, a class or a function (capped at 300 each)
    builtin:stdlib-ppl         pseudo-perplexity (MLM models) on 200 held-out docstrings
    builtin:stdlib-s2s-loss    held-out denoising loss (T5/BART) on the same docstrings

This module imports nothing from modeling/ or trainer/; the encoding of a text is the pretraining framing
(data_pipeline/hf_tokenizer.py `framing_ids`, read off data_pipeline/packing.py).
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .sources import InputError, stdlib_docstring_nodes

TASK_TYPES = ("classification", "regression", "pseudo_perplexity", "seq2seq_loss")
METRICS = {
    "classification": ("accuracy", "f1", "matthews"),
    "regression": ("pearson", "spearman"),
    "pseudo_perplexity": ("pseudo_perplexity",),
    "seq2seq_loss": ("loss", "perplexity"),
}
"""The metrics each task type reports (f1: binary tasks only, of the second declared label, as GLUE's MRPC/QQP)."""
LOWER_IS_BETTER = {"pseudo_perplexity", "loss", "perplexity"}
BUILTIN_TASKS = (
    "docstring-package",
    "same-docstring",
    "docstring-kind",
    "stdlib-ppl",
    "stdlib-s2s-loss",
)


class TaskError(InputError):
    """A task directory or file that cannot be used, named (file and line), with what to do."""


@dataclass
class Example:
    text_a: str
    text_b: str | None
    label: str | float | None
    """Classification: the label string; regression: the float; text-scoring tasks: None."""
    where: str = ""
    """file:line, for error messages."""


@dataclass
class TaskSpec:
    name: str
    type: str
    labels: list[str] = field(default_factory=list)
    metric: str = ""
    label_words: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        m = METRICS[self.type]
        if self.type == "classification" and len(self.labels) != 2:
            m = tuple(x for x in m if x != "f1")
        return m

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.type == "classification" else 1

    def word(self, label: str) -> str:
        """The text a text-to-text model (T5, BART) generates for `label`."""
        return self.label_words.get(label, label)


@dataclass
class Task:
    spec: TaskSpec
    train: list[Example]
    dev: list[Example]
    source: str

    def majority_score(self) -> dict[str, float]:
        """Dev metrics of always predicting the most frequent training label (classification), or the mean
        training label (regression: correlations are undefined, reported as 0)."""
        if self.spec.type == "classification":
            counts = Counter(str(e.label) for e in self.train)
            top = counts.most_common(1)[0][0]
            acc = sum(str(e.label) == top for e in self.dev) / max(1, len(self.dev))
            out = {"accuracy": acc, "matthews": 0.0}
            if "f1" in self.spec.metrics:
                pos = self.spec.labels[1]
                tp = sum(str(e.label) == pos for e in self.dev) if top == pos else 0
                n_pos = sum(str(e.label) == pos for e in self.dev)
                out["f1"] = 2 * tp / (len(self.dev) + n_pos) if top == pos else 0.0
            return out
        return {m: 0.0 for m in self.spec.metrics}


# ---- task directories -------------------------------------------------------------------------------------------


def _read_spec(directory: Path) -> TaskSpec:
    path = directory / "task.yaml"
    if not path.is_file():
        raise TaskError(
            f"{path} does not exist: a task directory holds task.yaml (type, labels, metric) next to "
            "train/dev .tsv or .jsonl files (docs/downstream.md)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: expected a mapping with keys type, labels, metric")
    unknown = set(raw) - {"type", "labels", "metric", "label_words", "name"}
    if unknown:
        raise TaskError(
            f"{path}: unknown key(s) {sorted(unknown)}; known: type, labels, metric, label_words, name"
        )
    kind = raw.get("type", "")
    if kind not in TASK_TYPES:
        raise TaskError(f"{path}: type {kind!r} is not one of {', '.join(TASK_TYPES)}")
    labels = [str(x) for x in raw.get("labels") or []]
    if kind == "classification" and len(labels) < 2:
        raise TaskError(
            f"{path}: a classification task declares its labels (at least 2), e.g. labels: [0, 1]"
        )
    if len(set(labels)) != len(labels):
        raise TaskError(f"{path}: labels {labels} repeat a value")
    spec = TaskSpec(
        name=str(raw.get("name") or directory.name),
        type=kind,
        labels=labels,
        metric=str(raw.get("metric") or METRICS[kind][0]),
        label_words={str(k): str(v) for k, v in (raw.get("label_words") or {}).items()},
    )
    if spec.metric not in spec.metrics:
        raise TaskError(
            f"{path}: metric {spec.metric!r} is not reported for this task; choose one of {spec.metrics}"
        )
    bad_words = set(spec.label_words) - set(labels)
    if bad_words:
        raise TaskError(
            f"{path}: label_words names labels {sorted(bad_words)} that are not in labels {labels}"
        )
    return spec


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file:line, record) of a .tsv (header row) or .jsonl file."""
    out: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TaskError(f"{path}:{n}: not a JSON object")
            out.append((f"{path}:{n}", rec))
        return out
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise TaskError(
                f"{path}:1: empty file; the first row names the columns (sentence1, sentence2, label)"
            )
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise TaskError(f"{path}:{n}: {len(row)} tab-separated fields, the header has {len(header)}")
            out.append((f"{path}:{n}", dict(zip(header, row))))
    return out


def _example(spec: TaskSpec, where: str, rec: dict[str, Any]) -> Example:
    a = rec.get("sentence1")
    if not isinstance(a, str) or not a.strip():
        raise TaskError(f"{where}: no text in column sentence1")
    b = rec.get("sentence2")
    b = b if isinstance(b, str) and b.strip() else None
    if spec.type in ("pseudo_perplexity", "seq2seq_loss"):
        return Example(a, b, None, where)
    if "label" not in rec or rec["label"] is None or str(rec["label"]).strip() == "":
        raise TaskError(f"{where}: no label (column label); every {spec.type} example needs one")
    raw = rec["label"]
    if spec.type == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise TaskError(f"{where}: label {raw!r} is not a number, and the task is a regression") from None
        if not math.isfinite(value):
            raise TaskError(f"{where}: label {raw!r} is not a finite number")
        return Example(a, b, value, where)
    label = str(raw).strip()
    if label not in spec.labels:
        raise TaskError(
            f"{where}: label {label!r} is not one of the declared labels {spec.labels} (task.yaml)"
        )
    return Example(a, b, label, where)


def _split(directory: Path, spec: TaskSpec, name: str, required: bool) -> list[Example]:
    found = [p for p in (directory / f"{name}.tsv", directory / f"{name}.jsonl") if p.is_file()]
    if not found:
        if required:
            raise TaskError(f"{directory} has no {name}.tsv or {name}.jsonl")
        return []
    if len(found) > 1:
        raise TaskError(f"{directory} has both {found[0].name} and {found[1].name}; keep one")
    examples = [_example(spec, w, r) for w, r in _rows(found[0])]
    if not examples and required:
        raise TaskError(f"{found[0]} holds no examples")
    return examples


def load_task_dir(directory: str | Path) -> Task:
    d = Path(directory)
    if not d.is_dir():
        raise TaskError(f"task {d} is not a directory (nor builtin:{'|'.join(BUILTIN_TASKS)})")
    spec = _read_spec(d)
    scoring = spec.type in ("pseudo_perplexity", "seq2seq_loss")
    train = _split(d, spec, "train", required=not scoring)
    dev = _split(d, spec, "dev", required=True)
    return Task(spec, train, dev, str(d))


def load_task(name: str) -> Task:
    """A task directory, or `builtin:NAME`."""
    if name.startswith("builtin:"):
        return builtin_task(name.removeprefix("builtin:"))
    return load_task_dir(name)


# ---- built-in tasks ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _docstrings() -> list[tuple[str, str, list[str]]]:
    """(top-level package or '' for a top-level module, node kind, lines) of every stdlib docstring, in the order
    of data_pipeline/sources.py `stdlib_docstrings` (parsed once per process)."""
    out = []
    for rel, node, lines in stdlib_docstring_nodes():
        kind = {"Module": "module", "ClassDef": "class"}.get(type(node).__name__, "function")
        out.append((rel[0] if rel else "", kind, lines))
    return out


def _is_dev(text: str, fraction: int = 5) -> bool:
    """One document in `fraction` goes to dev, by a hash of its text (stable across machines and orders)."""
    return zlib.crc32(text.encode()) % fraction == 0


def _first(lines: list[str], n: int = 3) -> str:
    return " ".join(lines[:n])


def _capped(items: list[tuple[str, str]], cap: int) -> list[tuple[str, str]]:
    """At most `cap` (text, label) per label, the first ones in corpus order; duplicates of a text dropped."""
    seen: set[str] = set()
    count: Counter[str] = Counter()
    out = []
    for text, label in items:
        if text in seen or count[label] >= cap:
            continue
        seen.add(text)
        count[label] += 1
        out.append((text, label))
    return out


def _classification(name: str, items: list[tuple[str, str]], labels: list[str]) -> Task:
    train = [Example(t, None, y, f"builtin:{name}") for t, y in items if not _is_dev(t)]
    dev = [Example(t, None, y, f"builtin:{name}") for t, y in items if _is_dev(t)]
    return Task(TaskSpec(name, "classification", labels, "accuracy"), train, dev, f"builtin:{name}")


def builtin_task(name: str) -> Task:
    if name not in BUILTIN_TASKS:
        raise TaskError(
            f"unknown built-in task builtin:{name}; available: {', '.join('builtin:' + t for t in BUILTIN_TASKS)}"
        )
    docs = _docstrings()
    if name == "docstring-package":
        counts = Counter(pkg for pkg, _, _ in docs if pkg)
        labels = sorted(p for p, n in counts.items() if n >= 90)
        items = _capped([(_first(lines), pkg) for pkg, _, lines in docs if pkg in labels], 150)
        return _classification(name, items, labels)
    if name == "docstring-kind":
        labels = ["class", "function", "module"]
        items = _capped([(_first(lines), kind) for _, kind, lines in docs], 300)
        return _classification(name, items, labels)
    if name == "same-docstring":
        return _same_docstring(docs)
    texts = []
    for _, _, lines in docs:
        t = _first(lines, 4)
        if _is_dev(t) and len(t) >= 80:
            texts.append(t)
    dev = [Example(t, None, None, f"builtin:{name}") for t in texts[::7][:200]]
    kind = "pseudo_perplexity" if name == "stdlib-ppl" else "seq2seq_loss"
    return Task(TaskSpec(name, kind, [], METRICS[kind][0]), [], dev, f"builtin:{name}")


def _same_docstring(docs: list[tuple[str, str, list[str]]]) -> Task:
    """Pairs (line i, line j) of one docstring (label 1) or of this docstring and the next long one of the same
    split (label 0), alternating; docstrings of >= 4 lines, each used once; split by docstring."""
    import numpy as np

    long = [lines for _, _, lines in docs if len(lines) >= 4]
    splits: dict[bool, list[list[str]]] = {False: [], True: []}
    for lines in long:
        splits[_is_dev(" ".join(lines))].append(lines)
    out: dict[bool, list[Example]] = {False: [], True: []}
    for dev, group in splits.items():
        rng = np.random.default_rng(17 + dev)
        for k, lines in enumerate(group[:1500]):
            i, j = sorted(int(x) for x in rng.choice(len(lines), 2, replace=False))
            if k % 2 == 0:
                out[dev].append(Example(lines[i], lines[j], "1", "builtin:same-docstring"))
            else:
                other = group[(k + 1 + int(rng.integers(0, len(group) - 1))) % len(group)]
                if other is lines:
                    continue
                out[dev].append(
                    Example(lines[i], other[int(rng.integers(0, len(other)))], "0", "builtin:same-docstring")
                )
    spec = TaskSpec("same-docstring", "classification", ["0", "1"], "accuracy")
    return Task(spec, out[False], out[True], "builtin:same-docstring")


# ---- encoding ----------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]


def encode_pair(
    pieces_a: list[int],
    pieces_b: list[int] | None,
    framing: tuple[list[int], list[int], list[int]],
    max_len: int,
    pair_type_id: int,
) -> Encoded:
    """Frame token ids as pretraining did (`framing` = hf_tokenizer.framing_ids: before A, between A and B, after
    the last text), truncating the longer text from its end until the whole fits `max_len` (BERT's
    truncate_seq_pair)."""
    prefix, middle, end = framing
    a, b = list(pieces_a), list(pieces_b) if pieces_b is not None else None
    extra = len(prefix) + len(end) + (len(middle) if b is not None else 0)
    budget = max_len - extra
    if budget < 2:
        raise TaskError(f"max_len {max_len} leaves no room for text after the {extra} framing tokens")
    while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    ids = [*prefix, *a]
    types = [0] * len(ids)
    if b is not None:
        ids += middle
        types += [0] * len(middle)
        ids += [*b, *end]
        types += [pair_type_id] * (len(b) + len(end))
    else:
        ids += end
        types += [0] * len(end)
    return Encoded(ids, types)
