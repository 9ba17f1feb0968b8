"""Pack tokenized documents into sequences of exactly `seq_len` tokens.

The token stream is every document's tokens followed by [SEP] (documents stay delimited); each sequence is
[CLS] + the next seq_len - 1 stream tokens. No padding is ever written; the stream's last partial sequence is
dropped and counted (`dropped_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


class Packer:
    def __init__(self, seq_len: int, cls_id: int, sep_id: int) -> None:
        if seq_len < 8:
            raise ValueError(f"--seq-len must be at least 8, got {seq_len}")
        self.seq_len = seq_len
        self.cls_id = cls_id
        self.sep_id = sep_id
        self._buf: list[int] = []
        self.dropped_tokens = 0

    def add(self, doc_tokens: Iterable[list[int]]) -> Iterator[np.ndarray]:
        """Add one document (its lines' token ids); yield every sequence that is now complete."""
        for line in doc_tokens:
            self._buf.extend(line)
        self._buf.append(self.sep_id)
        body = self.seq_len - 1
        start = 0
        while len(self._buf) - start >= body:
            seq = np.empty(self.seq_len, dtype=np.int32)
            seq[0] = self.cls_id
            seq[1:] = self._buf[start : start + body]
            start += body
            yield seq
        if start:
            del self._buf[:start]

    def finish(self) -> None:
        self.dropped_tokens += len(self._buf)
        self._buf = []
