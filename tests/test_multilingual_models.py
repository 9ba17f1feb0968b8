"""The multilingual families (issue 17) against transformers: mT5 (MT5ForConditionalGeneration), XLM-R
(XLMRobertaForMaskedLM) and XLM (XLMWithLMHeadModel, with language embeddings and TLM-style positions): equal logits
after export (fp32, CPU, one right-padded row), import back with equal logits, and a saved directory that
transformers loads offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling import ModelConfig, ModelConfigError, build_model
from modeling.hf import export_hf, hf_model, import_hf, load_hf
from tests.conftest import transformers_messages
from tests.test_hf import ENCODERS, SEQ2SEQ, T5_UNTIED_NOTICE, V, batch, cfg_of, make

transformers = pytest.importorskip("transformers")

KW = {
    "mt5": {**SEQ2SEQ["t5"], "family": "mt5"},
    "xlm_roberta": {**ENCODERS["roberta"], "family": "xlm_roberta"},
    "xlm": dict(family="xlm", intermediate_size=128, languages=["en", "fr"]),
}
HF_CLASS = {
    "mt5": "MT5ForConditionalGeneration",
    "xlm_roberta": "XLMRobertaForMaskedLM",
    "xlm": "XLMWithLMHeadModel",
}
FAMILIES = sorted(KW)


def tlm_inputs(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TLM as the reference builds it: row 0 holds two sentences (language 0, then language 1 with positions
    restarting at 0); the other rows one language each (row 1: language 1, padded)."""
    B, T = ids.shape
    langs = torch.zeros(B, T, dtype=torch.long)
    positions = torch.arange(T).repeat(B, 1)
    half = T // 2
    langs[0, half:] = 1
    positions[0, half:] = torch.arange(T - half)
    langs[1] = 1
    return langs, positions * mask


def logits(
    family: str,
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    hf: bool,
    **extra: torch.Tensor,
) -> torch.Tensor:
    """(B, T, V) logits of ours (`hf=False`) or of the transformers model, same inputs."""
    kw = {} if mask is None else {"attention_mask": mask}
    with torch.no_grad():
        if family == "mt5":
            dec = torch.randint(7, V, (ids.shape[0], 9), generator=torch.Generator().manual_seed(1))
            if hf:
                return model(input_ids=ids, decoder_input_ids=dec, **kw).logits
            return model(ids, dec, **kw).logits
        return model(input_ids=ids, **kw, **extra).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers_with_padding(family: str) -> None:
    cfg = cfg_of(**KW[family])
    ours = make(cfg)
    hf = hf_model(ours, cfg)
    assert type(hf).__name__ == HF_CLASS[family]
    ids, mask = batch(T=16)
    got, expected = logits(family, ours, ids, mask, False), logits(family, hf, ids, mask, True)
    keep = mask.bool() if family != "mt5" else torch.ones(got.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)


def test_xlm_languages_and_tlm_positions_equal_transformers() -> None:
    """`langs` (two languages in one row) and `position_ids` restarting at the second sentence reach the same
    embeddings as in transformers; without an attention mask both take the non-pad tokens (the reference's
    `lengths`)."""
    cfg = cfg_of(**KW["xlm"])
    ours = make(cfg)
    hf = hf_model(ours, cfg)
    ids, mask = batch(T=16)
    langs, positions = tlm_inputs(ids, mask)
    keep = mask.bool()
    tlm = dict(langs=langs, position_ids=positions)
    got = logits("xlm", ours, ids, mask, False, **tlm)
    torch.testing.assert_close(
        got[keep], logits("xlm", hf, ids, mask, True, **tlm)[keep], rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(got[keep], logits("xlm", ours, ids, mask, False)[keep])  # the inputs matter
    torch.testing.assert_close(
        logits("xlm", ours, ids, None, False, **tlm)[keep], logits("xlm", hf, ids, None, True, **tlm)[keep]
    )
    # padded positions are zeroed after every layer, as the reference does
    h = ours.transformer(ids, mask, positions, langs)
    assert h[~keep].abs().max() == 0


def test_xlm_sparse_head_and_task_pass_languages_and_positions() -> None:
    from trainer.losses import task_for

    cfg = cfg_of(**KW["xlm"])
    ours = make(cfg)
    ids, mask = batch(T=16)
    langs, positions = tlm_inputs(ids, mask)
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    labels[mask == 0] = -100
    with torch.no_grad():
        dense = ours(ids, attention_mask=mask, position_ids=positions, langs=langs).logits
        sparse = ours(ids, labels, mask, positions, langs)
    where = labels != -100
    torch.testing.assert_close(sparse.logits, dense[where])
    seen: dict[str, torch.Tensor] = {}

    def forward(**kw: torch.Tensor):
        seen.update(kw)
        return ours(**kw)

    batch_ = dict(input_ids=ids, labels=labels, attention_mask=mask, langs=langs, position_ids=positions)
    task_for(cfg)(forward, {**batch_, "token_type_ids": torch.zeros_like(ids)})
    assert set(seen) == set(batch_)  # XLM has no token types
    seen.clear()
    task_for(cfg)(forward, dict(input_ids=ids, labels=labels, attention_mask=mask))
    assert set(seen) == {"input_ids", "labels", "attention_mask"}


@pytest.mark.parametrize("family", FAMILIES)
def test_import_back_gives_equal_weights_and_logits(family: str) -> None:
    cfg = cfg_of(**KW[family])
    ours = make(cfg)
    fresh = build_model(cfg).eval()
    missing, unexpected = fresh.load_state_dict(import_hf(hf_model(ours, cfg), cfg), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    for (k, a), b in zip(ours.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    ids, mask = batch(T=16)
    torch.testing.assert_close(
        logits(family, fresh, ids, mask, False), logits(family, ours, ids, mask, False)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_export_directory_loads_offline_and_imports_back(tmp_path: Path, family: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfg_of(**KW[family])
    ours = make(cfg)
    (out,) = export_hf(ours, cfg, tmp_path / "hf")
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == {"mt5": "mt5", "xlm_roberta": "xlm-roberta", "xlm": "xlm"}[family]
    with transformers_messages() as messages:
        loaded = getattr(transformers, HF_CLASS[family]).from_pretrained(str(out)).eval()
        transformers.AutoConfig.from_pretrained(str(out))
    # mT5, like T5 v1.1 and google/mt5-*, holds its own lm_head: transformers' one notice (tests/test_hf.py)
    assert [m for m in messages if T5_UNTIED_NOTICE not in m] == []
    back, back_cfg, left = load_hf(out)
    assert back_cfg.family == family and left == []
    ids, mask = batch(T=16)
    keep = mask.bool() if family != "mt5" else torch.ones(3, 9, dtype=torch.bool)
    theirs = logits(family, loaded, ids, mask, True)
    torch.testing.assert_close(
        logits(family, ours, ids, mask, False)[keep], theirs[keep], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        logits(family, back.eval(), ids, mask, False), logits(family, ours, ids, mask, False)
    )
    if family == "xlm":
        assert (raw["n_langs"], raw["lang2id"], raw["id2lang"]) == (
            2,
            {"en": 0, "fr": 1},
            {"0": "en", "1": "fr"},
        )
        assert (
            raw["use_lang_emb"] and not raw["causal"] and not raw["asm"] and not raw["sinusoidal_embeddings"]
        )
        assert (raw["pad_index"] if "pad_index" in raw else raw["pad_token_id"]) == 0
        assert (raw["unk_index"], raw["mask_index"], raw["eos_token_id"]) == (1, 6, 3)
        assert back_cfg.languages == ["en", "fr"] and back_cfg.intermediate_size == 4 * back_cfg.hidden_size
        langs, positions = tlm_inputs(ids, mask)
        tlm = dict(langs=langs, position_ids=positions)
        torch.testing.assert_close(
            logits("xlm", back.eval(), ids, mask, False, **tlm)[keep],
            logits("xlm", loaded, ids, mask, True, **tlm)[keep],
            rtol=1e-5,
            atol=1e-5,
        )


def test_xlm_activation_checkpointing_gives_identical_loss_and_gradients() -> None:
    import torch.nn.functional as F

    ids, mask = batch(T=16)
    langs, positions = tlm_inputs(ids, mask)
    labels = torch.where(mask.bool(), ids, -100)
    results = []
    for ckpt in (False, True):
        model = make(cfg_of(**KW["xlm"], activation_checkpointing=ckpt, hidden_dropout=0.1)).train()
        torch.manual_seed(1)
        out = model(ids, labels, mask, positions, langs)
        loss = F.cross_entropy(out.logits, out.targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, rtol=0, atol=0, msg=name)
    # a monolingual XLM has no language table, and ignores `langs`
    mono = make(cfg_of(**{**KW["xlm"], "languages": []}))
    assert mono.transformer.lang_embeddings is None
    with torch.no_grad():
        torch.testing.assert_close(
            mono(ids, attention_mask=mask, langs=langs).logits, mono(ids, attention_mask=mask).logits
        )


def test_family_rules() -> None:
    from modeling.hf import ExportError

    with pytest.raises(ModelConfigError, match="4 x hidden_size"):
        cfg_of(family="xlm", intermediate_size=100)
    with pytest.raises(ModelConfigError, match="twice"):
        cfg_of(**{**KW["xlm"], "languages": ["en", "en"]})
    tied = cfg_of(**{**KW["mt5"], "tie_word_embeddings": True})
    with pytest.raises(ExportError, match="tie_word_embeddings=false"):
        hf_model(make(tied), tied)
    assert ModelConfig.from_preset("mt5_small").vocab_size == 250112
    assert ModelConfig.from_preset("xlmr_large").hidden_size == 1024
