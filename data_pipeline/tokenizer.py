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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def train_tokenizer(
    inputs: list[str],
    out_dir: str | Path,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    num_sentinels: int = NUM_SENTINELS,
    byte_fallback: bool = False,
    sources: SourceOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> TokenizerInfo:
    """Train a sentencepiece model on `inputs` and write tokenizer.model + tokenizer.json into `out_dir`.

    Written to a temporary directory first and moved into place complete, so a failure leaves nothing behind.
    `progress` gets a line now and then: sentences and bytes read, then the time spent training.
    """
    sources = sources or SourceOptions()
    files = resolve_inputs(inputs)
    check_inputs(files, sources)
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

    def sentences() -> Iterator[str]:
        last = time.perf_counter()
        for line in iter_lines(files, sources, stats):
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
        (tmp / META_FILE).write_text(json.dumps(tokenizer_meta(info), indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, "tokenizer.vocab", META_FILE):
            os.replace(tmp / name, out / name)
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_line(read: dict[str, int], files_done: int, files: int, t0: float) -> str:
    dt = max(time.perf_counter() - t0, 1e-9)
    return (
        f"tokenizer: read {read['sentences']} sentences, {read['chars'] / 1e6:.1f}M characters "
        f"({read['chars'] / 1e6 / dt:.1f}M/s), file {min(files_done, files)} of {files}"
    )


def tokenizer_meta(info: TokenizerInfo) -> dict:
    return {
        "file": MODEL_FILE,
        "sha256": info.sha256,
        "vocab_size": info.vocab_size,
        "model_type": info.model_type,
        "special_tokens": info.special_tokens.to_dict(),
        "sentinel_ids": info.sentinel_ids,
    }


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
