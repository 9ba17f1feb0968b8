"""Pack tokenized documents into sequences of exactly `length` tokens.

The token stream is every document's tokens followed by a separator (documents stay delimited; T5 has none, as
T5's `reduce_concat_tokens` joins documents directly, t5/data/preprocessors.py); each sequence
is prefix + the next `length - len(prefix) - len(suffix)` stream tokens + suffix. No padding is written; the
stream's last partial sequence is dropped and counted (`dropped_tokens`). The positions where a line ends are
kept with each sequence (BART's sentence permutation uses them), and where a line begins (Longformer's global
tokens, `--global-tokens first-of-each-line`).

With `--doc-boundaries` (`pack_block(..., doc_boundaries=True)`, packings whose `Packer.pads`) no sequence holds
two documents: each document's own stream (its tokens + separator) is cut into bodies, the last one padded with
<pad> (an `attention_mask` says which positions are tokens); nothing is dropped but the separator of a document
whose tokens fill its last body exactly (a sequence would hold the separator alone).

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
    documents follow each other directly). `pad`: the id that fills a document's last sequence under
    `--doc-boundaries`; None: its objectives rewrite the sequence (T5's span corruption turns exactly raw_len
    tokens into seq_len inputs; BART permutes, masks and deletes), so it can be neither padded (the padding would be
    corrupted as text) nor marked position by position (`--global-tokens`)."""

    def __init__(
        self, length: int, prefix: list[int], suffix: list[int], separator: int | None, pad: int | None = None
    ) -> None:
        self.length = length
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.body = length - len(prefix) - len(suffix)
        if self.body < 4:
            raise ValueError(f"--seq-len {length} is too short; use at least {len(prefix) + len(suffix) + 4}")
        self.separator = separator
        self.pad = pad

    @property
    def pads(self) -> bool:
        """Whether sequences of this packing may end in padding (`--doc-boundaries`)."""
        return self.pad is not None


PACKINGS: dict[str, Callable[[int, Vocab], Packer]] = {
    # encoder objectives never mask or predict special tokens, <pad> included: their sequences may be padded
    "encoder": lambda length, vocab: Packer(length, [vocab.cls], [], vocab.sep, pad=vocab.pad),
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
    starts: np.ndarray
    """Stream positions where each line begins (for line_starts and the global tokens)."""
    rows: np.ndarray
    """(N,) stream position of each sequence's first body token (i x body unless packed by document)."""
    filled: np.ndarray
    """(N,) body tokens of each sequence: `body`, or fewer in a document's last sequence under --doc-boundaries."""
    padded: bool = False
    """Packed by document (--doc-boundaries): sequences may end in padding and carry an attention mask."""

    def __len__(self) -> int:
        return len(self.tokens)

    def line_ends(self, i: int) -> np.ndarray:
        """Positions in sequence i just past the end of a line that ends inside it (not at its last body token)."""
        lo = int(self.rows[i])
        hi = lo + int(self.filled[i])
        a, b = np.searchsorted(self.ends, [lo + 1, hi])
        return self.ends[a:b] - lo + self.prefix_len

    def line_starts(self, i: int) -> np.ndarray:
        """Positions in sequence i of the first token of each line that begins inside it."""
        lo = int(self.rows[i])
        a, b = np.searchsorted(self.starts, [lo, lo + int(self.filled[i])])
        return self.starts[a:b] - lo + self.prefix_len

    def sequence(self, i: int) -> Packed:
        return Packed(self.tokens[i], self.line_ends(i))

    def attention_mask(self) -> np.ndarray:
        """(N, length) int8: 1 at tokens (prefix, body tokens, suffix), 0 at padding."""
        length = self.tokens.shape[1]
        suffix = length - self.prefix_len - self.body
        return (np.arange(length) < (self.prefix_len + self.filled + suffix)[:, None]).astype(np.int8)


GLOBAL_TOKENS = ("cls", "first-of-each-line")
"""`--global-tokens` values: which positions attend to (and are attended by) every position in Longformer."""


def global_attention_mask(block: PackedBlock, kind: str) -> np.ndarray:
    """(N, length) int8, 1 where a token attends globally: `cls` the first position ([CLS] in the encoder
    packing); `first-of-each-line` that and the first token of every line that begins in the sequence."""
    if kind not in GLOBAL_TOKENS:
        raise ValueError(f"unknown global tokens {kind!r}; known: {', '.join(GLOBAL_TOKENS)}")
    mask = np.zeros(block.tokens.shape, dtype=np.int8)
    mask[:, 0] = 1
    if kind == "first-of-each-line" and len(block):
        row = (
            np.searchsorted(block.rows, block.starts, side="right") - 1
        )  # the sequence a line start falls in
        col = block.starts - block.rows[np.maximum(row, 0)]
        inside = (row >= 0) & (col < block.filled[np.maximum(row, 0)])
        mask[row[inside], col[inside] + block.prefix_len] = 1
    return mask


def pack_block(docs: Iterable[list[list[int]]], packer: Packer, doc_boundaries: bool = False) -> PackedBlock:
    """Pack a block's documents (each a list of lines' token ids) with numpy; the remainder is dropped.
    `doc_boundaries`: no sequence holds two documents (each document's last sequence is padded; see the module
    docstring); the packer must pad (`Packer.pads`)."""
    pieces: list[list[int]] = []
    lengths: list[int] = []
    doc_start: list[int] = []
    doc_tokens: list[int] = []
    sep = None if packer.separator is None else [packer.separator]
    position = 0
    for doc in docs:
        doc_start.append(position)
        for line in doc:
            if line:
                pieces.append(line)
                lengths.append(len(line))
                position += len(line)
        doc_tokens.append(position - doc_start[-1])
        if sep is not None:
            pieces.append(sep)
            lengths.append(-1)  # a separator: one token, not a line end
            position += 1
    total = sum(abs(n) for n in lengths)
    stream = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=total)
    sizes = np.abs(np.asarray(lengths, dtype=np.int64))
    is_line = np.asarray(lengths, dtype=np.int64) > 0
    ends = np.cumsum(sizes)[is_line]
    starts = (np.cumsum(sizes) - sizes)[is_line]
    if doc_boundaries:
        return _pack_documents(stream, ends, starts, doc_start, doc_tokens, packer)
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
    rows = np.arange(n, dtype=np.int64) * packer.body
    filled = np.full(n, packer.body, dtype=np.int64)
    return PackedBlock(
        tokens, ends, packer.body, len(packer.prefix), total - n * packer.body, starts, rows, filled
    )


def _pack_documents(
    stream: np.ndarray,
    ends: np.ndarray,
    starts: np.ndarray,
    doc_start: list[int],
    doc_tokens: list[int],
    packer: Packer,
) -> PackedBlock:
    """--doc-boundaries: document d's stream (its tokens, then the separator) cut into ceil(tokens / body)
    sequences, the last padded: prefix + body tokens + suffix + <pad>... A separator that would start a sequence of
    its own is dropped (counted in dropped_tokens), as is a document without tokens."""
    if packer.pad is None:
        raise ValueError("this packing cannot be padded, so it cannot keep document boundaries")
    B, P, S = packer.body, len(packer.prefix), len(packer.suffix)
    first = np.asarray(doc_start, dtype=np.int64)
    tokens_d = np.asarray(doc_tokens, dtype=np.int64)
    with_sep = tokens_d + (packer.separator is not None)  # the document's stream length
    count = -(-tokens_d // B)  # sequences per document
    dropped = int((with_sep - np.minimum(with_sep, count * B)).sum())
    doc = np.repeat(np.arange(len(first)), count)
    k = np.arange(len(doc)) - np.repeat(
        np.cumsum(count) - count, count
    )  # the sequence's number in its document
    rows = first[doc] + k * B
    filled = np.minimum(B, with_sep[doc] - k * B)
    n = len(rows)
    tokens = np.full((n, packer.length), packer.pad, dtype=np.int32)
    tokens[:, :P] = packer.prefix
    row = 0
    for d in np.flatnonzero(count):  # by document, so memory stays that of the output (long documents)
        kept = stream[first[d] : first[d] + min(int(with_sep[d]), int(count[d]) * B)]
        full = len(kept) // B
        tokens[row : row + full, P : P + B] = kept[: full * B].reshape(full, B)
        if full < count[d]:  # the padded last sequence
            tokens[row + full, P : P + len(kept) - full * B] = kept[full * B :]
        row += int(count[d])
    if S:  # the suffix follows the body's tokens, before the padding
        tokens[np.arange(n)[:, None], P + filled[:, None] + np.arange(S)] = packer.suffix
    return PackedBlock(tokens, ends, B, P, dropped, starts, rows, filled, padded=True)


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
