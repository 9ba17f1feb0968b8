"""DistilBERT (modeling/distilbert.py, trainer/losses.py DistillTask): transformers parity after export and import,
the loss against the reference's arithmetic (transformers examples/research_projects/distillation/distiller.py),
the student's initialisation against scripts/extract_distilbert.py, the frozen teacher, the errors before any step,
and a 2-rank ZeRO-3 distillation from a cloze run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling import build_model
from modeling.config import ModelConfig, ModelConfigError
from modeling.distilbert import DistillationModel, configure_distilbert
from modeling.hf import export_hf, load_hf
from trainer.losses import DistillTask, task_for
from trainer.optim import param_groups

from .conftest import read_scalars, run_cloze, tiny_model_config, torchrun_cloze

transformers = pytest.importorskip("transformers")

VOCAB = 101


def student_config(**kw: Any) -> ModelConfig:
    return tiny_model_config(family="distilbert", type_vocab_size=0, **kw)


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (3, 12) with padding at the ends of rows 1 and 2, their mask, and MLM labels at a few real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.full_like(ids, -100)
    for b, t in [(0, 1), (0, 7), (1, 3), (1, 8), (2, 0), (2, 4)]:
        labels[b, t] = int(ids[b, t])
        ids[b, t] = 4  # [MASK]
    return ids, mask, labels


def save_hf_bert(path: Path, layers: int = 4, **kw: Any) -> Path:
    """A randomly initialised transformers BertForMaskedLM of the tiny width, saved to `path` (a teacher)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=kw.pop("vocab_size", VOCAB),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        **kw,
    )
    transformers.BertForMaskedLM(cfg).eval().save_pretrained(str(path))
    return path


# ---- transformers parity -------------------------------------------------------------------------------------------


def test_export_and_import_match_transformers_with_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = student_config()
    ours = build_model(cfg).eval()
    ids, mask, _ = padded_batch()
    export_hf(ours, cfg, tmp_path / "hf")
    theirs = transformers.DistilBertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    keep = mask.bool()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits[keep], expected[keep])
        back, back_cfg, left = load_hf(tmp_path / "hf")
        assert back_cfg.family == "distilbert" and back_cfg.type_vocab_size == 0 and not left
        torch.testing.assert_close(back.eval()(ids, attention_mask=mask).logits[keep], expected[keep])


# ---- the loss against the reference --------------------------------------------------------------------------------


def reference_loss(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    s_hidden: torch.Tensor,
    t_hidden: torch.Tensor,
    lm_labels: torch.Tensor,
    attention_mask: torch.Tensor,
    alpha_ce: float,
    alpha_mlm: float,
    alpha_cos: float,
    temperature: float,
    restrict_ce_to_mask: bool,
) -> tuple[torch.Tensor, ...]:
    """distiller.py `Distiller.step`'s loss arithmetic (MLM branch), ported: full (B, T, V) logits and the last
    (B, T, H) hidden states of student and teacher."""
    ce_loss_fct = nn.KLDivLoss(reduction="batchmean")
    lm_loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
    cosine_loss_fct = nn.CosineEmbeddingLoss(reduction="mean")
    if restrict_ce_to_mask:
        mask = (lm_labels > -1).unsqueeze(-1).expand_as(s_logits)
    else:
        mask = attention_mask.bool().unsqueeze(-1).expand_as(s_logits)
    s_logits_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
    t_logits_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
    loss_ce = (
        ce_loss_fct(
            F.log_softmax(s_logits_slct / temperature, dim=-1), F.softmax(t_logits_slct / temperature, dim=-1)
        )
        * temperature**2
    )
    loss = alpha_ce * loss_ce
    loss_mlm = lm_loss_fct(s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
    loss = loss + alpha_mlm * loss_mlm
    mask = attention_mask.bool().unsqueeze(-1).expand_as(s_hidden)
    dim = s_hidden.size(-1)
    s_slct = torch.masked_select(s_hidden, mask).view(-1, dim)
    t_slct = torch.masked_select(t_hidden, mask).view(-1, dim)
    target = s_slct.new(s_slct.size(0)).fill_(1)
    loss_cos = cosine_loss_fct(s_slct, t_slct, target)
    loss = loss + alpha_cos * loss_cos
    return loss, loss_ce, loss_mlm, loss_cos


@pytest.fixture
def distill_model(tmp_path: Path) -> DistillationModel:
    teacher = save_hf_bert(tmp_path / "teacher")
    torch.manual_seed(1)
    model = build_model(student_config(teacher=str(teacher), student_layers=[1, 3]))
    assert isinstance(model, DistillationModel)
    with torch.no_grad():  # move the student off the teacher, so that every term is far from zero
        for p in (p for n, p in model.named_parameters() if not n.startswith("teacher.")):
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("restrict", [False, True])
def test_loss_equals_the_reference_on_one_micro_batch(
    distill_model: DistillationModel, restrict: bool
) -> None:
    model = distill_model
    model.config.restrict_ce_to_mask = restrict
    cfg = dict(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, temperature=2.0)
    ids, mask, labels = padded_batch(3)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    task = DistillTask(student_config(restrict_ce_to_mask=restrict, **cfg))
    with torch.no_grad():
        s_hidden = model.bert(ids, mask)
        t_hidden = model.teacher.bert(ids, mask)
        expected = reference_loss(
            model.mlm_logits(s_hidden),
            model.teacher.mlm_logits(t_hidden),
            s_hidden,
            t_hidden,
            labels,
            mask,
            restrict_ce_to_mask=restrict,
            **cfg,
        )
        # one micro-batch on one rank: the global counts are this batch's (loss_normalizers' multiplier is 1)
        for norm in (None, task.counts(batch)):
            r = task(model, batch, norm=norm)
            torch.testing.assert_close(r.loss, expected[0])
        m = task.summarize(r.sums)
    torch.testing.assert_close(torch.tensor(m["loss"]), expected[0])
    for key, want in zip(("ce_loss", "mlm_loss", "cos_loss"), expected[1:], strict=True):
        torch.testing.assert_close(torch.tensor(m[key]), want)
    assert 0.0 <= m["teacher_mlm_accuracy"] <= 1.0 and m["masked_tokens"] == 6
    assert task.counts(batch) == {"count": 6.0, "ce_count": 6.0 if restrict else 26.0, "cos_count": 26.0}


def test_two_micro_batches_weigh_every_token_the_same(distill_model: DistillationModel) -> None:
    """Each term is its sum over the global batch divided by the global count: two halves with `norm` add up to
    the whole batch's loss."""
    ids, mask, labels = padded_batch(5)
    whole = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    halves = [{k: v[sl] for k, v in whole.items()} for sl in (slice(0, 1), slice(1, 3))]
    task = DistillTask(student_config())
    norm = task.counts(whole)
    with torch.no_grad():
        total = sum(task(distill_model, h, norm=norm).loss for h in halves)
        torch.testing.assert_close(total, task(distill_model, whole).loss)


# ---- the student starts from the teacher (extract_distilbert.py) ---------------------------------------------------


def extract_distilbert(state_dict: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    """scripts/extract_distilbert.py (with --vocab_transform), ported: BertForMaskedLM -> DistilBertForMaskedLM
    weights."""
    prefix, out = "bert", {}
    for w in ["word_embeddings", "position_embeddings"]:
        out[f"distilbert.embeddings.{w}.weight"] = state_dict[f"{prefix}.embeddings.{w}.weight"]
    for w in ["weight", "bias"]:
        out[f"distilbert.embeddings.LayerNorm.{w}"] = state_dict[f"{prefix}.embeddings.LayerNorm.{w}"]
    names = {
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for std_idx, teacher_idx in enumerate(layers):
        for w in ["weight", "bias"]:
            for ours, theirs in names.items():
                out[f"distilbert.transformer.layer.{std_idx}.{ours}.{w}"] = state_dict[
                    f"{prefix}.encoder.layer.{teacher_idx}.{theirs}.{w}"
                ]
    out["vocab_projector.weight"] = state_dict["cls.predictions.decoder.weight"]
    out["vocab_projector.bias"] = state_dict["cls.predictions.bias"]
    for w in ["weight", "bias"]:
        out[f"vocab_transform.{w}"] = state_dict[f"cls.predictions.transform.dense.{w}"]
        out[f"vocab_layer_norm.{w}"] = state_dict[f"cls.predictions.transform.LayerNorm.{w}"]
    return out


def test_student_starts_from_the_teachers_layers(tmp_path: Path) -> None:
    teacher = save_hf_bert(tmp_path / "teacher")
    cfg = student_config(teacher=str(teacher), student_layers=[1, 3])
    model = build_model(cfg)
    export_hf(model, cfg, tmp_path / "student")  # the teacher is not exported: a plain DistilBertForMaskedLM
    student = transformers.DistilBertForMaskedLM.from_pretrained(str(tmp_path / "student")).state_dict()
    hf_teacher = transformers.BertForMaskedLM.from_pretrained(str(teacher)).state_dict()
    expected = extract_distilbert(hf_teacher, [1, 3])
    assert set(expected) <= set(student)
    for k, v in expected.items():
        torch.testing.assert_close(student[k], v, msg=k)
    assert not any("token_type" in k for k in student)


# ---- the frozen teacher --------------------------------------------------------------------------------------------


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimizer(distill_model: DistillationModel) -> None:
    model = distill_model.train()
    assert not model.teacher.training and model.bert.training
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert teacher_ids and all(not p.requires_grad for p in model.teacher.parameters())
    grouped = [p for g in param_groups(model, 0.01) for p in g["params"]]
    assert not teacher_ids & {id(p) for p in grouped}
    assert len(grouped) == sum(1 for p in model.parameters() if p.requires_grad)
    ids, mask, labels = padded_batch()
    task = task_for(model.config)  # a teacher selects DistillTask; without one the student trains on MLM
    assert isinstance(task, DistillTask)
    task(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}).loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.bert.embeddings is not None and model.bert.embeddings.word_embeddings.weight.grad is not None


# ---- errors before any step ----------------------------------------------------------------------------------------


def test_bad_teachers_are_named(tmp_path: Path) -> None:
    good = save_hf_bert(tmp_path / "teacher")
    cases = [
        (dict(teacher="???"), r"model.teacher is required .*set model.teacher=DIR"),
        (dict(teacher=str(tmp_path / "nowhere")), "is not a directory"),
        (dict(teacher=str(tmp_path)), "is not a model"),
        (dict(teacher=str(good), student_layers=[0, 4]), r"\[4\] out of range for the teacher's 4 layers"),
        (dict(teacher=str(good), student_layers=[0]), "names 1 teacher layers for model.num_layers=2"),
        (dict(teacher=str(good), hidden_size=64), "model.hidden_size=64 differs from the teacher's 32"),
        (dict(teacher=str(save_hf_bert(tmp_path / "big", vocab_size=VOCAB + 7))), "vocabulary of 108"),
    ]
    for kw, message in cases:
        with pytest.raises(ModelConfigError, match=message):
            configure_distilbert(student_config(**kw))
    with pytest.raises(ModelConfigError, match="set model.type_vocab_size=0"):
        tiny_model_config(family="distilbert")


def test_teacher_with_another_tokenizer_is_refused(tmp_path: Path, dataset_dir: Path) -> None:
    from data_pipeline.hf_tokenizer import RUN_TOKENIZER_DIR
    from data_pipeline.tokenizer import MODEL_FILE
    from modeling.distilbert import TEACHER_TOKENIZERS
    from trainer.config import config_from_dict
    from trainer.state import prepare

    assert (
        TEACHER_TOKENIZERS[0] == f"{RUN_TOKENIZER_DIR}/{MODEL_FILE}"
    )  # where a cloze run keeps its tokenizer
    teacher = save_hf_bert(tmp_path / "teacher", vocab_size=3000)
    (teacher / "spiece.model").write_bytes(b"another tokenizer")
    cfg = config_from_dict(
        {
            "model": {"preset": "tiny_distilbert", "vocab_size": 0, "teacher": str(teacher)},
            "data": {"path": str(dataset_dir)},
            "trainer": {"global_batch_size": 4, "micro_batch_size": 2},
        }
    )
    with pytest.raises(ModelConfigError, match=r"its tokenizer .*spiece.model is not the dataset's"):
        prepare(cfg, 1)


# ---- 2 ranks, ZeRO-3, a teacher trained by cloze, stop and resume -------------------------------------------------------------------


def test_distils_from_a_cloze_run_on_two_ranks_under_zero2_and_zero3_and_resumes_exactly(
    tmp_path: Path, dataset_dir: Path
) -> None:
    from .conftest import train_tiny_bert

    teacher = tmp_path / "teacher"
    r = train_tiny_bert(
        dataset_dir,
        teacher,
        "model.num_layers=4",
        "trainer.max_steps=10",
        "checkpoint.every_steps=10",
        "logging.tensorboard=false",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = tmp_path / "student"
    args = [
        "train",
        "configs/tiny-distilbert.yaml",
        f"data.path={dataset_dir}",
        f"run_dir={run}",
        f"model.teacher={teacher}",
        "deepspeed.zero_stage=3",
        "trainer.max_steps=30",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
        "logging.log_every=1",
    ]
    r = torchrun_cloze([*args, "trainer.stop_after_steps=15"])  # saves at 15 and stops
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = torchrun_cloze(args)  # resumes: the checkpoint holds the student; the teacher is rebuilt from its run
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 15" in r.stdout
    loss = read_scalars(run / "tensorboard", "train/loss")
    assert len(loss) == 30
    # Exact resume: every step's loss equals an uninterrupted run's; and the same under ZeRO-2, uninterrupted.
    for stage, other in ((3, tmp_path / "whole3"), (2, tmp_path / "whole2")):
        r = torchrun_cloze([*args, f"run_dir={other}", f"deepspeed.zero_stage={stage}"])
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        whole = read_scalars(other / "tensorboard", "train/loss")
        if stage == 3:
            assert whole == loss
        for losses in (whole, loss):
            first, last = sum(list(losses.values())[:5]) / 5, sum(list(losses.values())[-5:]) / 5
            assert last < first, losses
    for tag in ("ce_loss", "mlm_loss", "cos_loss", "mlm_accuracy", "teacher_mlm_accuracy"):
        assert len(read_scalars(run / "tensorboard", f"train/{tag}")) == 30, tag
    # `cloze export` writes the student alone (the teacher's weights are not in a ZeRO checkpoint's trained state)
    r = run_cloze(["export", str(run), "--out", str(tmp_path / "hf")])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    student = transformers.DistilBertForMaskedLM.from_pretrained(str(tmp_path / "hf"))
    assert student.config.n_layers == 2 and not any(k.startswith("teacher") for k in student.state_dict())
