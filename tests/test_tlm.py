"""XLM translation language modelling (`--parallel --objective tlm`) on real parallel text.

The reference's arithmetic is ported below from facebookresearch/XLM (torch -> numpy, same order of random draws):
`batch_sentences` (xlm/data/dataset.py), `concat_batches` (xlm/utils.py) and `mask_out` (xlm/trainer.py). The
shards are compared with it draw for draw (same generator), then checked on their own: positions restart and
languages switch at the second sentence, putting the labels back gives both original sentences, masking rates.
Real pairs: `builtin:gettext-pairs:fr` (English messages and their French translations from this machine's gettext
catalogs); without them, a small TSV of hand-written pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_pipeline.loader import SampleCheck, ShardReader, collator_for
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import IGNORE, TLM, SentencePair, TLMParams, sample_rng, tlm_sides
from data_pipeline.parallel import PairStats, ParallelInputError, iter_pairs
from data_pipeline.sources import InputError
from data_pipeline.tokenizer import Tokenizer, train_tokenizer, vocab_of
from data_pipeline.writer import ShardOptions, split_of, write_shards
from tests.conftest import run_cloze

SEQ_LEN = 96
SEED = 5
BLOCK = 4096

FALLBACK_PAIRS = [
    ("The file could not be opened.", "Le fichier n'a pas pu être ouvert.", "en", "fr"),
    ("Save the document before closing.", "Enregistrez le document avant de fermer.", "en", "fr"),
    ("Permission denied", "Permission refusée", "en", "fr"),
    ("Unknown option given on the command line", "Option inconnue sur la ligne de commande", "en", "fr"),
    ("No space left on the device", "Plus d'espace disponible sur le périphérique", "en", "fr"),
    ("Connection timed out after a minute", "La connexion a expiré après une minute", "en", "fr"),
] * 40


def gettext_pairs() -> list[tuple[str, str, str, str]]:
    try:
        from data_pipeline.sources import iter_gettext_pairs

        return list(iter_gettext_pairs("fr"))
    except (ImportError, InputError):
        return []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pairs, the --input naming them, and a tokenizer trained on some of both sides (byte fallback: every
    character of the rest is encoded too)."""
    d = tmp_path_factory.mktemp("tlm")
    pairs = gettext_pairs()
    if pairs:
        source = "builtin:gettext-pairs:fr"
    else:
        pairs = FALLBACK_PAIRS
        source = str(d / "pairs.tsv")
        Path(source).write_text("".join("\t".join(p) + "\n" for p in pairs))
    text = d / "text.txt"
    text.write_text("".join(f"{a}\n{b}\n" for a, b, _, _ in pairs[:3000]))
    train_tokenizer([str(text)], d / "tok", vocab_size=1500, byte_fallback=True, character_coverage=1.0)
    return {
        "dir": d,
        "pairs": pairs,
        "input": source,
        "tok": d / "tok",
        "real": source.startswith("builtin:"),
    }


@pytest.fixture(scope="module")
def dataset(corpus: dict) -> Path:
    out = corpus["dir"] / "ds"
    opts = ShardOptions(objective="tlm", parallel=True, seq_len=SEQ_LEN, seed=SEED, valid_fraction=0.05)
    write_shards([corpus["input"]], corpus["tok"], out, opts)
    return out


# ---- the reference, ported from facebookresearch/XLM -----------------------------------------------------------


def xlm_batch_sentences(
    sentences: list[np.ndarray], pad_index: int, eos_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """xlm/data/dataset.py Dataset.batch_sentences: (slen, n) with each sentence as `</s> w1 .. wn </s>`."""
    lengths = np.asarray([len(s) + 2 for s in sentences])
    sent = np.full((lengths.max(), len(sentences)), pad_index, dtype=np.int64)
    sent[0] = eos_index
    for i, s in enumerate(sentences):
        if lengths[i] > 2:  # if sentence not empty
            sent[1 : lengths[i] - 1, i] = s
        sent[lengths[i] - 1, i] = eos_index
    return sent, lengths


def xlm_concat_batches(x1, len1, lang1_id, x2, len2, lang2_id, pad_idx, eos_idx, reset_positions):  # noqa: ANN001, ANN201
    """xlm/utils.py concat_batches."""
    assert reset_positions is False or lang1_id != lang2_id
    lengths = len1 + len2
    if not reset_positions:
        lengths = lengths - 1
    slen, bs = lengths.max(), len(lengths)
    x = np.full((slen, bs), pad_idx, dtype=np.int64)
    x[: len1.max()] = x1
    positions = np.repeat(np.arange(slen)[:, None], bs, axis=1)
    langs = np.full((slen, bs), lang1_id, dtype=np.int64)
    for i in range(bs):
        l1 = len1[i] if reset_positions else len1[i] - 1
        x[l1 : l1 + len2[i], i] = x2[: len2[i], i]
        if reset_positions:
            positions[l1:, i] -= len1[i]
        langs[l1:, i] = lang2_id
    assert (x == eos_idx).sum() == (4 if reset_positions else 3) * bs
    return x, lengths, positions, langs


def xlm_mask_out(
    x: np.ndarray,
    rng: np.random.Generator,
    word_pred: float,
    pred_probs: list[float],
    pad_index: int,
    mask_index: int,
    n_words: int,
):  # noqa: ANN201
    """xlm/trainer.py Trainer.mask_out with sample_alpha = 0 and fp16 off; np.random / torch draws -> `rng`, in
    the same order (pred mask, random words, multinomial over [mask, keep, rand])."""
    slen, bs = x.shape
    pred_mask = rng.random((slen, bs)) <= word_pred
    pred_mask[x == pad_index] = 0  # do not predict padding
    pred_mask[0] = 0
    _x_real = x[pred_mask]
    _x_rand = rng.integers(0, n_words, size=len(_x_real))  # _x_real.clone().random_(params.n_words)
    _x_mask = np.full_like(_x_real, mask_index)
    # torch.multinomial(params.pred_probs, len(_x_real), replacement=True)
    probs = rng.choice(3, size=len(_x_real), p=pred_probs)
    _x = _x_mask * (probs == 0) + _x_real * (probs == 1) + _x_rand * (probs == 2)
    x = x.copy()
    x[pred_mask] = _x
    assert 0 <= x.min() <= x.max() < n_words
    return x, _x_real, pred_mask


# ---- tests ------------------------------------------------------------------------------------------------------


def block0_expected(
    corpus: dict, tok: Tokenizer, split: str
) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """The pairs of block 0 routed to `split` that fit SEQ_LEN (XLM drops the others), in order, tokenized."""
    out = []
    for i, (a, b, la, lb) in enumerate(corpus["pairs"][:BLOCK]):
        if split_of(i, SEED, 0.05) != split:
            continue
        ta, tb = (np.asarray(t) for t in tok.encode([a, b]))
        if len(ta) + len(tb) + 4 <= SEQ_LEN:
            out.append((ta, tb, la, lb))
    return out


def read_shard(d: Path, split: str, shard: int = 0) -> list[dict[str, np.ndarray]]:
    m = read_manifest(d)
    r = ShardReader(d, m, split)
    try:
        return [r.read(shard, i) for i in range(r.shards[shard].samples)]
    finally:
        r.close()


def test_layout_and_masks_follow_the_ported_xlm_draw_for_draw(corpus: dict, dataset: Path) -> None:
    m = read_manifest(dataset)
    tok = Tokenizer(dataset / m.tokenizer["file"])
    st = m.special_tokens
    expected = block0_expected(corpus, tok, "train")
    samples = read_shard(dataset, "train")
    assert len(samples) == len(expected) > 100
    for i, (s, (ta, tb, la, lb)) in enumerate(zip(samples, expected)):
        x1, len1 = xlm_batch_sentences([ta], st["pad"], st["eos"])
        x2, len2 = xlm_batch_sentences([tb], st["pad"], st["eos"])
        l1, l2 = m.languages.index(la), m.languages.index(lb)
        x, lengths, positions, langs = xlm_concat_batches(
            x1, len1, l1, x2, len2, l2, st["pad"], st["eos"], True
        )
        assert s["position_ids"].tolist() == positions[:, 0].tolist()
        assert s["langs"].tolist() == langs[:, 0].tolist()
        xm, y, pred = xlm_mask_out(
            x,
            sample_rng(SEED, 0, 0, i, 0),
            0.15,
            [0.8, 0.1, 0.1],
            st["pad"],
            st["mask"],
            m.tokenizer["vocab_size"],
        )
        assert s["input_ids"].tolist() == xm[:, 0].tolist(), f"sample {i}"
        assert s["labels"][pred[:, 0]].tolist() == y.tolist()
        assert (s["labels"][~pred[:, 0]] == IGNORE).all()


def test_positions_restart_languages_switch_and_labels_give_back_both_sentences(
    corpus: dict, dataset: Path
) -> None:
    m = read_manifest(dataset)
    tok = Tokenizer(dataset / m.tokenizer["file"])
    eos = m.special_tokens["eos"]
    exact = normalised = 0
    for split in ("train", "valid"):
        expected = block0_expected(corpus, tok, split)
        originals = [
            (a, b)
            for i, (a, b, _, _) in enumerate(corpus["pairs"][:BLOCK])
            if split_of(i, SEED, 0.05) == split and sum(len(t) for t in tok.encode([a, b])) + 4 <= SEQ_LEN
        ]
        samples = read_shard(dataset, split)
        assert len(samples) == len(originals) == len(expected)
        for s, (a, b), (ta, tb, la, lb) in zip(samples, originals, expected):
            n1 = len(ta) + 2
            pos, langs = s["position_ids"], s["langs"]
            # positions restart where the second sentence's </s> follows the first's
            assert pos.tolist() == list(range(n1)) + list(range(len(tb) + 2))
            assert set(langs[:n1].tolist()) == {m.languages.index(la)}
            assert set(langs[n1:].tolist()) == {m.languages.index(lb)}
            filled = np.where(s["labels"] != IGNORE, s["labels"], s["input_ids"])
            sides = tlm_sides({**s, "input_ids": filled})
            assert [lang for lang, _, _ in sides] == [m.languages.index(la), m.languages.index(lb)]
            texts = []
            for _, ids, _ in sides:
                assert ids[0] == eos and ids[-1] == eos and (ids[1:-1] != eos).all()
                texts.append(tok.decode(ids[1:-1].tolist()))
            # exactly the originals, up to the tokenizer's own normalisation (sentencepiece NFKC: `…` -> `...`)
            assert texts == [tok.decode(ta.tolist()), tok.decode(tb.tolist())]
            if texts == [a, b]:
                exact += 1
            else:
                normalised += 1
    assert exact > 0.98 * (exact + normalised), (exact, normalised)


def test_masking_rates_match_xlm_within_sampling_error(dataset: Path) -> None:
    m = read_manifest(dataset)
    st = m.special_tokens
    eligible = chosen = as_mask = kept = 0
    for s in read_shard(dataset, "train"):
        x, y = s["input_ids"], s["labels"]
        pred = y != IGNORE
        assert not pred[0]  # XLM never predicts the first position
        # XLM: every position but the first (no padding within a sample), </s> included
        eligible += len(x) - 1
        chosen += int(pred.sum())
        as_mask += int((x[pred] == st["mask"]).sum())
        kept += int((x[pred] == y[pred]).sum())
    tol = lambda p, n: 5 * math.sqrt(p * (1 - p) / n)  # noqa: E731  (5 standard errors)
    assert abs(chosen / eligible - 0.15) < tol(0.15, eligible)
    v = m.tokenizer["vocab_size"]
    for got, p in ((as_mask, 0.8), (kept, 0.1 + 0.1 / v), (chosen - as_mask - kept, 0.1 * (1 - 1 / v))):
        assert abs(got / chosen - p) < tol(p, chosen), (got / chosen, p)


def test_manifest_records_languages_and_counts_dropped_pairs(corpus: dict, dataset: Path) -> None:
    m = read_manifest(dataset)
    assert m.languages == ["en", "fr"]
    assert m.packing["method"] == "parallel"
    assert m.source_stats["documents"] == len(corpus["pairs"])
    written = m.splits["train"]["samples"] + m.splits["valid"]["samples"]
    assert written + m.packing["dropped_pairs"] == len(corpus["pairs"])
    assert m.splits["valid"]["samples"] > 0 and m.packing["longest_input"] <= SEQ_LEN
    assert m.objective_params["long_pairs"] == "drop"


def test_loader_checks_and_collates_tlm_samples(dataset: Path) -> None:
    m = read_manifest(dataset)
    samples = read_shard(dataset, "valid")[:4]
    check = SampleCheck(m)
    assert all(check.problem(s) == "" for s in samples)
    bad = {**samples[0], "langs": samples[0]["langs"] + len(m.languages)}
    assert "langs holds" in check.problem(bad)
    bad = {**samples[0], "position_ids": samples[0]["position_ids"][:-1]}
    assert "must be equal" in check.problem(bad)
    batch = collator_for(m)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    width = max(lengths)
    assert batch["input_ids"].shape == (4, width) and batch["langs"].shape == (4, width)
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["position_ids"][i, n:].eq(0).all() and batch["langs"][i, n:].eq(0).all()
        assert batch["labels"][i, n:].eq(IGNORE).all()
        assert batch["position_ids"][i, :n].tolist() == samples[i]["position_ids"].tolist()


def test_long_pairs_truncate_instead_of_drop(corpus: dict) -> None:
    vocab = vocab_of(Tokenizer(corpus["tok"]))
    tlm = TLM(vocab, 12, TLMParams(long_pairs="truncate"))
    a, b = np.arange(10, 20), np.arange(30, 33)
    fa, fb, how = tlm.fit(a, b)  # type: ignore[misc]
    assert how == "truncated" and len(fa) + len(fb) + 4 == 12 and fb.tolist() == b.tolist()
    assert TLM(vocab, 12).fit(a, b) is None  # XLM's default: dropped
    assert TLM(vocab, 64, TLMParams(max_len=5)).fit(a, b) is None  # a side over max_len
    s = tlm(SentencePair(fa, fb, 0, 1), sample_rng(0, 1))
    assert len(s["input_ids"]) == 12 and s["position_ids"].tolist() == list(range(7)) + list(range(5))


# ---- bad input --------------------------------------------------------------------------------------------------


def test_bad_lines_are_counted_and_skipped(corpus: dict, tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    good = [("Open the file now", "Ouvrir le fichier maintenant", "en", "fr")] * 30
    lines = ["\t".join(p) for p in good] + [
        "only\ttwo",  # 2 columns
        "\tTexte sans anglais\ten\tfr",  # missing side
        "Text without language\tTexte sans langue\ten\t",  # missing language
        "Same\tSame language\tfr\tfr",
    ]
    tsv.write_text("\n".join(lines) + "\n")
    jl = tmp_path / "p.jsonl"
    recs = [json.dumps({"a": a, "b": b, "la": "en", "lb": "de"}) for a, b, _, _ in good[:20]]
    recs += ["{not json", json.dumps({"a": "x", "la": "en", "lb": "de"}), json.dumps(["a list"])]
    jl.write_text("\n".join(recs) + "\n")
    out = tmp_path / "ds"
    opts = ShardOptions(
        objective="tlm", parallel=True, seq_len=32, valid_fraction=0.1, pair_keys=["a", "b", "la", "lb"]
    )
    m = write_shards([str(tsv), str(jl)], corpus["tok"], out, opts)
    assert m is not None
    s: dict[str, Any] = dict(m.source_stats)
    assert (s["bad_tsv_lines"], s["missing_side"], s["missing_language"], s["same_language"]) == (1, 2, 1, 1)
    assert s["bad_json_lines"] == 2 and s["documents"] == 50
    assert s["examples"][0] == f"{tsv}:31: 2 tab-separated columns, expected 4"
    assert m.languages == ["de", "en", "fr"]
    langs = {int(x) for smp in read_shard(out, "train") for x in smp["langs"]}
    assert langs <= {0, 1, 2} and 0 in langs and 2 in langs


def test_a_file_with_no_pair_is_an_error_naming_file_and_line(corpus: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tabs here\nnor\there\n")
    out = tmp_path / "ds"
    opts = ShardOptions(objective="tlm", parallel=True, seq_len=32)
    with pytest.raises(
        ParallelInputError, match=rf"{bad}: none of its 2 lines gives a pair \(first: {bad}:1: 1 tab"
    ):
        write_shards([str(bad)], corpus["tok"], out, opts)
    assert not out.exists()
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"src": "Hello there my friend", "tgt": "Bonjour", "src_lang": "en"}\n')
    with pytest.raises(InputError, match=rf"{jl}:1: no language for the second side.*--pair-keys"):
        write_shards([str(jl)], corpus["tok"], out, opts)
    with pytest.raises(InputError, match=f"input file {tmp_path / 'missing.tsv'} does not exist"):
        write_shards([str(tmp_path / "missing.tsv")], corpus["tok"], out, opts)
    with pytest.raises(InputError, match="add --parallel"):
        ShardOptions(objective="tlm")
    with pytest.raises(InputError, match="--objective tlm"):
        ShardOptions(objective="mlm", parallel=True)


def test_iter_pairs_counts_a_missing_side_in_jsonl(tmp_path: Path) -> None:
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"src": "a b c", "tgt": "", "src_lang": "en", "tgt_lang": "fr"}\n')
    stats = PairStats()
    assert list(iter_pairs([str(jl)], stats)) == []
    assert stats.missing_side == 1 and stats.examples == [f"{jl}:1: no text in the second side"]


def test_cli_parallel_jsonl_and_monolingual_language(corpus: dict, tmp_path: Path) -> None:
    jl = tmp_path / "pairs.jsonl"
    pairs = corpus["pairs"][:400]
    jl.write_text(
        "".join(json.dumps({"en": a, "fr": b, "l1": la, "l2": lb}) + "\n" for a, b, la, lb in pairs)
    )
    r = run_cloze(
        [
            "shards",
            "--parallel",
            "--objective",
            "tlm",
            "--input",
            str(jl),
            "--pair-keys",
            "en,fr,l1,l2",
            "--tokenizer",
            str(corpus["tok"]),
            "--seq-len",
            "64",
            "--valid-fraction",
            "0.1",
            "--out",
            str(tmp_path / "ds"),
            "--quiet",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "400 pairs (en, fr)" in r.stdout
    r = run_cloze(["inspect", str(tmp_path / "ds"), "--n", "1"])
    assert r.returncode == 0 and "\n[en] </s>" in r.stdout and "\n[fr] " in r.stdout, r.stdout + r.stderr
    # monolingual text records its language; no per-token member
    txt = tmp_path / "fr.txt"
    txt.write_text("".join(f"{b}\n" for _, b, _, _ in pairs))
    opts = ShardOptions(objective="mlm", seq_len=32, valid_fraction=0.1, language="fr")
    opts.sources.text_mode = "lines"
    m = write_shards([str(txt)], corpus["tok"], tmp_path / "mono", opts)
    assert m is not None and m.languages == ["fr"]
    assert set(read_shard(tmp_path / "mono", "train")[0]) == {"input_ids", "labels"}
    raw = json.loads((tmp_path / "mono" / "manifest.json").read_text())
    del raw["languages"]  # a manifest written before the field: read as []
    (tmp_path / "mono" / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(tmp_path / "mono").languages == []
