"""Corruption objectives: pure functions of (tokens, rng), in numpy, one class each.

Randomness comes only from `sample_rng(...)`, seeded by the sample's identity (seed, split, block, index), so a
sample's corruption is the same whatever process, worker or slice writes it; dynamic masking seeds it with
(seed, epoch, global sample index) instead.

| objective | packing                      | sample arrays                                              |
|-----------|------------------------------|------------------------------------------------------------|
| mlm       | [CLS] + seq_len-1            | input_ids, labels (-100 where nothing is asked)            |
| wwm       | [CLS] + seq_len-1            | same; whole sentencepiece words are masked                 |
| span      | [CLS] + seq_len-1            | same; SpanBERT spans of whole words                        |
| electra   | [CLS] + seq_len-1            | same as mlm (85% [MASK] / 15% kept): the generator's input |
| t5        | raw_len (T5 arithmetic)      | input_ids (seq_len), labels (target_len); sentinel spans   |
| bart      | [BOS] + seq_len-2 + [EOS]    | input_ids (>= seq_len, padded), labels = the original      |
| tlm       | one sentence pair, unpacked  | input_ids, labels, position_ids, langs (<= seq_len)        |

Each objective follows a reference implementation by default (named in its docstring; the table with every
parameter is in docs/data.md): BERT google-research/bert create_pretraining_data.py, SpanBERT
facebookresearch/SpanBERT pretraining/fairseq/data/masking.py, ELECTRA google-research/electra
pretrain/pretrain_helpers.py, T5 google-research/text-to-text-transfer-transformer t5/data/preprocessors.py,
BART facebookresearch/fairseq fairseq/data/denoising_dataset.py, TLM facebookresearch/XLM xlm/trainer.py,
xlm/utils.py, xlm/data/dataset.py.
| tokens    | [CLS] + seq_len-1            | input_ids only: corrupted on the fly by the loader         |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .registry import ObjectiveError, ObjectiveSpec, get_objective, register_objective

IGNORE = -100
SPLIT_CODES = {"train": 0, "valid": 1}


def sample_rng(seed: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, *ids])


__all__ = ["ObjectiveError", "ObjectiveSpec", "get_objective", "register_objective"]  # re-exported


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


def _encoder_spec(name: str, cls: type, params: type, sentence_pairs: bool) -> ObjectiveSpec:
    """An encoder (BERT-style) objective: [CLS]-packed sequences, labels -100 where nothing is asked."""
    return ObjectiveSpec(
        name=name,
        params=params,
        build=lambda vocab, seq_len, o: cls(vocab, params(**o)),
        packing="encoder",
        dynamic=True,
        sentence_pairs=sentence_pairs,
        inspect_kind="masked",
    )


# ---- BERT-style masking ---------------------------------------------------------------------------------------


@dataclass
class MLMParams:
    """`rate` of the maskable tokens are chosen; of those `mask_prob` become [MASK], `random_prob` a random
    ordinary token, the rest stay unchanged. All chosen positions carry their original id as label."""

    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self) -> None:
        check_mask_split(self.rate, self.mask_prob, self.random_prob)


def check_mask_split(rate: float, mask_prob: float, random_prob: float, who: str = "") -> None:
    """An ObjectiveError (prefixed with `who`, e.g. 'tlm ') unless 0 < rate < 1 and the [MASK] / random shares are
    >= 0 and sum to at most 1."""
    if not 0.0 < rate < 1.0:
        raise ObjectiveError(f"{who}rate (--mask-rate) must be in (0, 1), got {rate}")
    if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0:
        raise ObjectiveError(f"{who}mask_prob={mask_prob} + random_prob={random_prob} must be within [0, 1]")


def _replace(
    inputs: np.ndarray,
    groups: list[np.ndarray],
    p: MLMParams,
    vocab: Vocab,
    rng: np.random.Generator,
    per_token: bool = False,
) -> None:
    """80/10/10 per group of positions (a token, a word or a span): the whole group gets the same treatment;
    `per_token` decides it for each position of every group instead."""
    if not groups:
        return
    if per_token:
        groups = [g[i : i + 1] for g in groups for i in range(len(g))]
    u = rng.random(len(groups))
    for g, x in zip(groups, u):
        if x < p.mask_prob:
            inputs[g] = vocab.mask
        elif x < p.mask_prob + p.random_prob:
            inputs[g] = rng.choice(vocab.ordinary_ids, size=len(g))


class MLM:
    """BERT masking. Reference: google-research/bert create_pretraining_data.py `create_masked_lm_predictions`
    (budget round(rate x tokens), at least 1; 80% [MASK] / 10% random / 10% unchanged per token)."""

    name = "mlm"
    per_token = True
    """Whether the 80/10/10 decision is made per token (True) or per group (word / span)."""
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
        _replace(inputs, groups, self.p, self.vocab, rng, per_token=self.per_token)
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


register_objective(_encoder_spec("mlm", MLM, MLMParams, sentence_pairs=True))


@dataclass
class ElectraParams(MLMParams):
    """ELECTRA's generator input: of the chosen tokens 85% become [MASK], 15% stay unchanged, none random
    (google-research/electra pretrain/pretrain_helpers.py `mask`: `tf.less(tf.random.uniform([B, N]), 0.85)`)."""

    mask_prob: float = 0.85
    random_prob: float = 0.0


class Electra(MLM):
    """ELECTRA's generator input: token masking with 85% [MASK] / 15% unchanged / 0% random; the
    discriminator's labels come from the generator's samples at training time. Shards are MLM shards whose
    manifest says `objective: electra`. Reference: google-research/electra pretrain/pretrain_helpers.py `mask`
    (budget round(mask_prob x tokens), positions uniform over the candidates)."""

    name = "electra"

    def __init__(self, vocab: Vocab, params: MLMParams | None = None) -> None:
        super().__init__(vocab, params or ElectraParams())

    def params(self) -> dict[str, Any]:
        return {**asdict(self.p), "generator_input": "mlm"}


register_objective(_encoder_spec("electra", Electra, ElectraParams, sentence_pairs=False))


@dataclass
class SmoothedMLMParams(MLMParams):
    """DistilBERT's masking: `smoothing` is train.py's `--mlm_smoothing` (0.7), `token_counts` the counts file
    (`cloze token-counts DIR --out FILE`: one count per token id, the reference's scripts/token_counts.py);
    mask_prob / random_prob: its `--word_mask 0.8 --word_rand 0.1` (`--word_keep 0.1` the rest)."""

    smoothing: float = 0.7
    token_counts: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.smoothing < 0:
            raise ObjectiveError(f"smoothing={self.smoothing} must be >= 0 (DistilBERT: 0.7)")
        if not self.token_counts:
            raise ObjectiveError(
                "objective distil_mlm needs token_counts=FILE, the training split's count of every token id: "
                "write it with `cloze token-counts DATASET_DIR --out FILE`, then set "
                "data.objective_options.token_counts=FILE"
            )


def load_token_counts(path: str, vocab_size: int) -> np.ndarray:
    """A token-counts file (`cloze token-counts`): int64, one count per token id of this vocabulary."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ObjectiveError(
            f"token_counts={path!r} cannot be read as a token-counts file ({e}); write it with "
            "`cloze token-counts DATASET_DIR --out FILE`"
        ) from None
    if counts.ndim != 1 or counts.shape[0] != vocab_size:
        raise ObjectiveError(
            f"token_counts={path!r} holds {counts.shape} counts but the tokenizer has {vocab_size} ids: it was "
            "counted over another vocabulary; count this dataset with `cloze token-counts DATASET_DIR --out FILE`"
        )
    return counts.astype(np.int64)


class SmoothedMLM(MLM):
    """DistilBERT's masking (references: transformers examples/research_projects/distillation/distiller.py
    `Distiller.prepare_batch_mlm`, train.py `token_probs`): a position is drawn, without replacement, with
    probability proportional to max(count(token), 1) ** -smoothing (special tokens never), so that rare tokens are
    asked for more often than their frequency; ceil(rate x non-pad tokens) of them; each then becomes [MASK]
    (mask_prob), a uniformly random id of the whole vocabulary (random_prob, `random_(vocab_size)`), or stays.

    As the reference, the positions are drawn over a whole batch at once (`mask_batch`, on each collated training
    micro-batch: the loader's DynamicMasking, seeded by the micro-batch's index in the stream, so a resumed run masks
    it the same way; like the reference, the masks depend on the micro-batch size). Per sequence (`__call__`):
    evaluation (fixed masks whatever the batch layout). Shards cannot be written with it (`--objective tokens`,
    then data.objective=distil_mlm)."""

    name = "distil_mlm"
    batch_level = True

    def __init__(self, vocab: Vocab, params: MLMParams | None = None) -> None:
        p = (
            params
            if isinstance(params, SmoothedMLMParams)
            else SmoothedMLMParams(**asdict(params or MLMParams()))
        )
        super().__init__(vocab, p)
        self.smoothing = p.smoothing
        counts = load_token_counts(p.token_counts, vocab.size)
        weights = np.maximum(counts, 1).astype(np.float64) ** -p.smoothing
        weights[vocab.is_special] = 0.0  # train.py: "do not predict special tokens"
        self.weights = weights

    def mask_batch(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`prepare_batch_mlm` on (N, L) token ids: ceil(rate x non-pad tokens of the batch) positions drawn over
        the whole batch without replacement by the weights, then [MASK] / random id / kept."""
        flat = tokens.reshape(-1)
        w = self.weights[flat]
        k = min(math.ceil(self.p.rate * int((flat != self.vocab.pad).sum())), int((w > 0).sum()))
        where = (
            rng.choice(len(flat), size=k, replace=False, p=w / w.sum()) if k > 0 else np.zeros(0, np.int64)
        )
        labels = np.full(flat.shape, IGNORE, dtype=np.int32)
        labels[where] = flat[where]
        inputs = flat.astype(np.int32, copy=True)
        u = rng.random(len(where))
        inputs[where[u < self.p.mask_prob]] = self.vocab.mask
        rand = where[(u >= self.p.mask_prob) & (u < self.p.mask_prob + self.p.random_prob)]
        inputs[rand] = rng.integers(0, self.vocab.size, size=len(rand))
        return {"input_ids": inputs.reshape(tokens.shape), "labels": labels.reshape(tokens.shape)}

    def __call__(self, seq: Packed, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sequence as a batch of one (evaluation)."""
        return {k: v[0] for k, v in self.mask_batch(seq.tokens[None], rng).items()}


register_objective(_encoder_spec("distil_mlm", SmoothedMLM, SmoothedMLMParams, sentence_pairs=False))


def count_tokens(data_dir: str, split: str = "train") -> np.ndarray:
    """How often each token id occurs in `split` of a dataset (every input token, special ones included, as the
    reference's scripts/token_counts.py counts its binarized data)."""
    from .loader import ShardReader
    from .manifest import read_manifest

    manifest = read_manifest(data_dir)
    reader = ShardReader(data_dir, manifest, split)
    counts = np.zeros(manifest.tokenizer["vocab_size"], dtype=np.int64)
    try:
        for shard, entry in enumerate(reader.shards):
            for i in range(entry.samples):
                sample = reader.read(shard, i)
                ids = sample["input_ids"].astype(np.int64)
                labels = sample.get("labels")
                if (
                    labels is not None and labels.shape == ids.shape
                ):  # masked shards: count the original tokens
                    ids = np.where(labels >= 0, labels, ids)
                counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
    finally:
        reader.close()
    return counts


@dataclass
class WWMParams(MLMParams):
    per_word: bool = False
    """Decide 80/10/10 once per word (cloze before issue 10). Default False: per token, as Google BERT and
    transformers' DataCollatorForWholeWordMask do."""


class WholeWordMLM(MLM):
    """Whole-word masking: words (a piece starting with '▁' and its continuation pieces) are chosen whole, in
    random order, skipping a word that would overflow, until the token budget round(rate x tokens) is met; every
    piece of a chosen word is predicted; 80/10/10 is decided per token. Reference: google-research/bert
    create_pretraining_data.py `create_masked_lm_predictions` (do_whole_word_mask)."""

    name = "wwm"

    def __init__(self, vocab: Vocab, params: MLMParams | None = None) -> None:
        super().__init__(vocab, params or WWMParams())
        self.per_token = not getattr(self.p, "per_word", False)
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


register_objective(_encoder_spec("wwm", WholeWordMLM, WWMParams, sentence_pairs=True))


@dataclass
class SpanParams(MLMParams):
    geometric_p: float = 0.2
    """Span lengths follow Geometric(p) renormalised over min_span..max_span (SpanBERT: p=0.2, 1..10, mean 3.8)."""
    max_span: int = 10
    """The longest span (SpanBERT's --span-upper)."""
    min_span: int = 1
    """The shortest span (SpanBERT's --span-lower)."""
    whole_words: bool = True
    """Span lengths count whole words (a '▁' piece and its continuations), as SpanBERT does; False counts tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.geometric_p <= 1.0:
            raise ObjectiveError(f"span geometric_p must be in (0, 1], got {self.geometric_p}")
        if not 1 <= self.min_span <= self.max_span:
            raise ObjectiveError(
                f"span needs 1 <= min_span <= max_span, got {self.min_span}, {self.max_span}"
            )


def span_length_distribution(p: SpanParams) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, probabilities): SpanBERT's `len_distrib`, p (1-p)^(k - lower) for k in lower..upper, renormalised."""
    lens = np.arange(p.min_span, p.max_span + 1)
    w = p.geometric_p * (1 - p.geometric_p) ** (lens - p.min_span)
    return lens, w / w.sum()


class SpanMLM(MLM):
    """SpanBERT masking, a port of facebookresearch/SpanBERT pretraining/fairseq/data/masking.py
    `PairWithSpanMaskingScheme.mask`: until ceil(rate x tokens) tokens are masked, draw a span length (in words)
    from `len_distrib`, an anchor uniformly (redrawn if already masked), extend it to its word's start and add
    whole words up to the span length, stopping at the budget. Overlapping and adjacent spans merge
    (`merge_intervals`), and each merged span is masked, replaced or kept as a whole (`--replacement-method
    span`). Special tokens ([CLS], [SEP]) are never masked and end a span."""

    name = "span"
    per_token = False

    def __init__(self, vocab: Vocab, params: SpanParams | None = None) -> None:
        super().__init__(vocab, params or SpanParams())
        self.sp: SpanParams = self.p  # type: ignore[assignment]
        if self.sp.whole_words and vocab.word_start is None:
            raise ObjectiveError("span with whole_words needs the tokenizer's word starts (Vocab.word_start)")
        self.lens, self.len_distrib = span_length_distribution(self.sp)

    def budget(self, n: int) -> int:
        return int(math.ceil(n * self.p.rate))  # SpanBERT: mask_num = math.ceil(sent_length * mask_ratio)

    def word_starts(self, tokens: np.ndarray) -> np.ndarray:
        """Positions that begin a word; special tokens and the piece after one begin their own."""
        special = self.vocab.is_special[tokens]
        if not self.sp.whole_words:
            return np.ones(len(tokens), dtype=bool)
        assert self.vocab.word_start is not None
        return self.vocab.word_start[tokens] | special | np.concatenate([[True], special[:-1]])

    def choose(self, tokens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(tokens)
        maskable = ~self.vocab.is_special[tokens]
        candidates = np.flatnonzero(maskable)
        budget = self.budget(len(candidates))
        ws = self.word_starts(tokens)
        mask = np.zeros(n, dtype=bool)
        total, attempts = 0, 0

        def word_end(i: int) -> int:  # SpanBERT's get_word_end: the next word start
            i += 1
            while i < n and not ws[i]:
                i += 1
            return i

        while total < budget and attempts < 100 * n:
            attempts += 1
            span_len = int(rng.choice(self.lens, p=self.len_distrib))
            anchor = int(candidates[rng.integers(len(candidates))])
            if mask[anchor]:
                continue
            left = anchor
            while left > 0 and not ws[left]:
                left -= 1
            right = word_end(left)
            for i in range(left, right):
                if total >= budget:
                    break
                total += not mask[i]
                mask[i] = True
            num_words = 1
            while num_words < span_len and right < n and maskable[right] and total < budget:
                left2, right = right, word_end(right)
                num_words += 1
                for i in range(left2, right):
                    if total >= budget:
                        break
                    total += not mask[i]
                    mask[i] = True
        # merged spans: maximal runs of masked positions
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        return [np.arange(a, b) for a, b in zip(edges[::2], edges[1::2])]


register_objective(_encoder_spec("span", SpanMLM, SpanParams, sentence_pairs=True))


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
    """(inputs_len, targets_len, noise_tokens, noise_spans) of the corrupted `raw_len` tokens, with the
    degeneracy guards of T5's `random_spans_noise_mask` (at least one noise token and span, one kept token)."""
    noise = int(round(raw_len * p.noise_density))
    noise = min(max(noise, 1), raw_len - 1)
    spans = max(1, int(round(noise / p.mean_noise_span_length)))
    return raw_len - noise + spans + 1, noise + spans + 1, noise, spans


def _t5_helper_lengths(raw_len: int, p: T5Params) -> tuple[int, int]:
    """T5's `random_spans_helper._tokens_length_to_inputs_length_targets_length` (one sentinel per span, + EOS)."""
    noise = int(round(raw_len * p.noise_density))
    spans = int(round(noise / p.mean_noise_span_length))
    return raw_len - noise + spans + 1, noise + spans + 1


def t5_raw_length(inputs_len: int, p: T5Params) -> tuple[int, int]:
    """The longest raw length whose corrupted inputs fit in `inputs_len`; returns (raw_len, targets_len). A port
    of google-research/text-to-text-transfer-transformer t5/data/preprocessors.py `random_spans_helper`: the
    search starts at inputs_len - 1. (T5's extra step for noise_density 0.5, which trims one raw token so that
    targets are not longer than inputs, is not applied: cloze writes inputs of exactly seq_len.)"""
    raw = inputs_len - 1
    while _t5_helper_lengths(raw + 1, p)[0] <= inputs_len:
        raw += 1
    return raw, t5_lengths(raw, p)[1]


def t5_fitting_lengths(seq_len: int, p: T5Params, n: int = 2) -> list[int]:
    """The `n` input lengths nearest `seq_len` (below first) that T5SpanCorruption accepts: those whose raw length
    (t5_raw_length) corrupts to exactly that many input tokens (t5_lengths), the check the objective makes."""

    def fits(length: int) -> bool:
        return length > 1 and t5_lengths(t5_raw_length(length, p)[0], p)[0] == length

    below = [m for m in range(seq_len - 1, max(seq_len - 64, 1), -1) if fits(m)][:1]
    above = [m for m in range(seq_len + 1, seq_len + 64) if fits(m)][: n - len(below)]
    return below + above


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random partition of `num_items` into `num_segments` non-empty parts."""
    first = np.zeros(num_items, dtype=bool)
    first[1 + rng.permutation(num_items - 1)[: num_segments - 1]] = True
    return np.bincount(np.cumsum(first), minlength=num_segments)


class T5SpanCorruption:
    """T5's span corruption: noise spans replaced by consecutive sentinels in the input; the target lists each
    sentinel followed by the span it replaced; both end with EOS. Inputs are exactly seq_len and targets exactly
    target_len for every sample (no truncation, no padding). Reference: google-research/text-to-text-transfer-
    transformer t5/data/preprocessors.py `span_corruption` (`random_spans_helper`, `random_spans_noise_mask`
    without random_roll, `reduce_concat_tokens` + `split_tokens`: documents joined with no separator)."""

    name = "t5"
    packing = "raw"

    def __init__(self, vocab: Vocab, seq_len: int, params: T5Params | None = None) -> None:
        self.vocab, self.p = vocab, params or T5Params()
        self.raw_len, self.target_len = t5_raw_length(seq_len, self.p)
        inputs_len, _, _, spans = t5_lengths(self.raw_len, self.p)
        if inputs_len != seq_len:
            raise ObjectiveError(
                f"--seq-len {seq_len} cannot be filled exactly with noise density {self.p.noise_density} and mean "
                f"span {self.p.mean_noise_span_length}; use --seq-len "
                + " or ".join(str(n) for n in t5_fitting_lengths(seq_len, self.p))
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


def _t5_labels_length(seq_len: int, params: dict[str, Any]) -> tuple[int, int]:
    """T5 targets are exactly target_len (recorded in objective_params)."""
    target_len = int(params.get("target_len", 0))
    return (target_len or 1, target_len or 10**9)


register_objective(
    ObjectiveSpec(
        name="t5",
        params=T5Params,
        build=lambda vocab, seq_len, o: T5SpanCorruption(vocab, seq_len, T5Params(**o)),
        packing="raw",
        packed_length=lambda objective, seq_len: int(objective.raw_len),
        labels_length=_t5_labels_length,
        decoder_start="pad",
        inspect_kind="t5",
    )
)


def t5_reconstruct(inputs: np.ndarray, targets: np.ndarray, sentinel_ids: list[int], eos: int) -> np.ndarray:
    """Interleave inputs and targets at the sentinels: the original raw sequence. Both end with one EOS."""
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
    """BART's noise functions, each with its own rate; composable. Defaults: BART-large (permute + infill), with
    fairseq's denoising_dataset arithmetic (mask_length=span-poisson, replace_length=1)."""

    mask_ratio: float = 0.3
    """Text infilling: ceil(mask_ratio x words) words are covered by spans of Poisson(poisson_lambda) words, each
    span -> one [MASK]; zero-length spans insert a [MASK] (fairseq --mask)."""
    poisson_lambda: float = 3.0
    mask_random: float = 0.0
    """Fraction of the [MASK]s (span masks and inserted ones) that are a random token instead (fairseq
    --mask-random)."""
    word_spans: bool = True
    """Spans start at word starts and count whole words (fairseq mask_length=span-poisson with whole-word
    masking). False counts sentencepiece tokens (every token a word start)."""
    insert_ratio: float = 0.0
    """Masks inserted, as a fraction of the noised sequence's length (fairseq --insert): the input grows."""
    permute_sentences: float = 1.0
    """Probability of shuffling the sentences (lines) of a sequence."""
    delete_ratio: float = 0.0
    """Token deletion: fraction of tokens removed (cloze extra; not in fairseq's denoising_dataset)."""
    rotate_prob: float = 0.0
    """Document rotation: probability of rotating the body to start at a random token."""
    token_mask_ratio: float = 0.0
    """Token masking: fraction of tokens replaced by [MASK] one by one (cloze extra)."""

    def __post_init__(self) -> None:
        for name in (
            "mask_ratio",
            "insert_ratio",
            "permute_sentences",
            "delete_ratio",
            "rotate_prob",
            "token_mask_ratio",
            "mask_random",
        ):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0 and not (name in ("permute_sentences", "mask_random") and v == 1.0):
                raise ObjectiveError(f"bart {name} must be in [0, 1), got {v}")
        if self.mask_ratio + self.delete_ratio + self.token_mask_ratio >= 0.9:
            raise ObjectiveError("bart mask_ratio + delete_ratio + token_mask_ratio must stay below 0.9")
        if self.poisson_lambda <= 0:
            raise ObjectiveError(f"bart poisson_lambda must be > 0, got {self.poisson_lambda}")


def bart_longest_input(seq_len: int, params: dict[str, Any], recorded: int = 0) -> int:
    """The longest input a BART dataset holds: what the writer recorded (manifest packing.longest_input), else, for
    datasets written before it was recorded, an estimate: span masking inserts one mask per zero-length span
    (about ceil(seq_len x mask_ratio) of them at most for poisson_lambda >= 1; a smaller lambda can insert more,
    which only the recorded figure covers), then insertion noise adds ceil(len x insert_ratio)."""
    if recorded:
        return recorded
    d = BartParams()
    mask = float(params.get("mask_ratio", d.mask_ratio) or 0.0)
    insert = float(params.get("insert_ratio", d.insert_ratio) or 0.0)
    grown = seq_len + math.ceil(seq_len * mask) + 1
    return grown + math.ceil(grown * insert) + 1 if insert else grown


class BartDenoising:
    """[BOS] body [EOS] -> noised input; labels = the original sequence. Reference: facebookresearch/fairseq
    fairseq/data/denoising_dataset.py (`add_whole_word_mask` with mask_length=span-poisson and replace_length=1,
    `add_insertion_noise`, `word_starts`). The input is never cut: insertions make it longer than seq_len
    (seq_len + inserted), and it is padded with <pad> to seq_len when noise made it shorter."""

    name = "bart"
    packing = "bart"

    def __init__(self, vocab: Vocab, params: BartParams | None = None) -> None:
        self.vocab, self.p = vocab, params or BartParams()
        if self.p.word_spans and vocab.word_start is None:
            raise ObjectiveError("bart with word_spans needs the tokenizer's word starts (Vocab.word_start)")

    def params(self) -> dict[str, Any]:
        return asdict(self.p)

    def _permute(self, body: np.ndarray, ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cuts = np.unique(np.concatenate([ends[(ends > 0) & (ends < len(body))], [len(body)]]))
        pieces = np.split(body, cuts[:-1])
        if len(pieces) < 2:
            return body
        return np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])

    def word_starts(self, source: np.ndarray) -> np.ndarray:
        """fairseq's `word_starts`: 1 where a word begins (special tokens count as words), 0 at both ends."""
        if self.p.word_spans:
            assert self.vocab.word_start is not None
            ws = (self.vocab.word_start[source] | self.vocab.is_special[source]).astype(np.int64)
        else:
            ws = np.ones(len(source), dtype=np.int64)
        ws[0] = ws[-1] = 0
        return ws

    def _random_tokens(self, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.vocab.ordinary_ids, size=k)

    def insertion(self, tokens: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
        """fairseq `add_insertion_noise`: ceil(len x p) masks (a mask_random share of them random tokens) at
        random positions strictly between the first and the last token; the sequence grows."""
        if p == 0.0:
            return tokens
        num_tokens = len(tokens)
        n = int(math.ceil(num_tokens * p))
        noise_indices = rng.permutation(num_tokens + n - 2)[:n] + 1
        noise_mask = np.zeros(num_tokens + n, dtype=bool)
        noise_mask[noise_indices] = True
        result = np.full(n + num_tokens, -1, dtype=np.int64)
        num_random = int(math.ceil(n * self.p.mask_random))
        result[noise_indices[num_random:]] = self.vocab.mask
        result[noise_indices[:num_random]] = self._random_tokens(num_random, rng)
        result[~noise_mask] = tokens
        return result

    def span_mask(self, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """fairseq `add_whole_word_mask` (span-poisson, replace_length=1) on the whole sequence <s> ... </s>."""
        source = source.astype(np.int64, copy=True)
        is_word_start = self.word_starts(source)
        num_to_mask = int(math.ceil(is_word_start.sum() * self.p.mask_ratio))
        if num_to_mask == 0:
            return source
        lengths = rng.poisson(self.p.poisson_lambda, size=num_to_mask)
        cum_length = np.cumsum(lengths)
        while cum_length[-1] < num_to_mask:
            lengths = np.concatenate([lengths, rng.poisson(self.p.poisson_lambda, size=num_to_mask)])
            cum_length = np.cumsum(lengths)
        i = int(np.searchsorted(cum_length, num_to_mask))  # the first i with cum_length[i] >= num_to_mask
        lengths[i] = num_to_mask - (0 if i == 0 else cum_length[i - 1])
        num_to_mask = i + 1
        lengths = lengths[:num_to_mask]
        lengths = lengths[lengths > 0]
        num_inserts = num_to_mask - len(lengths)
        num_to_mask -= num_inserts
        if num_to_mask == 0:
            return self.insertion(source, num_inserts / len(source), rng)
        word_starts = np.flatnonzero(is_word_start)
        indices = word_starts[rng.permutation(len(word_starts))[:num_to_mask]]
        lengths = lengths[: len(indices)]
        mask_random = rng.random(len(indices)) < self.p.mask_random
        to_keep = np.ones(len(source), dtype=bool)
        is_word_start[-1] = 255  # acts as a long length, so spans don't go over the end of doc
        source[indices] = self.vocab.mask
        source[indices[mask_random]] = self._random_tokens(int(mask_random.sum()), rng)
        lengths = lengths - 1
        while len(indices):
            lengths = lengths - is_word_start[indices + 1]
            uncompleted = lengths >= 0
            indices = indices[uncompleted] + 1
            lengths = lengths[uncompleted]
            to_keep[indices] = False  # replace_length=1: the rest of the span is deleted
        source = source[to_keep]
        if num_inserts > 0:
            source = self.insertion(source, num_inserts / len(source), rng)
        return source

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
        full = np.concatenate([[tokens[0]], body, [tokens[-1]]]).astype(np.int64)
        if p.mask_ratio:
            full = self.span_mask(full, rng)
        if p.insert_ratio:
            full = self.insertion(full, p.insert_ratio, rng)
        body = full[1:-1]
        if p.delete_ratio:
            body = body[rng.random(len(body)) >= p.delete_ratio]
        if p.rotate_prob and rng.random() < p.rotate_prob and len(body) > 1:
            body = np.roll(body, -int(rng.integers(1, len(body))))
        noised = np.concatenate([[tokens[0]], body, [tokens[-1]]])
        inputs = np.full(max(len(tokens), len(noised)), self.vocab.pad, dtype=np.int32)
        inputs[: len(noised)] = noised
        return {"input_ids": inputs, "labels": tokens.astype(np.int32)}


register_objective(
    ObjectiveSpec(
        name="bart",
        params=BartParams,
        build=lambda vocab, seq_len, o: BartDenoising(vocab, BartParams(**o)),
        packing="bart",
        longest_input=bart_longest_input,
        decoder_start="eos",
        inspect_kind="bart",
    )
)


# ---- XLM translation language modelling (parallel sentence pairs) ----------------------------------------------

MIN_PAIR_LEN = 6
"""The shortest tlm sample: `</s> a </s> </s> b </s>` (XLM drops pairs with an empty side)."""
LONG_PAIRS = ("drop", "truncate")
RANDOM_IDS = ("vocab", "ordinary")


@dataclass
class TLMParams:
    """XLM's masking of a concatenated sentence pair (facebookresearch/XLM train.py flags in brackets)."""

    rate: float = 0.15
    """Each eligible token is predicted with this probability, independently (`--word_pred`, `sample_alpha` 0)."""
    mask_prob: float = 0.8
    """Of the predicted tokens: [MASK] (`--word_mask_keep_rand` 0.8,0.1,0.1: mask, keep, random)."""
    random_prob: float = 0.1
    """Of the predicted tokens: a random id; the rest (0.1) stay unchanged."""
    random_ids: str = "vocab"
    """'vocab': random ids uniform over the whole vocabulary, special ids included (XLM `random_(n_words)`);
    'ordinary': over the non-special ids (as cloze's mlm)."""
    skip_first: bool = True
    """The first position (the leading </s>) is never predicted (XLM `pred_mask[0] = 0`)."""
    predict_eos: bool = True
    """The other </s> may be predicted like words (XLM masks every non-pad position but the first); False keeps
    every </s> out of the prediction."""
    long_pairs: str = "drop"
    """A pair longer than seq_len (both sentences + 4 </s>): 'drop' it (XLM `remove_long_sentences`), or
    'truncate' the longer sentence from its end until it fits. Counted in manifest packing.dropped_pairs /
    truncated_pairs."""
    max_len: int = 0
    """Pairs with a sentence of more than max_len tokens are dropped (XLM `--max_len`, per side); 0 = no limit
    other than seq_len."""

    def __post_init__(self) -> None:
        check_mask_split(self.rate, self.mask_prob, self.random_prob, "tlm ")
        if self.random_ids not in RANDOM_IDS:
            raise ObjectiveError(f"tlm random_ids={self.random_ids!r}: use {' or '.join(RANDOM_IDS)}")
        if self.long_pairs not in LONG_PAIRS:
            raise ObjectiveError(f"tlm long_pairs={self.long_pairs!r}: use {' or '.join(LONG_PAIRS)}")
        if self.max_len < 0:
            raise ObjectiveError(f"tlm max_len must be >= 0 (0: no limit), got {self.max_len}")


@dataclass
class SentencePair:
    """One parallel pair: the token ids of each sentence (no </s>) and the index of each one's language in the
    dataset's `languages`."""

    first: np.ndarray
    second: np.ndarray
    lang1: int
    lang2: int


class TLM:
    """XLM translation language modelling: one sample is one sentence pair `</s> s1 </s> </s> s2 </s>`, positions
    restarting at 0 at the second sentence, a language index per token, and XLM's masking over both sentences.

    Reference: facebookresearch/XLM
      - xlm/data/dataset.py `batch_sentences` (each sentence as `</s> w1 .. wn </s>`), `ParallelDataset`
        (`remove_empty_sentences`, `remove_long_sentences`);
      - xlm/utils.py `concat_batches(..., reset_positions=True)` (sentence 2 follows sentence 1's closing </s>,
        positions restart, langs switch where sentence 2 begins);
      - xlm/trainer.py `mask_out` (Bernoulli(word_pred) per position, pad and position 0 excluded; then
        80% [MASK] / 10% kept / 10% random over the vocabulary), `generate_batch`, `mlm_step`.
    Deviations: masks are drawn per pair when the shards are written (XLM draws them per batch at every step);
    XLM's fp16 rounding of the number of predicted tokens to a multiple of 8 is not applied (a batch-level
    speed trick)."""

    name = "tlm"
    packing = "parallel"

    def __init__(self, vocab: Vocab, seq_len: int, params: TLMParams | None = None) -> None:
        self.vocab, self.p, self.seq_len = vocab, params or TLMParams(), seq_len
        if seq_len < MIN_PAIR_LEN:
            raise ObjectiveError(
                f"tlm needs --seq-len >= {MIN_PAIR_LEN} (</s> a </s> </s> b </s>), got {seq_len}"
            )

    def params(self) -> dict[str, Any]:
        return asdict(self.p)

    def fit(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, str] | None:
        """The pair as written: (first, second, 'kept' | 'truncated'), or None when it is dropped (an empty side,
        a side over max_len, or too long for seq_len with long_pairs='drop')."""
        if len(first) == 0 or len(second) == 0:
            return None
        if self.p.max_len and max(len(first), len(second)) > self.p.max_len:
            return None
        room = self.seq_len - 4
        if len(first) + len(second) <= room:
            return first, second, "kept"
        if self.p.long_pairs == "drop":
            return None
        a, b = len(first), len(second)
        while a + b > room:  # cut the longer sentence (the first on a tie) one token at a time
            if a >= b:
                a -= 1
            else:
                b -= 1
        return first[:a], second[:b], "truncated"

    def layout(self, pair: SentencePair) -> dict[str, np.ndarray]:
        """concat_batches(reset_positions=True) for one pair: tokens, position_ids, langs."""
        eos = self.vocab.eos
        s1 = np.concatenate([[eos], pair.first, [eos]]).astype(np.int32)
        s2 = np.concatenate([[eos], pair.second, [eos]]).astype(np.int32)
        return {
            "tokens": np.concatenate([s1, s2]),
            "position_ids": np.concatenate([np.arange(len(s1)), np.arange(len(s2))]).astype(np.int32),
            "langs": np.concatenate([np.full(len(s1), pair.lang1), np.full(len(s2), pair.lang2)]).astype(
                np.int32
            ),
        }

    def eligible(self, tokens: np.ndarray) -> np.ndarray:
        """Positions that may be predicted: not padding, not the first position, not </s> unless predict_eos."""
        ok = tokens != self.vocab.pad
        if self.p.skip_first:
            ok[0] = False
        if not self.p.predict_eos:
            ok &= tokens != self.vocab.eos
        return ok

    def mask(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """XLM `mask_out` on one sequence, draw for draw: rand <= rate per position, eligible positions only; then
        for the chosen positions (in order) a random id each, then mask/keep/random by a 3-way draw."""
        p = self.p
        pred = (rng.random(len(tokens)) <= p.rate) & self.eligible(tokens)
        real = tokens[pred]
        if p.random_ids == "vocab":
            rand = rng.integers(0, self.vocab.size, size=len(real)).astype(np.int64)
        else:
            pick = rng.integers(0, len(self.vocab.ordinary_ids), size=len(real))
            rand = self.vocab.ordinary_ids[pick].astype(np.int64)
        probs = rng.choice(
            3, size=len(real), p=[p.mask_prob, 1.0 - p.mask_prob - p.random_prob, p.random_prob]
        )
        new = np.where(probs == 0, self.vocab.mask, np.where(probs == 1, real, rand))
        inputs = tokens.astype(np.int32, copy=True)
        inputs[pred] = new
        labels = np.full(tokens.shape, IGNORE, dtype=np.int32)
        labels[pred] = real
        return {"input_ids": inputs, "labels": labels}

    def __call__(self, pair: SentencePair, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lay = self.layout(pair)
        return {**self.mask(lay["tokens"], rng), "position_ids": lay["position_ids"], "langs": lay["langs"]}


register_objective(
    ObjectiveSpec(
        name="tlm",
        params=TLMParams,
        build=lambda vocab, seq_len, o: TLM(vocab, seq_len, TLMParams(**o)),
        packing="parallel",
        labels_length=lambda seq_len, params: (MIN_PAIR_LEN, seq_len),
        inspect_kind="pairs",
    )
)


def tlm_sides(sample: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """A tlm sample cut where its positions restart: per sentence (language index, input_ids, labels), each
    sentence with its two </s>."""
    cut = int(np.flatnonzero(sample["position_ids"][1:] == 0)[0]) + 1
    out = []
    for a, b in ((0, cut), (cut, len(sample["input_ids"]))):
        out.append((int(sample["langs"][a]), sample["input_ids"][a:b], sample["labels"][a:b]))
    return out


# ---- clean tokens, corrupted on the fly by the loader ---------------------------------------------------------

register_objective(
    ObjectiveSpec(
        name="tokens",
        params=None,
        build=None,
        packing="encoder",
        labels_length=lambda seq_len, params: None,
    )
)


def build_objective(name: str, vocab: Vocab, seq_len: int, options: dict[str, Any] | None = None) -> Any:
    """The objective `name` with `options` (its dataclass fields) applied."""
    spec = get_objective(name)
    if spec.build is None:
        raise ObjectiveError(f"--objective {name!r} writes clean tokens; there is no objective to build")
    try:
        return spec.build(vocab, seq_len, dict(options or {}))
    except TypeError as e:
        raise ObjectiveError(f"objective {name}: {e}") from None
