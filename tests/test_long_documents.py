"""Long-document shards for Longformer: `--doc-boundaries` (one document a sequence, padded tails with an
attention_mask) and `--global-tokens` (a global_attention_mask), checked against the corpus re-tokenized here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.loader import ShardReader, StreamSpec, TrainStream
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import IGNORE
from data_pipeline.packing import pack_block, packer_for
from data_pipeline.sources import InputError, SourceStats, iter_documents
from data_pipeline.tokenizer import Tokenizer, vocab_of
from data_pipeline.writer import ShardOptions, write_shards
from tests.conftest import run_cloze, write_stdlib_corpus
from tests.test_errors import one_line_error

SEQ = 32
BODY = SEQ - 1  # [CLS] + 31 body tokens
DOCS_PER_BLOCK = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 stdlib docstrings as 80 documents of 3 (three blocks; many documents take several sequences of 32)."""
    return write_stdlib_corpus(tmp_path_factory.mktemp("long") / "corpus.txt", 240, per_document=3)


@pytest.fixture(scope="module")
def documents(corpus: Path, tokenizer_dir: Path) -> list[list[list[int]]]:
    """Every document of the corpus as its lines' token ids, tokenized here one document at a time."""
    tok = Tokenizer(tokenizer_dir)
    return [tok.encode(lines) for lines in iter_documents([str(corpus)], SourceStats())]


def write(tmp: Path, corpus: Path, tok: Path, name: str, **kw) -> Path:
    """A train-only dataset of `corpus` (blocks of DOCS_PER_BLOCK documents) in tmp/name."""
    opts = dict(objective="tokens", seq_len=SEQ, seed=1, valid_fraction=0.0, docs_per_block=DOCS_PER_BLOCK)
    write_shards([str(corpus)], tok, tmp / name, ShardOptions(**{**opts, **kw}))
    return tmp / name


def rows(d: Path) -> list[dict[str, np.ndarray]]:
    """Every train sample, in write order (block by block, sequence by sequence)."""
    m = read_manifest(d)
    r = ShardReader(d, m, "train")
    try:
        return [r.read(s, i) for s, e in enumerate(r.shards) for i in range(e.samples)]
    finally:
        r.close()


def expected_by_document(docs: list[list[list[int]]], cls: int, sep: int, pad: int):
    """The doc-boundary packing computed here: per document, the sequences [CLS] + its stream cut in BODY-token
    pieces (its stream: its tokens, then [SEP] if it fits in the last piece), padded; with the attention mask and
    the positions where a line begins."""
    out = []
    for d, doc in enumerate(docs):
        lines = [line for line in doc if line]
        flat = [t for line in lines for t in line]
        starts = np.cumsum([0] + [len(line) for line in lines])[:-1]
        stream = flat + [sep]
        for k in range(-(-len(flat) // BODY)):
            piece = stream[k * BODY : (k + 1) * BODY]
            ids = [cls, *piece] + [pad] * (BODY - len(piece))
            mask = [1] * (1 + len(piece)) + [0] * (BODY - len(piece))
            line_starts = [1 + s - k * BODY for s in starts if k * BODY <= s < (k + 1) * BODY]
            out.append((d, np.asarray(ids), np.asarray(mask), line_starts))
    return out


def expected_concatenated(docs: list[list[list[int]]], cls: int, sep: int):
    """The default packing computed here: per block of documents one stream (each document's tokens + [SEP]),
    cut into [CLS] + BODY tokens, the remainder dropped; with the positions where a line begins."""
    out = []
    for b in range(0, len(docs), DOCS_PER_BLOCK):
        stream: list[int] = []
        starts: list[int] = []
        for doc in docs[b : b + DOCS_PER_BLOCK]:
            for line in doc:
                if line:
                    starts.append(len(stream))
                    stream += line
            stream.append(sep)
        for i in range(len(stream) // BODY):
            line_starts = [1 + s - i * BODY for s in starts if i * BODY <= s < (i + 1) * BODY]
            out.append((np.asarray([cls, *stream[i * BODY : (i + 1) * BODY]]), line_starts))
    return out


@pytest.fixture(scope="module")
def by_document(tmp_path_factory, corpus, tokenizer_dir) -> Path:
    """`--doc-boundaries --global-tokens first-of-each-line` clean-token shards."""
    tmp = tmp_path_factory.mktemp("bydoc")
    return write(tmp, corpus, tokenizer_dir, "docs", doc_boundaries=True, global_tokens="first-of-each-line")


def test_no_sequence_mixes_documents_and_padding_is_at_the_tails(by_document, documents, tokenizer_dir):
    st = Tokenizer(tokenizer_dir).special
    written = rows(by_document)
    want = expected_by_document(documents, st.cls, st.sep, st.pad)
    assert len(written) == len(want) > len(documents)  # some documents take several sequences
    assert sum(1 for _, _, mask, _ in want if mask[-1] == 0) > len(documents) // 2  # many padded tails
    per_doc: dict[int, list[int]] = {}
    for sample, (d, ids, mask, _) in zip(written, want):
        assert sample["input_ids"].tolist() == ids.tolist()  # one document's tokens only, in order
        assert sample["attention_mask"].tolist() == mask.tolist()
        m = sample["attention_mask"]
        assert np.all(np.diff(m) <= 0) and m[0] == 1  # tokens first, padding only at the tail
        assert np.all((sample["input_ids"] == st.pad) == (m == 0))
        per_doc.setdefault(d, []).extend(sample["input_ids"][1:][m[1:] == 1].tolist())
    for d, doc in enumerate(documents):
        flat = [t for line in doc for t in line]
        # every token of the document, in order, then its [SEP] (left out when the tokens fill the last sequence)
        assert per_doc[d] == flat + ([st.sep] if len(flat) % BODY else [])
    m = read_manifest(by_document)
    assert m.packing["method"] == "documents"
    assert m.build["doc_boundaries"] is True and m.build["global_tokens"] == "first-of-each-line"
    real = sum(int(s["attention_mask"].sum()) for s in written)
    assert m.splits["train"]["tokens"] == real  # padding is not counted as tokens
    assert m.packing["pad_tokens"] == len(written) * SEQ - real
    assert m.packing["dropped_tokens"] == sum(1 for doc in documents if sum(map(len, doc)) % BODY == 0)


def test_first_of_each_line_by_document(by_document, documents, tokenizer_dir):
    st = Tokenizer(tokenizer_dir).special
    for sample, (_, _, _, starts) in zip(
        rows(by_document), expected_by_document(documents, st.cls, st.sep, st.pad)
    ):
        g = sample["global_attention_mask"]
        assert g.dtype == np.int8
        assert np.flatnonzero(g).tolist() == sorted({0, *starts})
        assert not np.any(g.astype(bool) & (sample["attention_mask"] == 0))  # never on padding


@pytest.mark.parametrize("kind", ["cls", "first-of-each-line"])
def test_global_tokens_without_doc_boundaries(tmp_path, corpus, tokenizer_dir, documents, kind):
    """Global masks on the default packing: the sequences are the default ones (documents concatenated), the mask
    is [CLS] alone, or [CLS] and the first token of each line (computed here from the re-tokenized corpus)."""
    st = Tokenizer(tokenizer_dir).special
    d = write(tmp_path, corpus, tokenizer_dir, "g", global_tokens=kind)
    written = rows(d)
    want = expected_concatenated(documents, st.cls, st.sep)
    assert len(written) == len(want)
    marked_lines = 0
    for sample, (ids, starts) in zip(written, want):
        assert set(sample) == {"input_ids", "global_attention_mask"}  # no padding: no attention_mask
        assert sample["input_ids"].tolist() == ids.tolist()
        g = np.flatnonzero(sample["global_attention_mask"]).tolist()
        assert g == ([0] if kind == "cls" else sorted({0, *starts}))
        marked_lines += len(g) - 1
    assert (marked_lines > len(written)) == (kind == "first-of-each-line")
    assert read_manifest(d).build["global_tokens"] == kind


def test_without_the_flags_packing_is_the_stream_cut(tmp_path, corpus, tokenizer_dir, documents):
    """The default packing is untouched by the new options: the same sequences as the stream cut computed here,
    no new members, the manifest says `concat` (the byte-identity tests in test_writer.py compare whole datasets)."""
    st = Tokenizer(tokenizer_dir).special
    d = write(tmp_path, corpus, tokenizer_dir, "plain")
    written = rows(d)
    assert [s["input_ids"].tolist() for s in written] == [
        ids.tolist() for ids, _ in expected_concatenated(documents, st.cls, st.sep)
    ]
    assert all(set(s) == {"input_ids"} for s in written)
    m = read_manifest(d)
    assert m.packing["method"] == "concat" and "pad_tokens" not in m.packing
    assert m.build["doc_boundaries"] is False and m.build["global_tokens"] == ""
    assert m.splits["train"]["tokens"] == len(written) * SEQ


def test_pack_block_by_document_with_a_suffix(tokenizer_dir):
    """A padded packing with a suffix (none of the built-in ones that pad has one) puts it after the tokens."""
    from data_pipeline.packing import Packer

    packer = Packer(8, [90], [91], 92, pad=0)  # body 6
    block = pack_block([[[1, 2], [3]], [[4, 5, 6, 7, 8, 9]], [[10, 11, 12, 13, 14, 15, 16]]], packer, True)
    assert block.tokens.tolist() == [
        [90, 1, 2, 3, 92, 91, 0, 0],
        [90, 4, 5, 6, 7, 8, 9, 91],  # its separator would start a sequence alone: dropped
        [90, 10, 11, 12, 13, 14, 15, 91],
        [90, 16, 92, 91, 0, 0, 0, 0],
    ]
    assert block.attention_mask().tolist() == [
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1] * 8,
        [1] * 8,
        [1, 1, 1, 1, 0, 0, 0, 0],
    ]
    assert block.dropped_tokens == 1
    assert block.line_starts(0).tolist() == [1, 3] and block.line_ends(0).tolist() == [3, 4]


def test_static_mlm_never_masks_padding(tmp_path, corpus, tokenizer_dir, by_document):
    """mlm written with --doc-boundaries: the same sequences as the clean ones, labels -100 on the padding."""
    d = write(tmp_path, corpus, tokenizer_dir, "mlm", objective="mlm", doc_boundaries=True)
    clean = rows(by_document)
    written = rows(d)
    assert len(written) == len(clean)
    for s, c in zip(written, clean):
        pad = s["attention_mask"] == 0
        assert np.all(s["labels"][pad] == IGNORE) and np.all(s["input_ids"][pad] == c["input_ids"][pad])
        assert np.array_equal(np.where(s["labels"] != IGNORE, s["labels"], s["input_ids"]), c["input_ids"])
    assert sum(int((s["labels"] != IGNORE).sum()) for s in written) > 0


def test_loader_batch_carries_both_masks_and_dynamic_masking_skips_padding(by_document, tokenizer_dir):
    spec = StreamSpec(global_batch=16, micro_batch=16, seed=3)
    stream = iter(TrainStream(by_document, spec, objective="mlm", objective_options={"rate": 0.5}))
    pad = Tokenizer(tokenizer_dir).special.pad
    padded = 0
    for _ in range(8):
        batch = next(stream)
        am, g = batch["attention_mask"], batch["global_attention_mask"]
        assert am.dtype == g.dtype == torch.long and am.shape == g.shape == batch["input_ids"].shape
        off = am == 0
        padded += int(off.sum())
        assert torch.all(batch["labels"][off] == IGNORE)  # padding is never selected
        assert torch.all(batch["input_ids"][off] == pad)  # nor replaced
        assert torch.all(g[:, 0] == 1) and not torch.any((g == 1) & off)
        assert int((batch["labels"] != IGNORE).sum()) > 0
    assert padded > 0


def test_longformer_task_passes_the_global_mask_to_the_model(by_document, tokenizer_dir):
    """The loader's batch through LongformerMLMTask into a tiny Longformer: both masks reach the model."""
    from modeling import build_model
    from tests.conftest import tiny_model_config
    from trainer.losses import LongformerMLMTask

    tok = Tokenizer(tokenizer_dir)
    cfg = tiny_model_config(
        family="longformer",
        vocab_size=tok.vocab_size,
        pad_token_id=tok.special.pad,
        type_vocab_size=1,
        attention_window=[8],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = next(iter(TrainStream(by_document, StreamSpec(4, 4, seed=1), objective="mlm")))
    seen: dict[str, torch.Tensor] = {}

    def forward(**kw):
        seen.update(kw)
        return model(**kw)

    with torch.no_grad():
        result = LongformerMLMTask()(forward, batch)
    assert seen["global_attention_mask"] is batch["global_attention_mask"]
    assert seen["attention_mask"] is batch["attention_mask"]
    assert torch.isfinite(torch.as_tensor(result.loss))


def test_bad_options_are_refused_before_anything_is_written(tmp_path, corpus, tokenizer_dir):
    with pytest.raises(
        InputError, match=r"--global-tokens 'every-word' is not known: use cls or first-of-each"
    ):
        ShardOptions(global_tokens="every-word")
    with pytest.raises(InputError, match="--doc-boundaries does not go with --sentence-task sop"):
        ShardOptions(sentence_task="sop", doc_boundaries=True)
    for objective, flags, seq in [
        ("t5", {"doc_boundaries": True}, 64),
        ("bart", {"doc_boundaries": True}, SEQ),
        ("bart", {"global_tokens": "cls"}, SEQ),
    ]:
        out = tmp_path / f"{objective}-{len(flags)}"
        flag = "--doc-boundaries" if "doc_boundaries" in flags else "--global-tokens cls"
        with pytest.raises(InputError) as e:
            write_shards(
                [str(corpus)], tokenizer_dir, out, ShardOptions(objective=objective, seq_len=seq, **flags)
            )
        msg = str(e.value)
        assert msg.startswith(f"{flag} cannot be written with --objective {objective}"), msg
        assert "mlm" in msg and "tokens" in msg  # what to use instead
        assert not out.exists()


def test_cli_flags(tmp_path, corpus, tokenizer_dir):
    """`--global-tokens` with an unknown value is argparse's error naming the flag, the value and the choices;
    `--doc-boundaries` with bart is one line naming the flag; good flags reach the manifest."""
    base = ["shards", "--input", str(corpus), "--tokenizer", str(tokenizer_dir), "--seq-len", str(SEQ)]
    proc = run_cloze([*base, "--out", str(tmp_path / "a"), "--global-tokens", "words"])
    assert proc.returncode == 2
    assert "--global-tokens: invalid choice: 'words'" in proc.stderr and "first-of-each-line" in proc.stderr
    err = one_line_error(
        run_cloze([*base, "--out", str(tmp_path / "b"), "--objective", "bart", "--doc-boundaries"])
    )
    assert "--doc-boundaries cannot be written with --objective bart" in err
    assert not (tmp_path / "b").exists()
    out = tmp_path / "c"
    proc = run_cloze(
        [
            *base,
            "--out",
            str(out),
            "--valid-fraction",
            "0",
            "--doc-boundaries",
            "--global-tokens",
            "cls",
            "--quiet",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m.build["doc_boundaries"] is True and m.build["global_tokens"] == "cls"


def test_packers_that_cannot_pad(tokenizer_dir):
    """Only the encoder packing pads; pack_block refuses the others."""
    vocab = vocab_of(Tokenizer(tokenizer_dir))
    assert packer_for("encoder", SEQ, vocab).pads
    for kind in ("raw", "bart"):
        packer = packer_for(kind, SEQ, vocab)
        assert not packer.pads
        with pytest.raises(ValueError, match="cannot be padded"):
            pack_block([[[5, 6, 7]]], packer, doc_boundaries=True)
