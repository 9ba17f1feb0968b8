"""Pack tokenized documents into sequences of exactly `length` tokens.

The token stream is every document's tokens followed by a separator (documents stay delimited; T5 has none, as
T5's `reduce_concat_tokens` joins documents directly, t5/data/preprocessors.py); each sequence
is prefix + the next `length - len(prefix) - len(suffix)` stream tokens + suffix. No padding is ever written; the
stream's last partial sequence is dropped and counted (`dropped_tokens`). The positions where a line ends are
kept with each sequence (BART's sentence permutation uses them).

    encoder (mlm, wwm, span, electra, tokens):  [CLS] body            separator [SEP]
    raw (t5):                                   body                  no separator
    bart:                                       <s> body </s>         separator </s>
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .objectives import Packed, Vocab


class Packer:
    """The packing layout: prefix + body + suffix = length, documents in the stream ended by `separator` (None:
    documents follow each other directly)."""

    def __init__(self, length: int, prefix: list[int], suffix: list[int], separator: int | None) -> None:
        self.length = length
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.body = length - len(prefix) - len(suffix)
        if self.body < 4:
            raise ValueError(f"--seq-len {length} is too short; use at least {len(prefix) + len(suffix) + 4}")
        self.separator = separator


PACKINGS: dict[str, Callable[[int, Vocab], Packer]] = {
    "encoder": lambda length, vocab: Packer(length, [vocab.cls], [], vocab.sep),
    "raw": lambda length, vocab: Packer(length, [], [], None),  # T5 reduce_concat_tokens: no separator
    "bart": lambda length, vocab: Packer(length, [vocab.bos], [vocab.eos], vocab.eos),
}
"""Packing kind (an `ObjectiveSpec.packing`, manifest packing.kind) -> its layout; a plugin may add one."""


def packer_for(kind: str, length: int, vocab: Vocab) -> Packer:
    layout = PACKINGS.get(kind)
    if layout is None:
        raise ValueError(f"unknown packing {kind!r}; known: {', '.join(PACKINGS)}")
    return layout(length, vocab)


@dataclass
class PackedBlock:
    """All the sequences packed from one block of documents, as one (N, length) array."""

    tokens: np.ndarray
    ends: np.ndarray
    """Stream positions just past each line's end (for line_ends)."""
    body: int
    prefix_len: int
    dropped_tokens: int

    def __len__(self) -> int:
        return len(self.tokens)

    def line_ends(self, i: int) -> np.ndarray:
        lo, hi = i * self.body, (i + 1) * self.body
        a, b = np.searchsorted(self.ends, [lo + 1, hi])
        return self.ends[a:b] - lo + self.prefix_len

    def sequence(self, i: int) -> Packed:
        return Packed(self.tokens[i], self.line_ends(i))


def pack_block(docs: Iterable[list[list[int]]], packer: Packer) -> PackedBlock:
    """Pack a block's documents (each a list of lines' token ids) with numpy; the remainder is dropped."""
    pieces: list[list[int]] = []
    lengths: list[int] = []
    sep = None if packer.separator is None else [packer.separator]
    for doc in docs:
        for line in doc:
            if line:
                pieces.append(line)
                lengths.append(len(line))
        if sep is not None:
            pieces.append(sep)
            lengths.append(-1)  # a separator: one token, not a line end
    total = sum(abs(n) for n in lengths)
    stream = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=total)
    sizes = np.abs(np.asarray(lengths, dtype=np.int64))
    ends = np.cumsum(sizes)[np.asarray(lengths, dtype=np.int64) > 0]
    n = total // packer.body
    body = stream[: n * packer.body].reshape(n, packer.body)
    tokens = np.concatenate(
        [
            np.broadcast_to(packer.prefix, (n, len(packer.prefix))),
            body,
            np.broadcast_to(packer.suffix, (n, len(packer.suffix))),
        ],
        axis=1,
    ).astype(np.int32)
    return PackedBlock(tokens, ends, packer.body, len(packer.prefix), total - n * packer.body)


@dataclass
class PairBlock:
    """Sentence pairs of one block for SOP / NSP: [CLS] A [SEP] B [SEP] <pad>..., padded to `length`."""

    tokens: np.ndarray
    token_type_ids: np.ndarray
    sentence_label: np.ndarray
    dropped_tokens: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def sequence(self, i: int) -> Packed:
        return Packed(self.tokens[i])


def pair_block(
    docs: list[list[list[int]]], length: int, vocab: Vocab, task: str, rng: np.random.Generator
) -> PairBlock:
    """BERT/ALBERT-style pairs: each document's lines are gathered into chunks of about length - 3 tokens, each
    chunk cut at a random line boundary into A and B (label 0). SOP swaps A and B with probability 0.5 (label 1);
    NSP replaces B with a segment of another document of the block with probability 0.5 (label 1). The longer
    segment is truncated from its end until the pair fits."""
    if task not in ("sop", "nsp"):
        raise ValueError(f"unknown sentence task {task!r}")
    target = length - 3
    rows, types, labels = [], [], []
    flat_docs = [[t for line in d for t in line] for d in docs]
    for d, doc in enumerate(docs):
        lines = [line for line in doc if line]
        chunk: list[list[int]] = []
        size = 0
        for i, line in enumerate(lines):
            chunk.append(line)
            size += len(line)
            if i < len(lines) - 1 and size < target:
                continue
            if len(chunk) >= 2:
                cut = int(rng.integers(1, len(chunk)))
                a = [t for x in chunk[:cut] for t in x]
                b = [t for x in chunk[cut:] for t in x]
            else:
                toks = chunk[0]
                a, b = toks[: len(toks) // 2], toks[len(toks) // 2 :]
            chunk, size = [], 0
            if not a or not b:
                continue
            label = 0
            if task == "sop" and rng.random() < 0.5:
                a, b, label = b, a, 1
            elif task == "nsp" and rng.random() < 0.5 and len(docs) > 1:
                other = int(rng.integers(0, len(docs) - 1))
                other += other >= d  # any document but this one
                src = flat_docs[other]
                if src:
                    start = int(rng.integers(0, max(1, len(src) - len(b) + 1)))
                    b, label = src[start : start + len(b)], 1
            while len(a) + len(b) > target:
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
            seq = [vocab.cls, *a, vocab.sep, *b, vocab.sep]
            row = np.full(length, vocab.pad, dtype=np.int32)
            row[: len(seq)] = seq
            tt = np.zeros(length, dtype=np.int32)
            tt[len(a) + 2 : len(seq)] = 1
            rows.append(row)
            types.append(tt)
            labels.append(label)
    if not rows:
        return PairBlock(
            np.zeros((0, length), np.int32), np.zeros((0, length), np.int32), np.zeros((0, 1), np.int32)
        )
    return PairBlock(np.stack(rows), np.stack(types), np.asarray(labels, dtype=np.int32)[:, None])
