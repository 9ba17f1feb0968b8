"""Corruption objectives: pure functions of (tokens, rng), in numpy, one class each.

Randomness comes only from `sample_rng(...)`, seeded by the sample's identity (seed, split, block, index), so a
sample's corruption is the same whatever process, worker or slice writes it; dynamic masking seeds it with
(seed, epoch, global sample index) instead.

| objective | packing                      | sample arrays                                              |
|-----------|------------------------------|------------------------------------------------------------|
| mlm       | [CLS] + seq_len-1            | input_ids, labels (-100 where nothing is asked)            |
| wwm       | [CLS] + seq_len-1            | same; whole sentencepiece words are masked                 |
| span      | [CLS] + seq_len-1            | same; SpanBERT geometric spans                             |
| electra   | [CLS] + seq_len-1            | same as mlm: the generator's input                         |
| t5        | raw_len (T5 arithmetic)      | input_ids (seq_len), labels (target_len); sentinel spans   |
| bart      | [BOS] + seq_len-2 + [EOS]    | input_ids (padded to seq_len), labels = the original       |
| tokens    | [CLS] + seq_len-1            | input_ids only: corrupted on the fly by the loader         |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

IGNORE = -100
SPLIT_CODES = {"train": 0, "valid": 1}


def sample_rng(seed: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, *ids])


class ObjectiveError(ValueError):
    """Objective parameters that cannot work; the message names the option."""


@dataclass
class Vocab:
    """What the objectives need to know of the tokenizer."""

    size: int
    pad: int
    cls: int
    sep: int
    mask: int
    bos: int
    eos: int
    special_ids: list[int]
    sentinel_ids: list[int]
    word_start: np.ndarray | None = None
    """(size,) bool: the piece begins a word (sentencepiece '▁' prefix); needed by wwm."""

    def __post_init__(self) -> None:
        special = np.zeros(self.size, dtype=bool)
        special[np.asarray(self.special_ids + self.sentinel_ids, dtype=np.int64)] = True
        self.is_special = special
        self.ordinary_ids = np.flatnonzero(~special).astype(np.int32)


@dataclass
class Packed:
    """One packed sequence and the positions where a line (sentence) ends, for objectives that need them."""

    tokens: np.ndarray
    line_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


# ---- BERT-style masking ---------------------------------------------------------------------------------------


@dataclass
class MLMParams:
    """`rate` of the maskable tokens are chosen; of those `mask_prob` become [MASK], `random_prob` a random
    ordinary token, the rest stay unchanged. All chosen positions carry their original id as label."""

    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ObjectiveError(f"--mask-rate must be in (0, 1), got {self.rate}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise ObjectiveError(
                f"mask_prob={self.mask_prob} + random_prob={self.random_prob} must be within [0, 1]"
            )


def _replace(
    inputs: np.ndarray, groups: list[np.ndarray], p: MLMParams, vocab: Vocab, rng: np.random.Generator
) -> None:
    """80/10/10 per group of positions (a token, a word or a span): the whole group gets the same treatment."""
    if not groups:
        return
    u = rng.random(len(groups))
    for g, x in zip(groups, u):
        if x < p.mask_prob:
            inputs[g] = vocab.mask
        elif x < p.mask_prob + p.random_prob:
            inputs[g] = rng.choice(vocab.ordinary_ids, size=len(g))


class MLM:
    name = "mlm"
    packing = "encoder"

    def __init__(self, vocab: Vocab, params: MLMParams | None = None) -> None:
        self.vocab, self.p = vocab, params or MLMParams()

    def params(self) -> dict[str, Any]:
        return asdict(self.p)

    def budget(self, n: int) -> int:
        k = int(round(n * self.p.rate))
        return 1 if n and k == 0 else k

    def choose(self, tokens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Groups of positions to predict. Plain MLM: single tokens."""
        candidates = np.flatnonzero(~self.vocab.is_special[tokens])
        k = self.budget(len(candidates))
        chosen = np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]
        return [chosen[i : i + 1] for i in range(len(chosen))]

    @property
    def batched(self) -> bool:
        """Plain token masking has a vectorised `batch`; word and span masking go sample by sample."""
        return type(self).choose is MLM.choose

    def __call__(self, seq: Packed, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.batched:  # the vectorised path on one row: one place for the logic
            return {k: v[0] for k, v in self.batch(seq.tokens[None], rng).items()}
        tokens = seq.tokens
        groups = self.choose(tokens, rng)
        labels = np.full(tokens.shape, IGNORE, dtype=np.int32)
        inputs = tokens.astype(np.int32, copy=True)
        if groups:
            where = np.concatenate(groups)
            labels[where] = tokens[where]
        _replace(inputs, groups, self.p, self.vocab, rng)
        return {"input_ids": inputs, "labels": labels}

    def batch(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Token-level masking of (N, L) sequences at once: per row exactly round(rate x maskable) positions,
        chosen uniformly among the maskable ones, then 80/10/10 per position."""
        N, L = tokens.shape
        maskable = ~self.vocab.is_special[tokens]
        n = maskable.sum(axis=1)
        k = np.where((n > 0) & (np.rint(n * self.p.rate) == 0), 1, np.rint(n * self.p.rate)).astype(np.int64)
        keys = rng.random((N, L))
        keys[~maskable] = 2.0  # never chosen
        rank = np.empty((N, L), dtype=np.int64)
        np.put_along_axis(
            rank, np.argsort(keys, axis=1, kind="stable"), np.broadcast_to(np.arange(L), (N, L)), axis=1
        )
        chosen = rank < k[:, None]
        labels = np.where(chosen, tokens, IGNORE).astype(np.int32)
        inputs = tokens.astype(np.int32, copy=True)
        u = rng.random((N, L))
        inputs[chosen & (u < self.p.mask_prob)] = self.vocab.mask
        rand = chosen & (u >= self.p.mask_prob) & (u < self.p.mask_prob + self.p.random_prob)
        inputs[rand] = rng.choice(self.vocab.ordinary_ids, size=int(rand.sum()))
        return {"input_ids": inputs, "labels": labels}


class Electra(MLM):
    """ELECTRA's generator input is BERT masking; the discriminator's labels come from the generator's samples
    at training time. Shards are MLM shards whose manifest says `objective: electra`."""

    name = "electra"

    def params(self) -> dict[str, Any]:
        return {**asdict(self.p), "generator_input": "mlm"}


class WholeWordMLM(MLM):
    """Whole-word masking: words (a piece starting with '▁' and its continuation pieces) are chosen whole until
    the token budget is met; every piece of a chosen word is predicted."""

    name = "wwm"

    def __init__(self, vocab: Vocab, params: MLMParams | None = None) -> None:
        super().__init__(vocab, params)
        if vocab.word_start is None:
            raise ObjectiveError("wwm needs the tokenizer's word starts (Vocab.word_start)")
        self.word_start = vocab.word_start

    def choose(self, tokens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        maskable = ~self.vocab.is_special[tokens]
        starts = maskable & (self.word_start[tokens] | ~np.concatenate([[False], maskable[:-1]]))
        word_id = np.cumsum(starts) - 1
        words = [np.flatnonzero(maskable & (word_id == w)) for w in range(int(starts.sum()))]
        words = [w for w in words if len(w)]
        budget = self.budget(int(maskable.sum()))
        chosen: list[np.ndarray] = []
        total = 0
        for i in rng.permutation(len(words)):
            w = words[i]
            if total + len(w) > budget:
                continue
            chosen.append(w)
            total += len(w)
            if total >= budget:
                break
        return sorted(chosen, key=lambda w: int(w[0]))


@dataclass
class SpanParams(MLMParams):
    geometric_p: float = 0.2
    """Span lengths ~ Geometric(p), clipped to max_span (SpanBERT: p=0.2, max 10, mean 3.8)."""
    max_span: int = 10


class SpanMLM(MLM):
    """SpanBERT masking: contiguous spans of geometric length until the budget is met (the last one trimmed);
    each span is masked, replaced or kept as a whole."""

    name = "span"

    def __init__(self, vocab: Vocab, params: SpanParams | None = None) -> None:
        super().__init__(vocab, params or SpanParams())
        self.sp: SpanParams = self.p  # type: ignore[assignment]

    def choose(self, tokens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        maskable = ~self.vocab.is_special[tokens]
        budget = self.budget(int(maskable.sum()))
        taken = ~maskable.copy()
        spans: list[np.ndarray] = []
        total, attempts = 0, 0
        n = len(tokens)
        while total < budget and attempts < 50 * n:
            attempts += 1
            length = min(int(rng.geometric(self.sp.geometric_p)), self.sp.max_span, budget - total)
            start = int(rng.integers(0, n))
            span = np.arange(start, min(n, start + length))
            span = span[~taken[span]]
            if len(span) == 0 or len(span) < (min(n, start + length) - start):
                continue  # overlaps a chosen span or a special token: draw again
            taken[span] = True
            spans.append(span)
            total += len(span)
        return sorted(spans, key=lambda s: int(s[0]))


# ---- T5 span corruption ---------------------------------------------------------------------------------------


@dataclass
class T5Params:
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ObjectiveError(f"--noise-density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ObjectiveError(f"--mean-span-length must be >= 1, got {self.mean_noise_span_length}")


def t5_lengths(raw_len: int, p: T5Params) -> tuple[int, int, int, int]:
    """(inputs_len, targets_len, noise_tokens, noise_spans) for `raw_len` tokens, as T5 computes them."""
    noise = int(round(raw_len * p.noise_density))
    noise = min(max(noise, 1), raw_len - 1)
    spans = max(1, int(round(noise / p.mean_noise_span_length)))
    return raw_len - noise + spans + 1, noise + spans + 1, noise, spans


def t5_raw_length(inputs_len: int, p: T5Params) -> tuple[int, int]:
    """The longest raw length whose corrupted inputs fit in `inputs_len` (T5's compute_input_and_target_lengths);
    returns (raw_len, targets_len)."""
    raw = inputs_len
    while t5_lengths(raw + 1, p)[0] <= inputs_len:
        raw += 1
    return raw, t5_lengths(raw, p)[1]


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random partition of `num_items` into `num_segments` non-empty parts."""
    first = np.zeros(num_items, dtype=bool)
    first[1 + rng.permutation(num_items - 1)[: num_segments - 1]] = True
    return np.bincount(np.cumsum(first), minlength=num_segments)


class T5SpanCorruption:
    """T5's span corruption: noise spans replaced by consecutive sentinels in the input; the target lists each
    sentinel followed by the span it replaced; both end with EOS. Inputs are exactly seq_len and targets exactly
    target_len for every sample (no truncation, no padding)."""

    name = "t5"
    packing = "raw"

    def __init__(self, vocab: Vocab, seq_len: int, params: T5Params | None = None) -> None:
        self.vocab, self.p = vocab, params or T5Params()
        self.raw_len, self.target_len = t5_raw_length(seq_len, self.p)
        inputs_len, _, _, spans = t5_lengths(self.raw_len, self.p)
        if inputs_len != seq_len:
            raise ObjectiveError(
                f"--seq-len {seq_len} cannot be filled exactly with noise density {self.p.noise_density} and mean "
                f"span {self.p.mean_noise_span_length}; use --seq-len {inputs_len} or {t5_lengths(self.raw_len + 1, self.p)[0]}"
            )
        if spans > len(vocab.sentinel_ids):
            raise ObjectiveError(
                f"--seq-len {seq_len} needs {spans} sentinels but the tokenizer has {len(vocab.sentinel_ids)}; "
                "lower --seq-len or raise --mean-span-length"
            )
        self.seq_len = seq_len

    def params(self) -> dict[str, Any]:
        return {**asdict(self.p), "raw_len": self.raw_len, "target_len": self.target_len}

    def noise_mask(self, rng: np.random.Generator) -> np.ndarray:
        _, _, noise, spans = t5_lengths(self.raw_len, self.p)
        noise_lengths = random_segmentation(noise, spans, rng)
        keep_lengths = random_segmentation(self.raw_len - noise, spans, rng)
        interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(
            -1
        )  # keep, noise, keep, noise ...
        return np.repeat(np.arange(len(interleaved)) % 2 == 1, interleaved)

    def __call__(self, seq: Packed, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = seq.tokens  # (raw_len,)
        noise = self.noise_mask(rng)  # (raw_len,) bool; the first position is never noise
        starts = noise & ~np.concatenate([[False], noise[:-1]])  # first token of each noise span
        span_index = np.cumsum(starts) - 1
        sentinels = np.asarray(self.vocab.sentinel_ids, dtype=np.int32)
        # inputs: kept tokens, with each noise span replaced by its sentinel
        inp = np.where(starts, sentinels[np.clip(span_index, 0, None)], tokens)[~noise | starts]
        # targets: each span's sentinel followed by the span's tokens
        noise_pos = np.flatnonzero(noise)
        first = starts[noise_pos]
        slot = np.arange(len(noise_pos)) + np.cumsum(
            first
        )  # where each noise token lands after the sentinels
        tgt = np.empty(len(noise_pos) + int(first.sum()), dtype=np.int32)
        tgt[slot] = tokens[noise_pos]
        tgt[slot[first] - 1] = sentinels[span_index[noise_pos[first]]]
        eos = np.asarray([self.vocab.eos], dtype=np.int32)
        return {
            "input_ids": np.concatenate([inp.astype(np.int32), eos]),
            "labels": np.concatenate([tgt, eos]),
        }


def t5_reconstruct(inputs: np.ndarray, targets: np.ndarray, sentinel_ids: list[int], eos: int) -> np.ndarray:
    """Interleave inputs and targets at the sentinels: the original raw sequence. Both end with one EOS; other
    EOS tokens inside are document separators of the raw stream."""
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    assert inputs[-1] == eos and targets[-1] == eos, "t5 inputs and targets end with EOS"
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs[:-1].tolist():
        out.extend(spans[t] if t in sentinels else [t])
    return np.asarray(out, dtype=np.int32)


# ---- BART denoising -------------------------------------------------------------------------------------------


@dataclass
class BartParams:
    """BART's noise functions, each with its own rate; composable. Defaults: BART-large (permute + infill)."""

    mask_ratio: float = 0.3
    """Text infilling: fraction of tokens covered by masked spans (Poisson span lengths, each span -> one mask)."""
    poisson_lambda: float = 3.0
    insert_ratio: float = 0.0
    """Zero-length spans: masks inserted, as a fraction of the body length."""
    permute_sentences: float = 1.0
    """Probability of shuffling the sentences (lines) of a sequence."""
    delete_ratio: float = 0.0
    """Token deletion: fraction of tokens removed."""
    rotate_prob: float = 0.0
    """Document rotation: probability of rotating the body to start at a random token."""
    token_mask_ratio: float = 0.0
    """Token masking: fraction of tokens replaced by [MASK] one by one."""

    def __post_init__(self) -> None:
        for name in (
            "mask_ratio",
            "insert_ratio",
            "permute_sentences",
            "delete_ratio",
            "rotate_prob",
            "token_mask_ratio",
        ):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0 and not (name in ("permute_sentences",) and v == 1.0):
                raise ObjectiveError(f"bart {name} must be in [0, 1), got {v}")
        if self.mask_ratio + self.delete_ratio + self.token_mask_ratio >= 0.9:
            raise ObjectiveError("bart mask_ratio + delete_ratio + token_mask_ratio must stay below 0.9")


class BartDenoising:
    """[BOS] body [EOS] -> noised input (padded to seq_len with pad); labels = the original sequence."""

    name = "bart"
    packing = "bart"

    def __init__(self, vocab: Vocab, params: BartParams | None = None) -> None:
        self.vocab, self.p = vocab, params or BartParams()

    def params(self) -> dict[str, Any]:
        return asdict(self.p)

    def _permute(self, body: np.ndarray, ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cuts = np.unique(np.concatenate([ends[(ends > 0) & (ends < len(body))], [len(body)]]))
        pieces = np.split(body, cuts[:-1])
        if len(pieces) < 2:
            return body
        return np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])

    def _infill(self, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(body)
        to_mask = int(math.ceil(n * self.p.mask_ratio))
        lengths: list[int] = []
        while sum(lengths) < to_mask:
            lengths.append(int(rng.poisson(self.p.poisson_lambda)))
        lengths[-1] -= sum(lengths) - to_mask
        spans = [x for x in lengths if x > 0]
        inserts = sum(1 for x in lengths if x == 0) + int(round(n * self.p.insert_ratio))
        # Non-overlapping placement: the unmasked tokens split into len(spans)+1 gaps (stars and bars).
        free = n - to_mask
        k = len(spans)
        gaps = np.diff(np.concatenate([[0], np.sort(rng.integers(0, free + 1, size=k)), [free]]))
        out: list[np.ndarray] = []
        pos = 0
        mask = np.asarray([self.vocab.mask], dtype=body.dtype)
        for g, span in zip(gaps[:-1], spans):
            out += [body[pos : pos + g], mask]
            pos += g + span
        out.append(body[pos:])
        result = np.concatenate(out) if out else body
        if inserts:
            where = np.sort(rng.integers(0, len(result) + 1, size=inserts))
            result = np.insert(result, where, self.vocab.mask)
        return result

    def __call__(self, seq: Packed, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = seq.tokens
        body = tokens[1:-1].copy()
        ends = seq.line_ends - 1  # positions in body
        p = self.p
        if p.permute_sentences and rng.random() < p.permute_sentences:
            body = self._permute(body, ends, rng)
        if p.token_mask_ratio:
            pick = rng.random(len(body)) < p.token_mask_ratio
            body[pick] = self.vocab.mask
        if p.mask_ratio or p.insert_ratio:
            body = self._infill(body, rng)
        if p.delete_ratio:
            body = body[rng.random(len(body)) >= p.delete_ratio]
        if p.rotate_prob and rng.random() < p.rotate_prob and len(body) > 1:
            body = np.roll(body, -int(rng.integers(1, len(body))))
        noised = np.concatenate([[tokens[0]], body, [tokens[-1]]])[: len(tokens)]
        inputs = np.full(len(tokens), self.vocab.pad, dtype=np.int32)
        inputs[: len(noised)] = noised
        return {"input_ids": inputs, "labels": tokens.astype(np.int32)}


# ---- registry -------------------------------------------------------------------------------------------------

STATIC = ("mlm", "wwm", "span", "electra", "t5", "bart")
DYNAMIC = ("mlm", "wwm", "span", "electra")
OBJECTIVES = (*STATIC, "tokens")


def build_objective(name: str, vocab: Vocab, seq_len: int, options: dict[str, Any] | None = None) -> Any:
    """The objective `name` with `options` (its dataclass fields) applied."""
    o = dict(options or {})
    try:
        if name == "mlm":
            return MLM(vocab, MLMParams(**o))
        if name == "electra":
            return Electra(vocab, MLMParams(**o))
        if name == "wwm":
            return WholeWordMLM(vocab, MLMParams(**o))
        if name == "span":
            return SpanMLM(vocab, SpanParams(**o))
        if name == "t5":
            return T5SpanCorruption(vocab, seq_len, T5Params(**o))
        if name == "bart":
            return BartDenoising(vocab, BartParams(**o))
    except TypeError as e:
        raise ObjectiveError(f"objective {name}: {e}") from None
    raise ObjectiveError(f"--objective {name!r} is not supported; choose one of {', '.join(OBJECTIVES)}")
