"""Each objective against its reference implementation (issue 10, "Recipe fidelity").

The reference functions are ported into this file in numpy, keeping their arithmetic and, where the test
compares draws, the order of their random calls:

- T5: google-research/text-to-text-transfer-transformer t5/data/preprocessors.py `random_spans_helper`,
  `random_spans_noise_mask` (length arithmetic), `reduce_concat_tokens` + `split_tokens`.
- fairseq: facebookresearch/fairseq fairseq/data/denoising_dataset.py `word_starts`, `add_whole_word_mask`
  (mask_length=span-poisson, replace_length=1), `add_insertion_noise`.
- SpanBERT: facebookresearch/SpanBERT pretraining/fairseq/data/masking.py `PairWithSpanMaskingScheme`
  (`len_distrib`, `mask`), `ParagraphInfo.get_word_start/get_word_end`, `merge_intervals`.
- BERT: google-research/bert create_pretraining_data.py `create_masked_lm_predictions` (80/10/10 per token).
- ELECTRA: google-research/electra pretrain/pretrain_helpers.py `mask` (85% [MASK], 15% unchanged).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.inspect import dataset_stats, format_stats, reference_values
from data_pipeline.loader import Collator, ShardReader
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import (
    IGNORE,
    BartDenoising,
    BartParams,
    Electra,
    Packed,
    SpanMLM,
    SpanParams,
    T5Params,
    T5SpanCorruption,
    Vocab,
    WholeWordMLM,
    bart_longest_input,
    span_length_distribution,
    t5_raw_length,
)
from data_pipeline.packing import pack_block, packer_for
from data_pipeline.writer import ShardOptions, write_shards
from tests.conftest import write_stdlib_corpus

MASK = 6


def vocab(size: int = 400, continuation_every: int = 3) -> Vocab:
    """Specials 0..6, sentinels 7..106; ordinary ids divisible by `continuation_every` are continuation pieces."""
    ids = np.arange(size)
    word_start = (ids % continuation_every) != 0
    word_start[:107] = False
    return Vocab(
        size=size,
        pad=0,
        cls=4,
        sep=5,
        mask=MASK,
        bos=2,
        eos=3,
        special_ids=[0, 1, 2, 3, 4, 5, 6],
        sentinel_ids=list(range(7, 107)),
        word_start=word_start,
    )


# ---- T5 ---------------------------------------------------------------------------------------------------------


def ref_random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """Port of T5's random_spans_helper."""

    def _tokens_length_to_inputs_length_targets_length(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return (
            num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while _tokens_length_to_inputs_length_targets_length(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = _tokens_length_to_inputs_length_targets_length(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def ref_noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """random_spans_noise_mask's (num_noise_tokens, num_noise_spans)."""
    length = max(length, 2)
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length))), 1)
    return num_noise_tokens, num_noise_spans


@pytest.mark.parametrize("density", [0.15, 0.3])
@pytest.mark.parametrize("mean_span", [1.0, 2.0, 3.0, 8.0])
def test_t5_length_search_is_random_spans_helper(density: float, mean_span: float) -> None:
    for inputs_len in (32, 64, 100, 128, 256, 512, 1024):
        p = T5Params(noise_density=density, mean_noise_span_length=mean_span)
        assert t5_raw_length(inputs_len, p) == ref_random_spans_helper(inputs_len, density, mean_span)


def test_t5_mean_span_one_at_128_is_accepted_and_fills_exactly() -> None:
    v = vocab()
    obj = T5SpanCorruption(v, 128, T5Params(noise_density=0.15, mean_noise_span_length=1.0))
    raw, target = ref_random_spans_helper(128, 0.15, 1.0)
    assert (obj.raw_len, obj.target_len) == (raw, target) == (127, 39)
    noise, spans = ref_noise_counts(raw, 0.15, 1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = obj(Packed(rng.integers(107, 400, size=raw).astype(np.int32)), rng)
        assert out["input_ids"].shape == (128,) and out["labels"].shape == (target,)
        assert np.isin(out["input_ids"], v.sentinel_ids).sum() == spans
        assert (~np.isin(out["labels"][:-1], v.sentinel_ids)).sum() == noise


def test_t5_packing_is_reduce_concat_tokens() -> None:
    """Documents are joined with no separator (reduce_concat_tokens), then cut into raw_len pieces (split_tokens):
    no </s> inside a raw sequence; the objective appends the only one."""
    docs = [[[1000 + 100 * d + 10 * i + j for j in range(7)] for i in range(3)] for d in range(9)]
    raw = 25
    block = pack_block(docs, packer_for("raw", raw, vocab(2000)))
    stream = [t for doc in docs for line in doc for t in line]  # reduce_concat_tokens
    expected = [stream[k * raw : (k + 1) * raw] for k in range(len(stream) // raw)]  # split_tokens
    assert block.tokens.tolist() == expected
    assert block.dropped_tokens == len(stream) % raw


# ---- fairseq (BART) -----------------------------------------------------------------------------------------------


class RefDenoising:
    """Port of fairseq's DenoisingDataset noise (span-poisson, replace_length=1), numpy generator in place of
    torch's: torch.randperm -> rng.permutation, Categorical(poisson) -> rng.poisson, uniform_ -> rng.random,
    randint -> rng.choice(ordinary ids) (cloze never draws special tokens)."""

    def __init__(self, v: Vocab, mask_ratio: float, lam: float, random_ratio: float, whole_words: bool):
        self.v, self.mask_ratio, self.lam, self.random_ratio, self.whole = (
            v,
            mask_ratio,
            lam,
            random_ratio,
            whole_words,
        )

    def word_starts(self, source):
        if self.whole:  # get_whole_word_mask: special symbols count as word starts
            is_word_start = (self.v.word_start[source] | self.v.is_special[source]).astype(np.int64)
        else:
            is_word_start = np.ones(len(source), dtype=np.int64)
        is_word_start[0] = 0
        is_word_start[-1] = 0
        return is_word_start

    def add_whole_word_mask(self, source, p, rng):
        source = source.copy()
        is_word_start = self.word_starts(source)
        num_to_mask = int(math.ceil(is_word_start.sum() * p))
        num_inserts = 0
        if num_to_mask == 0:
            return source
        lengths = rng.poisson(self.lam, size=num_to_mask)
        cum_length = np.cumsum(lengths)
        while cum_length[-1] < num_to_mask:
            lengths = np.concatenate([lengths, rng.poisson(self.lam, size=num_to_mask)])
            cum_length = np.cumsum(lengths)
        i = 0
        while cum_length[i] < num_to_mask:
            i += 1
        lengths[i] = num_to_mask - (0 if i == 0 else cum_length[i - 1])
        num_to_mask = i + 1
        lengths = lengths[:num_to_mask]
        lengths = lengths[lengths > 0]
        num_inserts = num_to_mask - lengths.shape[0]
        num_to_mask -= num_inserts
        if num_to_mask == 0:
            return self.add_insertion_noise(source, num_inserts / source.shape[0], rng)
        word_starts = np.flatnonzero(is_word_start)
        indices = word_starts[rng.permutation(word_starts.shape[0])[:num_to_mask]]
        lengths = lengths[: len(indices)]
        mask_random = rng.random(len(indices)) < self.random_ratio
        source_length = source.shape[0]
        to_keep = np.ones(source_length, dtype=bool)
        is_word_start[-1] = 255
        source[indices] = MASK
        source[indices[mask_random]] = rng.choice(self.v.ordinary_ids, size=int(mask_random.sum()))
        lengths -= 1
        while indices.shape[0] > 0:
            lengths -= is_word_start[indices + 1]
            uncompleted = lengths >= 0
            indices = indices[uncompleted] + 1
            mask_random = mask_random[uncompleted]
            lengths = lengths[uncompleted]
            to_keep[indices] = 0
        source = source[to_keep]
        if num_inserts > 0:
            source = self.add_insertion_noise(source, num_inserts / source.shape[0], rng)
        return source

    def add_insertion_noise(self, tokens, p, rng):
        if p == 0.0:
            return tokens
        num_tokens = len(tokens)
        n = int(math.ceil(num_tokens * p))
        noise_indices = rng.permutation(num_tokens + n - 2)[:n] + 1
        noise_mask = np.zeros(num_tokens + n, dtype=bool)
        noise_mask[noise_indices] = 1
        result = np.full(n + len(tokens), -1, dtype=np.int64)
        num_random = int(math.ceil(n * self.random_ratio))
        result[noise_indices[num_random:]] = MASK
        result[noise_indices[:num_random]] = rng.choice(self.v.ordinary_ids, size=num_random)
        result[~noise_mask] = tokens
        assert (result >= 0).all()
        return result


def _bart_rows(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        body = rng.integers(107, 400, size=length - 2)
        body[rng.random(length - 2) < 0.05] = 3  # </s> document separators inside, as packed
        rows.append(np.concatenate([[2], body, [3]]).astype(np.int32))
    return rows


@pytest.mark.parametrize("whole_words", [True, False])
@pytest.mark.parametrize("mask_random", [0.0, 0.1])
def test_bart_span_mask_is_fairseq_add_whole_word_mask(whole_words: bool, mask_random: float) -> None:
    v = vocab()
    p = BartParams(mask_ratio=0.3, permute_sentences=0.0, mask_random=mask_random, word_spans=whole_words)
    ours = BartDenoising(v, p)
    ref = RefDenoising(v, 0.3, 3.0, mask_random, whole_words)
    for i, row in enumerate(_bart_rows(50, 96)):
        got = ours(Packed(row), np.random.default_rng([1, i]))
        want = ref.add_whole_word_mask(row.astype(np.int64), 0.3, np.random.default_rng([1, i]))
        n = len(want)
        np.testing.assert_array_equal(got["input_ids"][:n], want)
        assert (got["input_ids"][n:] == v.pad).all()
        np.testing.assert_array_equal(got["labels"], row)


@pytest.mark.parametrize("insert_ratio", [0.1, 0.3])
def test_bart_insertion_grows_the_input_like_add_insertion_noise(insert_ratio: float) -> None:
    v = vocab()
    obj = BartDenoising(v, BartParams(mask_ratio=0.0, permute_sentences=0.0, insert_ratio=insert_ratio))
    ref = RefDenoising(v, 0.0, 3.0, 0.0, True)
    L = 64
    for i, row in enumerate(_bart_rows(100, L)):
        x = obj(Packed(row), np.random.default_rng([2, i]))["input_ids"]
        want = ref.add_insertion_noise(row.astype(np.int64), insert_ratio, np.random.default_rng([2, i]))
        np.testing.assert_array_equal(x, want)
        assert len(x) == L + math.ceil(L * insert_ratio)  # seq_len + inserted: nothing cut
        assert x[0] == v.bos and x[-1] == v.eos
        np.testing.assert_array_equal(x[x != MASK], row)


# ---- SpanBERT ---------------------------------------------------------------------------------------------------


def ref_len_distrib(p: float, lower: int, upper: int) -> list[float]:
    """PairWithSpanMaskingScheme.__init__'s len_distrib."""
    len_distrib = [p * (1 - p) ** (i - lower) for i in range(lower, upper + 1)]
    return [x / (sum(len_distrib)) for x in len_distrib]


def ref_spanbert_mask(sentence: np.ndarray, is_start: np.ndarray, rng: np.random.Generator) -> set[int]:
    """PairWithSpanMaskingScheme.mask (no tagmap): the set of masked positions."""
    lens = list(range(1, 11))
    len_distrib = ref_len_distrib(0.2, 1, 10)
    word_piece_map = [bool(is_start[t]) for t in sentence]

    def get_word_start(anchor):
        left = anchor
        while left > 0 and word_piece_map[left] == False:  # noqa: E712 (as in the reference)
            left -= 1
        return left

    def get_word_end(anchor):
        right = anchor + 1
        while right < len(sentence) and word_piece_map[right] == False:  # noqa: E712
            right += 1
        return right

    sent_length = len(sentence)
    mask_num = math.ceil(sent_length * 0.15)
    mask: set[int] = set()
    while len(mask) < mask_num:
        span_len = rng.choice(lens, p=len_distrib)
        anchor = rng.choice(sent_length)
        if anchor in mask:
            continue
        left1, right1 = get_word_start(anchor), get_word_end(anchor)
        for i in range(left1, right1):
            if len(mask) >= mask_num:
                break
            mask.add(i)
        num_words = 1
        right2 = right1
        while num_words < span_len and right2 < len(sentence) and len(mask) < mask_num:
            left2 = right2
            right2 = get_word_end(right2)
            num_words += 1
            for i in range(left2, right2):
                if len(mask) >= mask_num:
                    break
                mask.add(i)
    return mask


def test_span_length_distribution_is_len_distrib() -> None:
    lens, probs = span_length_distribution(SpanParams())
    assert lens.tolist() == list(range(1, 11))
    np.testing.assert_allclose(probs, ref_len_distrib(0.2, 1, 10), rtol=1e-12)
    assert abs(float((lens * probs).sum()) - 3.797) < 1e-3 and abs(probs[-1] - 0.0301) < 1e-3


def test_span_masking_is_spanbert_mask() -> None:
    """Same generator, same masked positions as the ported reference, on [CLS] + sentence (the [CLS] is never
    masked; SpanBERT masks the sentence before [CLS]/[SEP] are added)."""
    v = vocab()
    obj = SpanMLM(v)
    ws = v.word_start.copy()
    ws[:107] = True
    data = np.random.default_rng(5)
    for i in range(100):
        sentence = data.integers(107, 400, size=127)
        want = ref_spanbert_mask(sentence, ws, np.random.default_rng([3, i]))
        groups = obj.choose(np.concatenate([[v.cls], sentence]), np.random.default_rng([3, i]))
        got = {int(j) - 1 for g in groups for j in g}
        assert got == want
        # each group is a merged run (merge_intervals): consecutive positions, groups not adjacent
        for a, b in zip(groups, groups[1:]):
            assert a[-1] + 1 < b[0]


# ---- BERT whole-word masking and ELECTRA ------------------------------------------------------------------------


def test_wwm_decides_80_10_10_per_token() -> None:
    """Google BERT draws `rng.random() < 0.8` for each index of a chosen word: a 2-piece word is treated
    uniformly with probability 0.8^2 + 0.1^2 + 0.1^2 = 0.66, so 34% of them are mixed."""
    v = vocab(continuation_every=2)  # odd ids start a word, even ids continue it: 2-piece words
    obj = WholeWordMLM(v)
    rng = np.random.default_rng(0)
    mixed = total = 0
    for _ in range(400):
        words = rng.integers(54, 199, size=64) * 2 + 1
        tokens = np.concatenate([[v.cls], np.stack([words, words + 1], axis=1).reshape(-1)]).astype(np.int32)
        out = obj(Packed(tokens), rng)
        chosen = np.flatnonzero(out["labels"] != IGNORE)
        starts = chosen[tokens[chosen] % 2 == 1]
        for s in starts:
            kind = [
                0 if out["input_ids"][j] == MASK else (1 if out["input_ids"][j] == tokens[j] else 2)
                for j in (s, s + 1)
            ]
            mixed += kind[0] != kind[1]
            total += 1
    expected = 1 - (0.8**2 + 0.1**2 + 0.1**2)
    assert abs(mixed / total - expected) < 0.03, (mixed / total, total)


def test_electra_generator_input_is_85_15_0() -> None:
    v = vocab()
    obj = Electra(v)
    assert (obj.p.mask_prob, obj.p.random_prob) == (0.85, 0.0)
    tokens = np.random.default_rng(1).integers(107, 400, size=(2000, 128)).astype(np.int32)
    tokens[:, 0] = v.cls
    out = obj.batch(tokens, np.random.default_rng(2))
    chosen = out["labels"] != IGNORE
    assert abs(chosen.sum() / (tokens.shape[0] * 127) - 0.15) < 0.002  # round(0.15 x 127) = 19 per row
    x, y = out["input_ids"][chosen], out["labels"][chosen]
    assert abs((x == MASK).mean() - 0.85) < 0.01
    assert ((x == MASK) | (x == y)).all()  # no random replacement


# ---- statistics on real text (`cloze inspect --stats`) ---------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_corpus(tmp_path_factory.mktemp("refcorpus") / "corpus.txt", 3000)


@pytest.fixture(scope="module")
def long_corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same docstrings grouped 25 to a document: SpanBERT's sequences hold no document boundary, and with
    long documents a [SEP] (which a cloze span never crosses) is rare."""
    return write_stdlib_corpus(tmp_path_factory.mktemp("refcorpus") / "long.txt", 3000, per_document=25)


def _build(tmp: Path, corpus: Path, tok: Path, objective: str, dupe: int = 1, **options) -> Path:
    out = tmp / objective
    write_shards(
        [str(corpus)],
        tok,
        out,
        ShardOptions(
            objective=objective,
            seq_len=128,
            seed=11,
            docs_per_block=1000,
            dupe_factor=dupe,
            valid_fraction=0.0,
            objective_options=options,
        ),
        workers=2,
    )
    return out


def _labels_of(d: Path, n: int) -> list[np.ndarray]:
    m = read_manifest(d)
    r = ShardReader(d, m, "train")
    out = []
    try:
        for s, e in enumerate(r.shards):
            for i in range(e.samples):
                if len(out) < n:
                    out.append(r.read(s, i)["labels"])
    finally:
        r.close()
    return out


@pytest.mark.parametrize("objective", ["mlm", "wwm", "electra", "span"])
def test_stats_on_real_text_match_the_reference(
    tmp_path, corpus_file, long_corpus_file, tokenizer_dir, objective
):
    corpus = long_corpus_file if objective == "span" else corpus_file
    d = _build(tmp_path, corpus, tokenizer_dir, objective, dupe=3 if objective == "span" else 1)
    got = dataset_stats(d)
    ref = reference_values(objective, read_manifest(d).objective_params)
    for key in ("rate", "mask_share", "random_share", "kept_share"):
        assert abs(got[key] - ref[key]) < 0.01, (key, got[key], ref[key])
    if objective == "span":
        # The drawn lengths have mean 3.797 words (len_distrib); on shards adjacent spans merge and the last span
        # of a sequence is cut at the budget. The expected measured value is the ported reference's on the
        # same sequences: within 3% (relative).
        from data_pipeline.tokenizer import Tokenizer, vocab_of

        v = vocab_of(Tokenizer(d))
        ws = v.word_start | v.is_special
        runs, words = 0, 0
        for i, row in enumerate(_clean_rows(d)[:1500]):
            sentence = row[1:][~v.is_special[row[1:]]][:127]
            mask = np.zeros(len(sentence) + 1, dtype=np.int8)
            mask[sorted(ref_spanbert_mask(sentence, ws, np.random.default_rng([9, i])))] = 1
            edges = np.flatnonzero(np.diff(np.concatenate([[0], mask])))
            for a, b in zip(edges[::2], edges[1::2]):
                runs += 1
                words += max(1, int(ws[sentence[a:b]].sum()))
        expected = words / runs
        assert abs(got["mean_span_words"] / expected - 1) < 0.03, (got["mean_span_words"], expected)


def _clean_rows(d: Path) -> list[np.ndarray]:
    m = read_manifest(d)
    r = ShardReader(d, m, "train")
    try:
        rows = []
        for s, e in enumerate(r.shards):
            for i in range(e.samples):
                x = r.read(s, i)
                rows.append(np.where(x["labels"] != IGNORE, x["labels"], x["input_ids"]))
        return rows
    finally:
        r.close()


def test_t5_and_bart_stats_on_real_text(tmp_path, corpus_file, tokenizer_dir):
    from tests.conftest import run_cloze

    t5 = _build(tmp_path, corpus_file, tokenizer_dir, "t5")
    got = dataset_stats(t5)
    assert abs(got["noise_density"] - 0.15) < 0.01 and abs(got["mean_span_length"] / 3.0 - 1) < 0.01, got
    proc = run_cloze(["inspect", str(t5), "--stats"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "noise_density" in proc.stdout and "(reference 0.1500)" in proc.stdout

    bart = _build(tmp_path, corpus_file, tokenizer_dir, "bart", permute_sentences=0.0)
    got = dataset_stats(bart)
    # fairseq's spans may overlap, so the share of tokens masked is below mask_ratio: compare with the ported
    # add_whole_word_mask on the same sequences (labels are the originals).
    from data_pipeline.tokenizer import Tokenizer, vocab_of

    v = vocab_of(Tokenizer(bart))
    ref = RefDenoising(v, 0.3, 3.0, 0.0, True)
    gone = body = 0
    for i, row in enumerate(_labels_of(bart, 2000)):
        x = ref.add_whole_word_mask(row.astype(np.int64), 0.3, np.random.default_rng([7, i]))
        body += len(row) - 2
        gone += (len(row) - 2) - int((x[1:-1] != v.mask).sum())
    assert abs(got["masked_token_share"] - gone / body) < 0.01, (got["masked_token_share"], gone / body)
    assert "masked_token_share" in format_stats(bart)

    # A tokens dataset (masked on the fly) has no labels on disk: nothing to measure, said so, not a KeyError.
    tokens = _build(tmp_path, corpus_file, tokenizer_dir, "tokens")
    assert dataset_stats(tokens)["samples"] > 0
    assert "nothing to measure" in format_stats(tokens)


def test_bart_longest_input_is_recorded_and_is_what_loader_and_model_check(
    tmp_path, corpus_file, tokenizer_dir
):
    """A small poisson_lambda makes most spans zero-length, and each inserts a mask: inputs grow past any formula
    in seq_len and the ratios. The writer records the longest input it wrote; the loader's SampleCheck accepts
    every sample up to it, and `prepare` sizes the model's positions by it."""
    from data_pipeline.loader import SampleCheck
    from trainer.config import ConfigError, RunConfig
    from trainer.state import prepare

    d = _build(
        tmp_path, corpus_file, tokenizer_dir, "bart", mask_ratio=0.4, poisson_lambda=0.2, insert_ratio=0.1
    )
    m = read_manifest(d)
    r = ShardReader(d, m, "train")
    check = SampleCheck(m)
    try:
        lengths = []
        for shard, entry in enumerate(r.shards):
            for i in range(entry.samples):
                sample = r.read(shard, i)
                assert check.problem(sample) == ""
                lengths.append(len(sample["input_ids"]))
    finally:
        r.close()
    longest = m.packing["longest_input"]
    assert longest == max(lengths)
    assert longest > bart_longest_input(
        128, m.objective_params
    )  # past the estimate old datasets fall back to
    cfg = RunConfig()
    cfg.data.path = str(d)
    cfg.model.family, cfg.model.max_position_embeddings = "bart", longest - 1
    cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size = 2, 1
    with pytest.raises(ConfigError, match=f"{longest} tokens"):
        prepare(cfg, world_size=2)


def test_bart_insertion_shards_are_longer_and_collate(tmp_path, corpus_file, tokenizer_dir):
    d = _build(
        tmp_path, corpus_file, tokenizer_dir, "bart", mask_ratio=0.0, permute_sentences=0.0, insert_ratio=0.2
    )
    m = read_manifest(d)
    r = ShardReader(d, m, "train")
    try:
        ss = [r.read(0, i) for i in range(8)]
    finally:
        r.close()
    eos, pad = m.special_tokens["eos"], m.special_tokens["pad"]
    for s in ss:
        x = s["input_ids"]
        n = int((x != pad).sum())
        assert n == len(x) == 128 + math.ceil(128 * 0.2) and x[n - 1] == eos  # grown; the final </s> kept
    batch = Collator(pad, True, eos)(ss)
    assert batch["input_ids"].shape[1] == max(len(s["input_ids"]) for s in ss)
    assert batch["labels"].shape == (8, 128)
    # The trainer refuses a model whose positions cannot hold the grown input (not an index error mid-run).
    from trainer.config import ConfigError, RunConfig
    from trainer.state import prepare

    def config(max_positions: int) -> RunConfig:
        cfg = RunConfig()
        cfg.data.path = str(d)
        cfg.model.family, cfg.model.max_position_embeddings = "bart", max_positions
        cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size = 2, 1
        return cfg

    with pytest.raises(ConfigError, match="max_position_embeddings"):
        prepare(config(130), world_size=2)
    prepare(config(128 + math.ceil(128 * 0.2)), world_size=2)
