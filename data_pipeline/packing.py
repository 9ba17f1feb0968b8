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

from collections.abc import Iterable, Iterator

import numpy as np

from .objectives import Packed, Vocab


class Packer:
    def __init__(self, length: int, prefix: list[int], suffix: list[int], separator: int) -> None:
        self.length = length
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.body = length - len(prefix) - len(suffix)
        if self.body < 4:
            raise ValueError(f"--seq-len {length} is too short; use at least {len(prefix) + len(suffix) + 4}")
        self.separator = separator
        self._tokens: list[int] = []
        self._ends: list[int] = []  # stream positions just past the end of a line
        self.dropped_tokens = 0

    def add(self, doc_tokens: Iterable[list[int]]) -> Iterator[Packed]:
        """Add one document (its lines' token ids); yield every sequence that is now complete."""
        for line in doc_tokens:
            if line:
                self._tokens.extend(line)
                self._ends.append(len(self._tokens))
        self._tokens.append(self.separator)
        start = 0
        ends = np.asarray(self._ends, dtype=np.int64)
        while len(self._tokens) - start >= self.body:
            seq = np.concatenate([self.prefix, np.asarray(self._tokens[start : start + self.body], np.int32), self.suffix])
            inside = ends[(ends > start) & (ends < start + self.body)] - start + len(self.prefix)
            start += self.body
            yield Packed(seq, inside)
        if start:
            del self._tokens[:start]
            self._ends = [e - start for e in self._ends if e > start]

    def finish(self) -> None:
        self.dropped_tokens += len(self._tokens)
        self._tokens, self._ends = [], []


def packer_for(kind: str, length: int, vocab: Vocab) -> Packer:
    if kind == "encoder":
        return Packer(length, [vocab.cls], [], vocab.sep)
    if kind == "raw":
        return Packer(length, [], [], vocab.eos)
    if kind == "bart":
        return Packer(length, [vocab.bos], [vocab.eos], vocab.eos)
    raise ValueError(f"unknown packing {kind!r}")
