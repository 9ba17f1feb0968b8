"""ELECTRA, T5 and BART train on 2 processes (DeepSpeed ZeRO-2, gloo) with falling loss, and their checkpoints
export to transformers and load there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipeline.writer import ShardOptions, write_shards
from tests.conftest import read_scalars, run_cloze, torchrun_cloze

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

CASES = {
    "electra": ("electra", transformers.ElectraForPreTraining),
    "t5": ("t5", transformers.T5ForConditionalGeneration),
    "bart": ("bart", transformers.BartForConditionalGeneration),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_family_trains_and_exports(tmp_path: Path, tokenizer_dir: Path, family: str, monkeypatch) -> None:
    objective, hf_class = CASES[family]
    data = tmp_path / "data"
    write_shards(
        ["builtin:stdlib-docs"],
        tokenizer_dir,
        data,
        ShardOptions(objective=objective, seq_len=64, docs_per_block=2500, valid_fraction=0.05),
        workers=2,
    )
    run = tmp_path / "run"
    proc = torchrun_cloze(["train", f"configs/tiny-{family}.yaml", f"data.path={data}", f"run_dir={run}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = read_scalars(run / "tensorboard", "train/loss")
    assert sorted(losses) == list(range(1, 31))
    first, last = (sum(losses[s] for s in r) / 5 for r in (range(1, 6), range(26, 31)))
    assert last < first - 0.3, losses
    tb = run / "tensorboard"
    if family == "electra":
        for tag in (
            "train/gen_loss",
            "train/rtd_loss",
            "train/rtd_accuracy",
            "train/mlm_accuracy",
            "eval/rtd_accuracy",
        ):
            assert read_scalars(tb, tag), tag
    else:
        assert read_scalars(tb, "train/seq2seq_accuracy") and read_scalars(tb, "eval/seq2seq_accuracy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    exported = run_cloze(["export", str(run), "--out", str(out)])
    assert exported.returncode == 0, exported.stderr
    model = hf_class.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tok(["Return the number of items in a container."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        kwargs = {"decoder_input_ids": ids[:, :4]} if family in ("t5", "bart") else {}
        logits = model(input_ids=ids, **kwargs).logits
    assert torch.isfinite(logits).all()
    if family == "electra":
        gen = transformers.ElectraForMaskedLM.from_pretrained(str(out / "generator"))
        assert gen.config.hidden_size < model.config.hidden_size
