"""Sentencepiece tokenizer with the special tokens every objective needs.

Layout of the vocabulary (fixed, recorded in tokenizer.json and in every dataset manifest):
    0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)   4 [CLS]   5 [SEP]   6 [MASK]   7.. <extra_id_0..N-1>
then the learned pieces. Special tokens are sentencepiece *control* symbols: text that happens to contain
"[MASK]" is never encoded as the mask token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from .objectives import Vocab
from .sources import (
    InputError,
    SourceOptions,
    SourceStats,
    check_inputs,
    iter_lines,
    no_documents_message,
    resolve_inputs,
)

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
NUM_SENTINELS = 100
PROGRESS_SECONDS = 5.0
"""`train_tokenizer` reports progress at most this often while it reads, and this often while it trains."""
DEFAULT_ALPHA = 0.3
"""Language sampling exponent: mT5's (temperature 1/0.3) and XLM-R's (alpha 0.3)."""
CHARACTER_COVERAGE = 0.9995
MULTILINGUAL_CHARACTER_COVERAGE = 0.9999
"""With two or more language tags, unless --character-coverage is given (docs/data.md, "Tokenizer")."""
_LANG_TAG = re.compile(r"([A-Za-z]{2,3}(?:[_@-][A-Za-z0-9]+)*)=(.+)", re.S)


@dataclass
class SpecialIds:
    pad: int = 0
    unk: int = 1
    bos: int = 2
    eos: int = 3
    cls: int = 4
    sep: int = 5
    mask: int = 6

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def all(self) -> list[int]:
        return list(asdict(self).values())

    def vocab(self, size: int, sentinel_ids: list[int], word_start: np.ndarray | None = None) -> Vocab:
        """The objectives' view (data_pipeline/objectives.py `Vocab`) of a `size`-piece vocabulary with these
        special ids and `sentinel_ids`; `word_start` (size,) bool is needed by whole-word masking only."""
        return Vocab(
            size=size,
            pad=self.pad,
            cls=self.cls,
            sep=self.sep,
            mask=self.mask,
            bos=self.bos,
            eos=self.eos,
            special_ids=self.all(),
            sentinel_ids=sentinel_ids,
            word_start=word_start,
        )


@dataclass
class TokenizerInfo:
    vocab_size: int
    special_tokens: SpecialIds
    sentinel_ids: list[int] = field(default_factory=list)
    model_type: str = "unigram"
    sha256: str = ""
    multilingual: dict[str, Any] | None = None
    """Per-language sampling of a tokenizer trained on tagged inputs (`train_tokenizer`); None otherwise."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def split_language_tag(item: str) -> tuple[str | None, str]:
    """`fr=corpus/fr/` -> ("fr", "corpus/fr/"); an untagged input (or an existing path that merely contains "=")
    -> (None, item). A tag is a language code: 2-3 letters, then optional `_`/`@`/`-` parts (pt_BR, sr@latin)."""
    m = _LANG_TAG.fullmatch(item)
    if m is None or os.path.exists(item):
        return None, item
    return m.group(1), m.group(2)


def language_shares(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Each language's share of the sampled sentences, p_l = q_l^alpha / sum_k q_k^alpha with q_l = n_l / sum n.

    Ports XLM's language sampling (facebookresearch/XLM `xlm/data/loader.py` `set_sampling_probs`, the exponent
    being `train.py`'s `--lg_sampling_factor`), which is mT5's mixing rate (google-research/multilingual-t5
    `multilingual_t5/tasks.py`: `DEFAULT_MIX_RATE = rate_num_examples(temperature=1/0.3)`, rate n^(1/T))."""
    if not 0 < alpha <= 1:
        raise InputError(
            f"--alpha {alpha}: the language sampling exponent must be in (0, 1] (mT5/XLM-R: 0.3)"
        )
    total = sum(counts.values())
    q = {lang: (n / total) ** alpha for lang, n in counts.items()}
    z = sum(q.values())
    return {lang: v / z for lang, v in q.items()}


def sample_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    """Sentences to draw per language: `total` split by `shares`, rounded by largest remainder (sums to `total`)."""
    raw = {lang: p * total for lang, p in shares.items()}
    out = {lang: int(v) for lang, v in raw.items()}
    for lang in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: total - sum(out.values())]:
        out[lang] += 1
    return out


def _picks(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices (with repeats) of `m` draws from `n` sentences: every sentence m // n times, and m % n of
    them, chosen without replacement, once more. Small languages are repeated, large ones subsampled."""
    q, r = divmod(m, n)
    extra = rng.choice(n, size=r, replace=False) if r else np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate([np.repeat(np.arange(n, dtype=np.int64), q), extra.astype(np.int64)]))


def train_tokenizer(
    inputs: list[str],
    out_dir: str | Path,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    character_coverage: float | None = None,
    input_sentence_size: int = 2_000_000,
    num_sentinels: int = NUM_SENTINELS,
    byte_fallback: bool | None = None,
    sources: SourceOptions | None = None,
    progress: Callable[[str], None] | None = None,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> TokenizerInfo:
    """Train a sentencepiece model on `inputs` and write tokenizer.model + tokenizer.json into `out_dir`.

    Written to a temporary directory first and moved into place complete, so a failure leaves nothing behind.
    `progress` gets a line now and then: sentences and bytes read, then the time spent training.

    Inputs tagged with a language (`fr=builtin:gettext:fr`, `de=corpus/de/`; `split_language_tag`) are read
    twice: once to count each language's sentences n_l, then to draw sum n_l (at most `input_sentence_size`)
    sentences with shares p_l ~ n_l^alpha (`language_shares`: mT5 / XLM-R temperature sampling, as mT5 trained its
    vocabulary, google-research/multilingual-t5 `multilingual_t5/vocab.py`), seeded by `seed`. With two or more
    languages byte fallback is on and character coverage 0.9999 unless given. Untagged inputs are read as they
    always were (character coverage 0.9995, no byte fallback unless asked)."""
    sources = sources or SourceOptions()
    tagged = [split_language_tag(item) for item in inputs]
    languages: dict[str, list[str]] = {}
    language_shares({"x": 1}, alpha)  # checks --alpha before anything is read
    if any(lang for lang, _ in tagged):
        untagged = [item for lang, item in tagged if lang is None]
        if untagged:
            raise InputError(
                f"--input {untagged[0]} has no language tag while others have one; tag every input "
                f"(LANG=SOURCE, e.g. en={untagged[0]}) or none"
            )
        for lang, item in tagged:
            assert lang is not None
            languages.setdefault(lang, []).append(item)
    lang_files = {lang: resolve_inputs(items) for lang, items in languages.items()}
    files = [f for fs in lang_files.values() for f in fs] if languages else resolve_inputs(inputs)
    check_inputs(files, sources)
    multilingual = len(languages) >= 2
    if byte_fallback is None:
        byte_fallback = multilingual
    if character_coverage is None:
        character_coverage = MULTILINGUAL_CHARACTER_COVERAGE if multilingual else CHARACTER_COVERAGE
    say = progress or (lambda line: None)
    if model_type not in ("unigram", "bpe"):
        raise InputError(f"--model-type {model_type!r}: use unigram or bpe")
    out = Path(out_dir)
    if (out / MODEL_FILE).exists():
        raise InputError(f"{out / MODEL_FILE} already exists; choose another --out or delete it")
    specials = ["[CLS]", "[SEP]", "[MASK]"] + [f"<extra_id_{i}>" for i in range(num_sentinels)]

    stats = SourceStats()
    read = {"sentences": 0, "chars": 0}
    t0 = time.perf_counter()
    sampling: dict[str, Any] | None = None
    lines: Callable[[], Iterator[str]] = lambda: iter_lines(files, sources, stats)  # noqa: E731
    if languages:
        sampling, lines = _language_sampling(
            lang_files, sources, stats, alpha, seed, input_sentence_size, say
        )
        sampling.update(byte_fallback=byte_fallback, character_coverage=character_coverage)

    def sentences() -> Iterator[str]:
        last = time.perf_counter()
        for line in lines():
            read["sentences"] += 1
            read["chars"] += len(line)
            if time.perf_counter() - last >= PROGRESS_SECONDS:
                last = time.perf_counter()
                say(_read_line(read, stats.files, len(files), t0))
            yield line

    # Peek so an empty corpus is a clear error, not a sentencepiece crash.
    probe = sentences()
    first = next(probe, None)
    if first is None:
        if stats.documents == 0 and (stats.missing_field or stats.bad_json_lines):
            raise InputError(no_documents_message(inputs, stats, sources))
        raise InputError(f"the corpus {' '.join(inputs)} holds no text; check the input files")

    failed: list[InputError] = []

    def all_sentences() -> Iterator[str]:
        assert first is not None
        yield first
        try:
            yield from probe
        except InputError as e:  # e.g. a damaged .gz: sentencepiece would turn it into its own error
            failed.append(e)
            raise
        say(_read_line(read, stats.files, len(files), t0) + f"; training {model_type}, vocab {vocab_size}")
        training.set()

    training = threading.Event()
    trained = threading.Event()

    def heartbeat() -> None:
        training.wait()
        t1 = time.perf_counter()
        while not trained.wait(max(PROGRESS_SECONDS, 1.0)):
            say(f"tokenizer: training ({time.perf_counter() - t1:.0f}s)")

    say(f"tokenizer: reading {' '.join(inputs)}")
    threading.Thread(target=heartbeat, name="cloze-tokenizer-progress", daemon=True).start()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-tmp-", dir=out.parent))
    try:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=all_sentences(),
                model_prefix=str(tmp / "tokenizer"),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                pad_id=0,
                unk_id=1,
                bos_id=2,
                eos_id=3,
                control_symbols=specials,
                byte_fallback=byte_fallback,
                num_threads=max(1, min(16, os.cpu_count() or 1)),
                minloglevel=2,
            )
        except Exception as e:
            if failed:
                raise failed[0] from None
            if not isinstance(e, RuntimeError):
                raise
            too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(e))
            if too_high:
                raise InputError(
                    f"--vocab-size {vocab_size} is more than the corpus {' '.join(inputs)} supports "
                    f"({read['sentences']} sentences, {read['chars']:,} characters): at most {too_high.group(2)}; "
                    f"rerun with --vocab-size {too_high.group(2)} or less, or add text"
                ) from None
            too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
            if too_low:
                raise InputError(
                    f"--vocab-size {vocab_size} is too small for the corpus {' '.join(inputs)}: its characters and "
                    f"cloze's {len(specials) + 4} special tokens need at least {too_low.group(2)}; rerun with "
                    f"--vocab-size {too_low.group(2)} or more (or lower --character-coverage)"
                ) from None
            raise InputError(
                f"sentencepiece could not train on {' '.join(inputs)}: {e}".splitlines()[0]
            ) from None
        finally:
            trained.set()
            training.set()
        say(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s")
        info = describe(tmp / MODEL_FILE)
        info.model_type = model_type
        info.multilingual = sampling
        (tmp / META_FILE).write_text(json.dumps(tokenizer_meta(info), indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, "tokenizer.vocab", META_FILE):
            os.replace(tmp / name, out / name)
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _language_sampling(
    lang_files: dict[str, list[str]],
    sources: SourceOptions,
    stats: SourceStats,
    alpha: float,
    seed: int,
    input_sentence_size: int,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], Callable[[], Iterator[str]]]:
    """Count each language's sentences (one read), then return the sampling record (for tokenizer.json) and a
    reader that yields the drawn sentences (a second read): language by language, each sentence as often as it was
    drawn. `input_sentence_size` is passed on to sentencepiece too, so it keeps every drawn sentence."""
    counts: dict[str, int] = {}
    for lang, fs in lang_files.items():
        counts[lang] = sum(1 for _ in iter_lines(fs, sources, SourceStats()))
        if counts[lang] == 0:
            raise InputError(
                f"language {lang}: its inputs {' '.join(fs)} hold no text; check them or drop the {lang}= inputs"
            )
    shares = language_shares(counts, alpha)
    total = min(input_sentence_size, sum(counts.values()))
    drawn = sample_counts(shares, total)
    record: dict[str, Any] = {"alpha": alpha, "seed": seed, "sentences": total, "languages": {}}
    for lang in counts:
        record["languages"][lang] = {
            "sentences": counts[lang],
            "sampled": drawn[lang],
            "share": round(drawn[lang] / total, 6),
            "target_share": round(shares[lang], 6),
        }
        say(
            f"tokenizer: {lang}: {counts[lang]} sentences -> {drawn[lang]} sampled "
            f"(share {drawn[lang] / total:.4f}, n^{alpha} target {shares[lang]:.4f})"
        )

    def lines() -> Iterator[str]:
        for lang, fs in lang_files.items():
            rng = np.random.default_rng([seed, zlib.crc32(lang.encode())])
            picks = _picks(counts[lang], drawn[lang], rng).tolist()
            j = 0
            for i, line in enumerate(iter_lines(fs, sources, stats)):
                while j < len(picks) and picks[j] == i:
                    yield line
                    j += 1

    return record, lines


def _read_line(read: dict[str, int], files_done: int, files: int, t0: float) -> str:
    dt = max(time.perf_counter() - t0, 1e-9)
    return (
        f"tokenizer: read {read['sentences']} sentences, {read['chars'] / 1e6:.1f}M characters "
        f"({read['chars'] / 1e6 / dt:.1f}M/s), file {min(files_done, files)} of {files}"
    )


def tokenizer_meta(info: TokenizerInfo) -> dict:
    meta = {
        "file": MODEL_FILE,
        "sha256": info.sha256,
        "vocab_size": info.vocab_size,
        "model_type": info.model_type,
        "special_tokens": info.special_tokens.to_dict(),
        "sentinel_ids": info.sentinel_ids,
    }
    if info.multilingual is not None:
        meta["multilingual"] = info.multilingual
    return meta


def describe(model_path: str | Path) -> TokenizerInfo:
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    ids = SpecialIds(
        pad=sp.pad_id(),
        unk=sp.unk_id(),
        bos=sp.bos_id(),
        eos=sp.eos_id(),
        cls=sp.piece_to_id("[CLS]"),
        sep=sp.piece_to_id("[SEP]"),
        mask=sp.piece_to_id("[MASK]"),
    )
    for name, value in ids.to_dict().items():
        if value < 0 or (name not in ("unk",) and value == sp.unk_id()):
            raise InputError(f"{model_path} lacks the special token {name}; train it with `cloze tokenizer`")
    sentinels = []
    i = 0
    while True:
        sid = sp.piece_to_id(f"<extra_id_{i}>")
        if sid == sp.unk_id():
            break
        sentinels.append(sid)
        i += 1
    return TokenizerInfo(
        vocab_size=sp.get_piece_size(),
        special_tokens=ids,
        sentinel_ids=sentinels,
        sha256=sha256_file(model_path),
    )


def find_model(tokenizer: str | Path) -> Path:
    """tokenizer.model inside a directory (or the file itself); a clear error if there is none."""
    p = Path(tokenizer)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        raise InputError(
            f"tokenizer directory {p} has no {MODEL_FILE}; create it with `cloze tokenizer --out {p} ...`"
        )
    raise InputError(f"tokenizer {p} does not exist; create it with `cloze tokenizer --out {p} ...`")


def vocab_of(tok: Tokenizer) -> Vocab:
    """The objectives' view of a tokenizer: special ids, sentinels, and which pieces start a word."""
    sp = tok.sp
    word_start = np.asarray(
        [sp.id_to_piece(i).startswith("\u2581") for i in range(tok.vocab_size)], dtype=bool
    )
    return tok.special.vocab(tok.vocab_size, tok.info.sentinel_ids, word_start)


class Tokenizer:
    """Encode/decode with the special ids at hand."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = find_model(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.info = describe(self.path)
        meta = self.path.parent / META_FILE
        if meta.is_file():
            self.info.model_type = json.loads(meta.read_text()).get("model_type", self.info.model_type)
        self.special = self.info.special_tokens
        self.vocab_size = self.info.vocab_size

    def encode(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Token ids of each text. One thread by default: shard writing parallelises over processes."""
        return self.sp.encode(texts, out_type=int, num_threads=threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]
