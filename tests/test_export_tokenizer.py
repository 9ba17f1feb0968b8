"""The exported transformers tokenizer frames text exactly as cloze's data pipeline feeds each family, registers
every special token, and works with transformers' fill-mask pipeline and generate(), offline.

Expected ids come from cloze's own functions: the sentencepiece `Tokenizer.encode` the shard writer uses, the
family's objective's packing kind, `pack_block` (single texts and T5/BART pairs) and `pair_block` (encoder pairs
with token types)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.hf_tokenizer import FRAMINGS, build_hf_tokenizer
from data_pipeline.objectives import Packed, build_objective
from data_pipeline.packing import pack_block, packer_for, pair_block
from data_pipeline.tokenizer import Tokenizer, vocab_of
from launch.export import RunTokenizer, write_tokenizer
from modeling import ModelConfig, build_model
from modeling.hf import export_hf
from modeling.registry import get_family

transformers = pytest.importorskip("transformers")

PRESETS = {
    "bert": "tiny",
    "roberta": "roberta_base",
    "albert": "albert_base",
    "electra": "tiny_electra",
    "t5": "tiny_t5",
    "bart": "tiny_bart",
}
SENTENCES = [
    "Return the number of items in the container.",
    "The os.path.join() function joins one or more path components intelligently.",
    "If the value is None, a ValueError is raised (see PEP 8, section 3).",
    "Café  naïve ﬁle: ½ of 1,024 bytes — done!",
]
PAIRS = [(SENTENCES[0], SENTENCES[1]), (SENTENCES[2], SENTENCES[3])]


def framing_of(family: str, tok: Tokenizer) -> str:
    """The packing kind of the first objective the family trains on (what the writer records in the manifest)."""
    return str(build_objective(get_family(family).objectives[0], vocab_of(tok), 64).packing)


def objective_end(tok: Tokenizer, kind: str) -> list[int]:
    """What the objective appends after the packed tokens: T5's span corruption ends every input with EOS (the raw
    packing has no separator); the other objectives feed the packed sequence as it is."""
    if kind != "raw":
        return []
    t5 = build_objective("t5", vocab_of(tok), 32)
    raw = Packed(np.arange(100, 100 + t5.raw_len, dtype=np.int32))
    return [int(t5(raw, np.random.default_rng(0))["input_ids"][-1])]


def packed(tok: Tokenizer, kind: str, docs: list[list[int]]) -> list[int]:
    """`docs` packed into one sequence that holds exactly them (a packer suffix stands in for the last document's
    separator), followed by what the objective appends."""
    vocab = vocab_of(tok)
    probe = packer_for(kind, 64, vocab)
    seps = len(docs) - (1 if len(probe.suffix) or probe.separator is None else 0)
    body = sum(map(len, docs)) + (seps if probe.separator is not None else 0)
    block = pack_block(
        [[d] for d in docs], packer_for(kind, len(probe.prefix) + body + len(probe.suffix), vocab)
    )
    assert len(block) == 1  # (the last separator, replaced by the suffix, is the only token left over)
    return block.tokens[0].tolist() + objective_end(tok, kind)


def expected_single(tok: Tokenizer, kind: str, text: str) -> list[int]:
    """The framing cloze feeds around one text."""
    return packed(tok, kind, tok.encode([text]))


def expected_pair(tok: Tokenizer, kind: str, a: str, b: str) -> tuple[list[int], list[int] | None]:
    """Encoders: a sentence pair as pair_block writes it (with token types); T5/BART: two documents packed."""
    ia, ib = tok.encode([a, b])
    if kind == "encoder":
        block = pair_block([[ia, ib]], len(ia) + len(ib) + 3, vocab_of(tok), "nsp", np.random.default_rng(0))
        assert len(block) == 1 and block.sentence_label[0, 0] == 0
        return block.tokens[0].tolist(), block.token_type_ids[0].tolist()
    return packed(tok, kind, [ia, ib]), None


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_exported_tokenizer_frames_text_as_the_data_pipeline(
    tmp_path: Path, tokenizer_dir: Path, family: str, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = Tokenizer(tokenizer_dir)
    kind = framing_of(family, tok)
    cfg = ModelConfig.from_preset(PRESETS[family])
    special = tok.special
    run_tok = RunTokenizer(tok.path, kind, special, tok.info.sentinel_ids)
    write_tokenizer(run_tok, cfg, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))

    for text in SENTENCES:
        assert hf(text)["input_ids"] == expected_single(tok, kind, text), (family, text)
    for a, b in PAIRS:
        ids, types = expected_pair(tok, kind, a, b)
        enc = hf(a, b)
        assert enc["input_ids"] == ids, (family, a, b)
        if types is not None and cfg.type_vocab_size >= 2:
            assert enc["token_type_ids"] == types
        else:  # no second segment embedding (RoBERTa's type_vocab_size=1, T5, BART): no token types fed
            assert "token_type_ids" not in enc
    batch = hf(SENTENCES[:2], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == special.pad  # the shorter (first) one is padded with <pad>

    named = {
        "pad": hf.pad_token_id,
        "unk": hf.unk_token_id,
        "bos": hf.bos_token_id,
        "eos": hf.eos_token_id,
        "cls": hf.cls_token_id,
        "sep": hf.sep_token_id,
        "mask": hf.mask_token_id,
    }
    assert named == special.to_dict()
    sentinels = tok.info.sentinel_ids
    assert set(hf.all_special_ids) == {*special.all(), *sentinels}
    assert hf.convert_tokens_to_ids("<extra_id_0>") == sentinels[0]
    assert hf.decode(hf(SENTENCES[0])["input_ids"], skip_special_tokens=True) == SENTENCES[0]


def test_every_framing_is_covered(tokenizer_dir: Path) -> None:
    """Each packing kind cloze writes has a framing, and an unknown one is refused by name."""
    tok = Tokenizer(tokenizer_dir)
    assert {framing_of(f, tok) for f in PRESETS} == set(FRAMINGS)
    with pytest.raises(ValueError, match="unknown framing 'pairs'"):
        build_hf_tokenizer(tok.path, "pairs", tok.special, [])


def test_bpe_tokenizer_exports_the_same_ids(tmp_path: Path) -> None:
    """A `cloze tokenizer --model-type bpe` model encodes the same in transformers as in sentencepiece."""
    from data_pipeline.tokenizer import train_tokenizer

    train_tokenizer(
        ["builtin:stdlib-docs"],
        tmp_path / "bpe",
        vocab_size=600,
        model_type="bpe",
        input_sentence_size=20_000,
        num_sentinels=3,
    )
    tok = Tokenizer(tmp_path / "bpe")
    hf = build_hf_tokenizer(tok.path, "raw", tok.special, tok.info.sentinel_ids)
    for text in SENTENCES:
        assert hf.encode(text).ids == expected_single(tok, "raw", text), text


def test_fill_mask_and_generate_on_exports(tmp_path: Path, tokenizer_dir: Path, monkeypatch) -> None:
    """transformers' fill-mask pipeline on an exported tiny BERT, generate() + decode on a tiny T5 and BART."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = Tokenizer(tokenizer_dir)
    for family in ("bert", "t5", "bart"):
        cfg = ModelConfig.from_preset(
            PRESETS[family], vocab_size=tok.vocab_size, pad_token_id=tok.special.pad
        )
        cfg.eos_token_id = tok.special.eos
        torch.manual_seed(0)
        out = tmp_path / family
        export_hf(build_model(cfg).eval(), cfg, out)
        write_tokenizer(RunTokenizer(tok.path, framing_of(family, tok), tok.special, []), cfg, out)
        hf = transformers.AutoTokenizer.from_pretrained(str(out))
        if family == "bert":
            fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=hf, device="cpu")
            preds = fill(f"Return the {hf.mask_token} of items in the container.", top_k=3)
            assert len(preds) == 3 and all(p["token"] < tok.vocab_size for p in preds)
            assert all("[MASK]" not in p["sequence"] for p in preds)
        else:
            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(out)).eval()
            enc = hf(["Return the number of items."], return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
            assert gen.shape[0] == 1 and isinstance(hf.decode(gen[0], skip_special_tokens=True), str)
