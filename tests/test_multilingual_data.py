"""Multilingual data: built-in corpora from the system's GNU gettext catalogs (`builtin:gettext:LANG`,
`builtin:gettext-pairs:LANG`) and the multilingual `cloze tokenizer` (language tags, n^alpha sampling, byte
fallback). Real catalogs under /usr/share/locale, no download."""

from __future__ import annotations

import gettext
import json
import re
import unicodedata
from pathlib import Path

import pytest

from data_pipeline import sources
from data_pipeline.sources import (
    GettextLanguageError,
    InputError,
    SourceStats,
    clean_gettext_string,
    gettext_stats,
    gettext_string_ok,
    iter_documents,
    iter_gettext_pairs,
    read_mo,
    resolve_inputs,
)
from data_pipeline.tokenizer import Tokenizer, language_shares, sample_counts, split_language_tag
from launch import cli

pytestmark = pytest.mark.skipif(
    not all(lang in sources.gettext_catalogs() for lang in ("fr", "de", "ru", "ja", "es")),
    reason="needs the gettext catalogs of fr, de, ru, ja, es under /usr/share/locale",
)

ACCELERATOR = re.compile(r"(?<!\w)_[^\W\d_]|&[^\W\d_](?![A-Za-z]{1,7};)|[(（]\s*[_&][^\W_]\s*[)）]")
LANGS = ("fr", "de", "ru", "ja", "es")
SMALL = 300
"""Lines of the small language (ja, from a file) in the tokenizer test: upsampled by n^0.3 sampling."""


def words(text: str) -> int:
    """Space-separated words holding a letter, once printf/Python formats are removed."""
    return sum(any(c.isalpha() for c in w) for w in sources._FORMAT.sub("", text).split())


# ---- the corpora ---------------------------------------------------------------------------------------------


def test_cleaning_and_string_rules() -> None:
    assert clean_gettext_string("_Open the\n  file") == "Open the file"
    assert clean_gettext_string("Save &As...") == "Save As..."
    assert clean_gettext_string("ファイル(_F)") == "ファイル"
    assert clean_gettext_string("Tom && Jerry &amp; file_name") == "Tom & Jerry &amp; file_name"
    assert gettext_string_ok("Open the file", "en")
    assert not gettext_string_ok("Open file", "en")  # 2 words
    assert not gettext_string_ok("%s: %d (%s)", "fr")  # formats and punctuation only
    assert not gettext_string_ok("1 2 3 4 a", "en")  # mostly digits
    assert gettext_string_ok("ファイルを開く", "ja") and not gettext_string_ok("開く", "ja")
    assert gettext_string_ok("文件已保存到磁盘", "zh_CN")


def test_mo_reader_agrees_with_the_stdlib() -> None:
    path = next(p for p in sources.gettext_catalogs()["fr"] if Path(p).stem == "apt")
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
    singular = {}
    for key, value in catalog.items():
        msgid = key[0] if isinstance(key, tuple) else key
        if msgid and "\x04" not in msgid and (not isinstance(key, tuple) or key[1] == 0):
            singular[msgid] = value
    ours = read_mo(path)
    assert len(ours) > 100
    assert sum(singular.get(msgid) == msgstr for msgid, msgstr in ours) >= 0.95 * len(ours)


@pytest.mark.parametrize("lang", ["fr", "de", "ja"])
def test_real_catalogs_give_filtered_parallel_and_monolingual_text(lang: str) -> None:
    pairs = list(iter_gettext_pairs(lang))
    assert len(pairs) > 10_000, len(pairs)
    assert {(a, b) for *_, a, b in pairs} == {("en", lang)}
    assert len({(en, tr) for en, tr, *_ in pairs}) == len(pairs)  # deduplicated
    for en, tr, *_ in pairs:
        assert tr.casefold() != en.casefold()
        for text in (en, tr):
            assert "\n" not in text and "  " not in text and text == text.strip()
            assert not ACCELERATOR.search(text), text
        assert words(en) >= 3, en
        if lang == "ja":
            assert len(re.sub(r"[\W\d_]", "", tr)) >= 6, tr
        else:
            assert words(tr) >= 3, tr
    docs = list(iter_documents([f"builtin:gettext:{lang}"], SourceStats()))
    lines = [line for doc in docs for line in doc]
    assert len(docs) > 20 and len(lines) == len(set(lines)) > 10_000
    assert set(lines) <= {tr for _, tr, *_ in pairs}
    stats = gettext_stats(lang)
    assert stats["pairs"] == len(pairs) and stats["lines"] == len(lines)
    assert stats["messages"] == sum(
        stats[k] for k in ("name_lists", "identical", "too_short_or_symbols", "duplicate", "pairs")
    )
    if lang == "ja":
        assert sum(bool(re.search(r"[\u3040-\u30ff]", line)) for line in lines) > 0.9 * len(lines)
    if lang == "de":
        assert any("Datei" in line for line in lines)


def test_reads_are_deterministic() -> None:
    first = list(iter_documents(["builtin:gettext:de"], SourceStats()))
    sources.gettext_corpus.cache_clear()
    assert list(iter_documents(["builtin:gettext:de"], SourceStats())) == first


def test_unknown_empty_and_parallel_inputs_are_clear_errors() -> None:
    for item, what in (
        ("builtin:gettext:xx", "no language 'xx'"),
        ("builtin:gettext-pairs:", "an empty language"),
    ):
        with pytest.raises(InputError) as e:
            resolve_inputs([item])
        msg = str(e.value)
        assert item in msg and what in msg and "fr (" in msg and "de (" in msg and "pt_BR" in msg, msg
    with pytest.raises(InputError, match="English is the source side"):
        list(iter_gettext_pairs("en"))
    assert resolve_inputs(["builtin:gettext-pairs:fr", "builtin:gettext:en"]) == [
        "builtin:gettext-pairs:fr",
        "builtin:gettext:en",
    ]
    with pytest.raises(GettextLanguageError, match=r"parallel text.*--parallel.*builtin:gettext:fr"):
        list(iter_documents(["builtin:gettext-pairs:fr"], SourceStats()))


def test_english_and_language_list_on_a_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`en` (the msgids) and gettext_languages, on three languages' catalogs (all ~3,700 take seconds)."""
    subset = {k: v for k, v in sources.gettext_catalogs().items() if k in ("de", "fr", "ga")}
    monkeypatch.setattr(sources, "gettext_catalogs", lambda: subset)
    sources._gettext_english.cache_clear()
    try:
        english = [line for doc in iter_documents(["builtin:gettext:en"], SourceStats()) for line in doc]
        assert len(english) == len(set(english)) > 10_000
        assert all(gettext_string_ok(line, "en") for line in english)
        langs = sources.gettext_languages(min_pairs=1000)
        assert list(langs)[:2] == ["fr", "de"] and langs["fr"] == gettext_stats("fr")["pairs"]
        assert all(n >= 1000 for n in langs.values())
    finally:
        sources._gettext_english.cache_clear()


# ---- the multilingual tokenizer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ja(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = [line for doc in sources.iter_gettext_documents("ja") for line in doc][:SMALL]
    path = tmp_path_factory.mktemp("ja") / "ja.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def multilingual_tok(tmp_path_factory: pytest.TempPathFactory, small_ja: Path) -> Path:
    out = tmp_path_factory.mktemp("mtok") / "tok"
    inputs = [f"{lang}=builtin:gettext:{lang}" for lang in LANGS if lang != "ja"] + [f"ja={small_ja}"]
    argv = ["tokenizer", "--vocab-size", "2000", "--input-sentence-size", "6000"]
    for item in inputs:
        argv += ["--input", item]
    assert cli.main([*argv, "--out", str(out)]) == 0
    return out


def test_multilingual_tokenizer_round_trips_every_language(multilingual_tok: Path) -> None:
    meta = json.loads((multilingual_tok / "tokenizer.json").read_text())
    ml = meta["multilingual"]
    assert ml["byte_fallback"] is True and ml["character_coverage"] == 0.9999 and ml["alpha"] == 0.3
    assert set(ml["languages"]) == set(LANGS) and ml["sentences"] == 6000
    tok = Tokenizer(multilingual_tok)
    assert tok.vocab_size == 2000 and tok.sp.piece_to_id("<0xE2>") != tok.sp.unk_id()
    for lang in LANGS:
        lines = [line for doc in sources.iter_gettext_documents(lang) for line in doc]
        texts = lines[:20] if lang == "ja" else lines[-20:]  # ja: the small language's own (trained-on) lines
        ids = tok.encode(texts)
        # sentencepiece's default normaliser is NFKC (… -> ..., full-width -> ASCII): round trip up to it
        assert [tok.decode(x) for x in ids] == [unicodedata.normalize("NFKC", t) for t in texts]
        assert sum(map(len, ids)) < sum(map(len, texts))  # pieces, not characters or bytes
    odd = "😀 ∮ 한국어 ᚠᛇᚻ"  # characters absent from the corpus: bytes, not <unk>
    odd_ids = tok.encode([odd])[0]
    assert tok.sp.unk_id() not in odd_ids and tok.decode(odd_ids) == odd


def test_language_shares_follow_n_to_the_alpha(multilingual_tok: Path) -> None:
    langs = json.loads((multilingual_tok / "tokenizer.json").read_text())["multilingual"]["languages"]
    n = {lang: v["sentences"] for lang, v in langs.items()}
    assert n["ja"] == SMALL
    z = sum(v**0.3 for v in n.values())
    for lang, v in langs.items():
        assert abs(v["share"] - n[lang] ** 0.3 / z) < 2e-3, (lang, v)
    natural = SMALL / sum(n.values())
    assert langs["ja"]["share"] > 5 * natural and langs["ja"]["sampled"] > SMALL  # upsampled: repeats
    assert langs["fr"]["sampled"] < n["fr"]  # subsampled
    assert sum(v["sampled"] for v in langs.values()) == 6000


def test_sampling_helpers_and_alpha_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert split_language_tag("fr=builtin:gettext:fr") == ("fr", "builtin:gettext:fr")
    assert split_language_tag("pt_BR=corpus/") == ("pt_BR", "corpus/")
    assert split_language_tag("corpus/a=b.txt") == (None, "corpus/a=b.txt")
    shares = language_shares({"a": 1000, "b": 10}, 1.0)
    assert shares["a"] == pytest.approx(1000 / 1010)
    assert language_shares({"a": 1000, "b": 10}, 0.3)["b"] == pytest.approx(10**0.3 / (10**0.3 + 1000**0.3))
    assert sum(sample_counts(language_shares({"a": 7, "b": 3, "c": 1}, 0.3), 101).values()) == 101
    for alpha in ("0", "1.5", "-0.3"):
        rc = cli.main(
            ["tokenizer", "--input", "fr=builtin:gettext:fr", "--alpha", alpha, "--out", str(tmp_path)]
        )
        err = capsys.readouterr().err
        assert rc == 2 and f"--alpha {float(alpha)}" in err and "(0, 1]" in err, err
    rc = cli.main(
        ["tokenizer", "--input", "fr=builtin:gettext:fr", "builtin:gettext:de", "--out", str(tmp_path)]
    )
    assert rc == 2 and "no language tag" in capsys.readouterr().err
    rc = cli.main(["tokenizer", "--input", "xx=builtin:gettext:xx", "--out", str(tmp_path)])
    assert rc == 2 and "no language 'xx'" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer.model").exists()


def test_cloze_shards_on_gettext_text(multilingual_tok: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    argv = [
        "shards",
        "--input",
        "builtin:gettext:fr",
        "--tokenizer",
        str(multilingual_tok),
        "--out",
        str(out),
    ]
    assert cli.main([*argv, "--seq-len", "64", "--objective", "mlm", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert "builtin:gettext:fr" in text
    assert manifest["source_stats"]["documents"] > 20
