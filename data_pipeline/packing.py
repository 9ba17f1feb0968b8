"""Pack tokenized documents into sequences of exactly `length` tokens.

The token stream is every document's tokens followed by a separator (documents stay delimited); each sequence
is prefix + the next `length - len(prefix) - len(suffix)` stream tokens + suffix. No padding is ever written; the
stream's last partial sequence is dropped and counted (`dropped_tokens`). The positions where a line ends are
kept with each sequence (BART's sentence permutation uses them).

    encoder (mlm, wwm, span, electra, tokens):  [CLS] body            separator [SEP]
    raw (t5):                                   body                  separator </s>
    bart:                                       <s> body </s>         separator </s>
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .objectives import Packed, Vocab


class Packer:
    """The packing layout: prefix + body + suffix = length, documents in the stream ended by `separator`."""

    def __init__(self, length: int, prefix: list[int], suffix: list[int], separator: int) -> None:
        self.length = length
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.body = length - len(prefix) - len(suffix)
        if self.body < 4:
            raise ValueError(f"--seq-len {length} is too short; use at least {len(prefix) + len(suffix) + 4}")
        self.separator = separator


def packer_for(kind: str, length: int, vocab: Vocab) -> Packer:
    if kind == "encoder":
        return Packer(length, [vocab.cls], [], vocab.sep)
    if kind == "raw":
        return Packer(length, [], [], vocab.eos)
    if kind == "bart":
        return Packer(length, [vocab.bos], [vocab.eos], vocab.eos)
    raise ValueError(f"unknown packing {kind!r}")


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
    sep = [packer.separator]
    for doc in docs:
        for line in doc:
            if line:
                pieces.append(line)
                lengths.append(len(line))
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
