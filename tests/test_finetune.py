"""Fine-tuning and scoring on downstream tasks (trainer/finetune.py, data_pipeline/tasks.py, modeling/heads.py),
in process, on tiny randomly initialised models over the session's real tokenizer: bad input refused before any
training, reproducible scores, GLUE metric types, pseudo-perplexity against a transformers port of mlm-scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data_pipeline.tasks import TaskError, load_task, load_task_dir
from data_pipeline.tokenizer import MODEL_FILE, describe
from modeling import build_model
from modeling.config import ModelConfig
from trainer.finetune import Backbone, FinetuneError, Recipe, TaskTokenizer, finetune

LINES = [
    "Return the number of items in the queue.",
    "Create a new socket using the given address family.",
    "Raise an exception if the file cannot be opened.",
    "Decode the bytes using the codec registered for encoding.",
    "Write the string to the stream and flush it.",
    "Parse the header lines and return a message object.",
    "Start the thread and wait until it is ready.",
    "Remove the directory tree rooted at path.",
]


def backbone(tokenizer_dir: Path, family: str = "bert", **overrides: object) -> Backbone:
    model_file = tokenizer_dir / MODEL_FILE
    info = describe(model_file)
    preset = {"t5": "tiny_t5", "bart": "tiny_bart", "electra": "tiny_electra"}.get(family, "tiny")
    overrides = {"family": family, **overrides}
    values: dict[str, object] = dict(
        vocab_size=info.vocab_size,
        num_layers=1,
        hidden_dropout=0.1,
        attention_dropout=0.0,
        pad_token_id=info.special_tokens.pad,
        bos_token_id=info.special_tokens.bos,
        eos_token_id=info.special_tokens.eos,
    )
    cfg = ModelConfig.from_preset(preset, **{**values, **overrides})
    torch.manual_seed(0)
    framing = {"t5": "raw", "bart": "bart"}.get(family, "encoder")
    tok = TaskTokenizer(model_file, framing, info.special_tokens, info.sentinel_ids)
    return Backbone(build_model(cfg), cfg, tok, f"random {family}", None)


def write_task(d: Path, spec: str, train: list[dict], dev: list[dict], fmt: str = "tsv") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.yaml").write_text(spec)
    for name, rows in (("train", train), ("dev", dev)):
        if fmt == "jsonl":
            (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            cols = list(rows[0])
            body = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
            (d / f"{name}.tsv").write_text("\n".join(body) + "\n")
    return d


def sst2(d: Path, n: int = 16) -> Path:
    rows = [
        {"sentence1": LINES[i % 8], "label": int("Return" in LINES[i % 8] or i % 3 == 0)} for i in range(n)
    ]
    return write_task(d, "type: classification\nlabels: [0, 1]\nmetric: accuracy\n", rows, rows[:8])


def mrpc(d: Path, n: int = 16) -> Path:
    rows = [
        {"sentence1": LINES[i % 8], "sentence2": LINES[(i + i % 2) % 8], "label": 1 - i % 2} for i in range(n)
    ]
    return write_task(d, "type: classification\nlabels: [0, 1]\nmetric: f1\n", rows, rows[:8], "jsonl")


def stsb(d: Path, n: int = 16) -> Path:
    rows = [
        {"sentence1": LINES[i % 8], "sentence2": LINES[(i * 3) % 8], "label": round((i * 0.37) % 5, 2)}
        for i in range(n)
    ]
    return write_task(d, "type: regression\nmetric: pearson\n", rows, rows[:8])


FAST = Recipe(lr=[1e-3], epochs=1, batch_size=8, seeds=2, max_len=24)


def test_glue_shaped_tasks_report_their_metrics_per_seed(tokenizer_dir: Path, tmp_path: Path) -> None:
    bb = backbone(tokenizer_dir)
    expected = {
        "sst2": ({"accuracy", "f1", "matthews"}, "accuracy"),
        "mrpc": ({"accuracy", "f1", "matthews"}, "f1"),
        "stsb": ({"pearson", "spearman"}, "pearson"),
    }
    for name, make in (("sst2", sst2), ("mrpc", mrpc), ("stsb", stsb)):
        task = load_task_dir(make(tmp_path / name))
        finetune(bb, task, FAST, tmp_path / "out" / name)
        res = json.loads((tmp_path / "out" / name / "results.json").read_text())
        metrics, primary = expected[name]
        assert res["metric"] == primary
        assert set(res["seeds"]) == {"0", "1"}
        for seed in res["seeds"].values():
            assert set(seed) == metrics
        assert set(res["mean"]) == set(res["std"]) == metrics
        assert res["mean"][primary] == pytest.approx(sum(s[primary] for s in res["seeds"].values()) / 2)
        assert list((tmp_path / "out" / name / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_same_checkpoint_same_scores(tokenizer_dir: Path, tmp_path: Path) -> None:
    bb = backbone(tokenizer_dir)
    task = load_task_dir(sst2(tmp_path / "sst2", 16))
    recipe = Recipe(lr=[1e-3], epochs=2, batch_size=8, seeds=1, max_len=24)
    a = finetune(bb, task, recipe)
    torch.manual_seed(123)  # whatever the caller's RNG state: the run seeds its own
    b = finetune(bb, task, recipe)  # the model handed in is never trained in place
    assert a["seeds"] == b["seeds"] and a["lr"]["0.001"]["curves"] == b["lr"]["0.001"]["curves"]


def test_text_to_text_families_fine_tune_and_score_label_words(tokenizer_dir: Path, tmp_path: Path) -> None:
    d = sst2(tmp_path / "sst2", 16)
    spec = "type: classification\nlabels: [0, 1]\nlabel_words: {0: no, 1: yes}\n"
    (d / "task.yaml").write_text(spec)
    task = load_task_dir(d)
    for family in ("t5", "bart"):
        res = finetune(
            backbone(tokenizer_dir, family), task, Recipe(lr=[1e-3], epochs=1, batch_size=8, seeds=1)
        )
        assert 0.0 <= res["mean"]["accuracy"] <= 1.0 and res["family"] == family


def test_electra_fine_tunes_its_discriminator(tokenizer_dir: Path, tmp_path: Path) -> None:
    task = load_task_dir(stsb(tmp_path / "stsb", 16))
    res = finetune(
        backbone(tokenizer_dir, "electra"), task, Recipe(lr=[1e-3], epochs=1, batch_size=8, seeds=1)
    )
    assert set(res["mean"]) == {"pearson", "spearman"}


def _pll_reference(hf_model: object, ids: list[int], special: set[int], mask_id: int) -> tuple[float, int]:
    """Port of awslabs/mlm-scoring (`MLMScorer.score`, Salazar et al. 2020) on a transformers BertForMaskedLM:
    one copy of the sentence per token, that token masked; sum the true token's log-probability."""
    total, n = 0.0, 0
    for i, t in enumerate(ids):
        if t in special:
            continue
        x = torch.tensor([ids])
        x[0, i] = mask_id
        with torch.no_grad():
            logits = hf_model(input_ids=x).logits  # type: ignore[operator]
        total += float(logits[0, i].log_softmax(-1)[t])
        n += 1
    return total, n


def test_pseudo_perplexity_matches_a_transformers_port_of_mlm_scoring(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    from modeling.hf import hf_model
    from trainer.finetune import Encoder

    bb = backbone(tokenizer_dir, hidden_dropout=0.0)
    d = write_task(
        tmp_path / "ppl",
        "type: pseudo_perplexity\n",
        [{"sentence1": "x"}],
        [{"sentence1": s} for s in LINES[:3]],
    )
    (d / "train.tsv").unlink()
    task = load_task_dir(d)
    res = finetune(bb, task)
    hf = hf_model(bb.model.eval(), bb.config).eval()
    enc = Encoder(bb, task, 64)
    special = set(bb.tokenizer.special.all())
    total, n = 0.0, 0
    for ex in task.dev:
        t, k = _pll_reference(hf, enc.ids(ex)[0], special, bb.tokenizer.special.mask)
        total, n = total + t, n + k
    assert res["mean"]["tokens"] == n
    assert res["mean"]["pseudo_perplexity"] == pytest.approx(math.exp(-total / n), rel=1e-4)


def test_seq2seq_loss_of_a_uniform_t5_is_log_vocab(tokenizer_dir: Path, tmp_path: Path) -> None:
    d = write_task(
        tmp_path / "s2s", "type: seq2seq_loss\n", [{"sentence1": "x"}], [{"sentence1": " ".join(LINES)}] * 3
    )
    bb = backbone(tokenizer_dir, "t5")
    with torch.no_grad():
        bb.model.lm_head.weight.zero_()  # type: ignore[union-attr]  # every logit 0: loss log V at each target
    res = finetune(bb, load_task_dir(d), Recipe(lr=[], epochs=0, seeds=1, max_len=32))
    assert res["mean"]["tokens"] > 0
    assert res["mean"]["loss"] == pytest.approx(math.log(bb.config.vocab_size), rel=1e-5)


# ---- bad input: named, before any training ------------------------------------------------------------------------


def test_task_without_labels_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    rows = [{"sentence1": "a", "label": 1}, {"sentence1": "b", "label": ""}]
    d = write_task(tmp_path / "t", "type: classification\nlabels: [0, 1]\n", rows, rows[:1])
    with pytest.raises(TaskError, match=r"train\.tsv:3: no label"):
        load_task_dir(d)


def test_label_outside_the_declared_set_is_refused(tmp_path: Path) -> None:
    rows = [{"sentence1": "a", "label": 1}, {"sentence1": "b", "label": 0}]
    d = write_task(
        tmp_path / "t", "type: classification\nlabels: [0, 1]\n", rows, [{"sentence1": "c", "label": 2}]
    )
    with pytest.raises(TaskError, match=r"dev\.tsv:2: label '2' is not one of the declared labels"):
        load_task_dir(d)


def test_regression_with_a_non_numeric_label_is_refused(tmp_path: Path) -> None:
    rows = [{"sentence1": "a", "label": 1.5}, {"sentence1": "b", "label": "high"}]
    d = write_task(tmp_path / "t", "type: regression\n", rows, rows[:1], "jsonl")
    with pytest.raises(TaskError, match=r"train\.jsonl:2: label 'high' is not a number"):
        load_task_dir(d)


def test_classification_without_declared_labels_is_refused(tmp_path: Path) -> None:
    rows = [{"sentence1": "a", "label": 1}]
    d = write_task(tmp_path / "t", "type: classification\n", rows, rows)
    with pytest.raises(TaskError, match=r"task\.yaml: a classification task declares its labels"):
        load_task_dir(d)


def test_family_that_cannot_do_the_task_type_is_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    reg = load_task_dir(stsb(tmp_path / "stsb", 8))
    with pytest.raises(FinetuneError, match="a t5 checkpoint cannot fine-tune the regression task"):
        finetune(backbone(tokenizer_dir, "t5"), reg)
    d = write_task(tmp_path / "s2s", "type: seq2seq_loss\n", [{"sentence1": "x"}], [{"sentence1": "y"}])
    with pytest.raises(FinetuneError, match="a bert checkpoint cannot fine-tune the seq2seq_loss task"):
        finetune(backbone(tokenizer_dir), load_task_dir(d))


def test_tokenizer_mismatch_is_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    bb = backbone(tokenizer_dir, vocab_size=describe(tokenizer_dir / MODEL_FILE).vocab_size + 8)
    with pytest.raises(FinetuneError, match=r"tokenizer mismatch: .*tokenizer\.model .*pieces, the model"):
        finetune(bb, load_task_dir(sst2(tmp_path / "sst2", 8)), FAST)


def test_unknown_builtin_task_lists_the_available_ones() -> None:
    with pytest.raises(TaskError, match="builtin:docstring-package"):
        load_task("builtin:nope")


# ---- every encoder family fine-tunes (modeling/heads.py reads each model's `features`) ----------------------------

FEATURE_FAMILIES: dict[str, dict[str, object]] = {
    "roberta": dict(type_vocab_size=1),
    "albert": dict(embedding_size=32, share_layers=True),
    "xlm_roberta": dict(type_vocab_size=1),
    "distilbert": dict(type_vocab_size=0),
    "longformer": dict(type_vocab_size=1, attention_window=[8]),
    "deberta": dict(type_vocab_size=0, position_buckets=16, max_relative_positions=64),
    "deberta_v1": dict(
        type_vocab_size=0,
        position_buckets=0,
        max_relative_positions=64,
        share_att_key=False,
        norm_rel_ebd="none",
    ),
    "deberta_rtd": dict(type_vocab_size=0, position_buckets=16, max_relative_positions=64),
    "xlm": dict(type_vocab_size=0, languages=["en", "fr"]),
}


@pytest.mark.parametrize("family", sorted(FEATURE_FAMILIES))
def test_every_encoder_family_fine_tunes_and_scores(family: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    """A classification head over each family's `features` trains, and pseudo-perplexity reads its MLM head (the
    generator's for RTD). The features are transformers' base model's last hidden states (Longformer: global
    attention on [CLS], as LongformerForSequenceClassification sets it; XLM: no language ids)."""
    transformers = pytest.importorskip("transformers")
    from modeling.hf import hf_model

    extra = dict(FEATURE_FAMILIES[family], hidden_size=64, intermediate_size=256, max_position_embeddings=64)
    if family in ("roberta", "xlm_roberta", "longformer"):  # as the family's configure() sets it
        extra["position_offset"] = describe(tokenizer_dir / MODEL_FILE).special_tokens.pad + 1
    bb = backbone(tokenizer_dir, family, **extra)
    assert bb.config.family == family
    bb.model.eval()
    ids = torch.tensor([[2, 40, 41, 42, 43, 3, 0, 0], [2, 50, 51, 52, 53, 54, 55, 3]])
    ids[0, 6:] = bb.config.pad_token_id
    mask = (torch.arange(8)[None] < torch.tensor([[6], [8]])).long()
    hf = hf_model(bb.model, bb.config).eval()
    kw = (
        {"global_attention_mask": torch.zeros_like(ids).index_fill_(1, torch.tensor([0]), 1)}
        if family == "longformer"
        else {}
    )
    with torch.no_grad():
        got = bb.model.features(ids, mask)
        want = hf.base_model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
    assert isinstance(hf, transformers.PreTrainedModel)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-5)

    res = finetune(
        bb, load_task_dir(sst2(tmp_path / "sst2", 16)), Recipe(lr=[1e-3], epochs=1, batch_size=8, seeds=1)
    )
    assert 0.0 <= res["mean"]["accuracy"] <= 1.0 and res["family"] == family
    d = write_task(
        tmp_path / "ppl", "type: pseudo_perplexity\n", [{"sentence1": "x"}], [{"sentence1": LINES[0]}]
    )
    (d / "train.tsv").unlink()
    ppl = finetune(bb, load_task_dir(d))["mean"]["pseudo_perplexity"]
    assert math.isfinite(ppl) and ppl > 1.0
