"""DeBERTa training (modeling/deberta.py; issue 15): the MLM families' task, DeBERTa-v3 replaced-token detection with
gradient-disentangled embedding sharing (GDES, microsoft/DeBERTa `DeBERTa/apps/tasks/rtd_task.py` RTDModel), 2-rank
training under ZeRO-2 and ZeRO-3 with falling loss, exact resume, and the RTD export to transformers.

- GDES: the discriminator's word table is stop_gradient(generator's) + a zero-initialised delta (`_weight`): the RTD
  loss alone gives the generator's table no gradient and the delta one; the MLM loss alone gives the delta none.
- Replacements: the reference's `make_electra_data` / `topk_sampling` (ported below) samples one token from the
  generator's softmax at each masked position; ours draws the same tokens from the same generator state.
- Export: generator -> DebertaV2ForMaskedLM (logit parity on the encoder path), discriminator encoder ->
  DebertaV2Model with the delta merged (hidden-state parity, with padding), RTD head = the saved `mask_predictions.*`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from modeling import ModelConfig, build_model
from modeling.deberta import DebertaRTDForPretraining, RTDHead, rtd_generator_config
from modeling.flops import param_count, train_flops_per_token
from tests.conftest import read_scalars, run_cloze, torchrun_cloze
from trainer.losses import ElectraTask, MLMTask, task_for

V = 101


def tiny_rtd(**kw: Any) -> ModelConfig:
    base: dict[str, Any] = dict(
        vocab_size=V,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        position_buckets=16,
        max_relative_positions=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return ModelConfig.from_preset("tiny_deberta_rtd", **{**base, **kw})


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (2, 16), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 2:7] = ids[:, 2:7]
    ids[:, 2:7] = 4  # [MASK]
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids[1, 12:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def test_tasks_are_registered() -> None:
    assert isinstance(task_for("deberta"), MLMTask)
    assert isinstance(task_for(ModelConfig.from_preset("deberta_v1_base")), MLMTask)
    rtd = task_for(tiny_rtd())
    assert isinstance(rtd, ElectraTask) and rtd.rtd_weight == 10.0  # the reference's rtd_lambda default


def test_rtd_shapes_follow_the_reference() -> None:
    cfg = tiny_rtd(num_layers=4)
    model = build_model(cfg)
    assert isinstance(model, DebertaRTDForPretraining)
    assert len(model.generator.deberta.encoder.layer) == 2  # half depth
    assert model.generator.config.hidden_size == cfg.hidden_size  # same width
    assert len(model.discriminator.deberta.encoder.layer) == 4
    delta = model.discriminator.deberta.embeddings.word_embeddings._weight
    assert torch.count_nonzero(delta) == 0  # zero-initialised
    assert model.discriminator.deberta.embeddings.position_embeddings is None  # the discriminator reads none
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg)
    assert train_flops_per_token(cfg, 64) > train_flops_per_token(rtd_generator_config(cfg), 64)
    with pytest.raises(Exception, match="generator_layers"):
        tiny_rtd(generator_layers=3, num_layers=2)
    with pytest.raises(Exception, match="position_biased_input"):
        tiny_rtd(position_biased_input=True)


def test_gdes_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_rtd())
    gen_table = model.generator.deberta.embeddings.word_embeddings.weight
    delta = model.discriminator.deberta.embeddings.word_embeddings._weight
    b = batch()
    with torch.no_grad():  # a non-zero delta, so that the discriminator's table is not the generator's
        delta.normal_(0.0, 0.02)

    # The RTD loss alone: the generator's table gets no gradient (nor any generator parameter), the delta does.
    torch.manual_seed(1)
    model(**b).rtd_loss.backward()
    assert gen_table.grad is None or torch.count_nonzero(gen_table.grad) == 0
    assert all(p.grad is None or not p.grad.any() for p in model.generator.parameters())
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    used = torch.unique(b["input_ids"][b["attention_mask"].bool()])
    assert delta.grad[0].abs().sum() == 0  # the pad row, as nn.Embedding(padding_idx) does
    assert (delta.grad.abs().sum(-1) > 0).sum() <= used.numel() + b["labels"].ne(-100).sum()

    # The MLM loss alone: the delta gets none, the generator's table does.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    model(**b).gen_loss.backward()
    assert delta.grad is None or not delta.grad.any()
    assert gen_table.grad is not None and gen_table.grad.abs().sum() > 0

    # The discriminator's table is the sum: its lookup equals F.embedding(ids, generator's + delta).
    words = model.discriminator.deberta.embeddings.word_embeddings
    ids = b["input_ids"]
    torch.testing.assert_close(
        words(ids, model.generator.deberta.embeddings.word_embeddings),
        F.embedding(ids, gen_table.detach() + delta.detach(), padding_idx=0),
    )


# ---- microsoft/DeBERTa DeBERTa/apps/tasks/rtd_task.py, ported (2-space indent made 4; the generator's forward
# result passed in instead of calling it) ---------------------------------------------------------------------------


def ref_topk_sampling(logits, topk=1, start=0, temp=1):  # noqa: ANN001, ANN201
    top_p = torch.nn.functional.softmax(logits / temp, dim=-1)
    topk = max(1, topk)
    next_tokens = torch.multinomial(top_p, topk)
    return next_tokens, top_p


def ref_make_electra_data(input_data, lm_logits, temp=1):  # noqa: ANN001, ANN201
    new_data = input_data.copy()
    lm_labels = input_data["labels"]
    mask_index = (lm_labels.view(-1) > 0).nonzero().view(-1)
    topk_labels, top_p = ref_topk_sampling(lm_logits, topk=1, temp=temp)
    top_ids = torch.zeros_like(lm_labels.view(-1))
    top_ids.scatter_(index=mask_index, src=topk_labels.view(-1).int(), dim=-1)
    top_ids = top_ids.view(lm_labels.size())
    new_ids = torch.where(lm_labels > 0, top_ids, input_data["input_ids"])
    new_data["input_ids"] = new_ids.detach()
    return new_data


def ref_mask_labels(lm_labels, input_ids, input_mask):  # noqa: ANN001, ANN201
    """replaced_token_detection_model.py LMMaskPredictionHead: the labels at non-pad positions."""
    input_idx = (input_mask.view(-1) > 0).nonzero().view(-1)
    mask_labels = ((lm_labels > 0) & (lm_labels != input_ids)).view(-1)
    return torch.gather(mask_labels.float(), 0, input_idx)


def test_replacements_and_labels_equal_the_reference() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_rtd()).eval()
    b = batch(3)
    torch.manual_seed(7)
    out = model(**b)
    ref_labels = torch.where(b["labels"] == -100, torch.zeros_like(b["labels"]), b["labels"])  # ref: 0 = none
    torch.manual_seed(7)
    gen = model.generator(b["input_ids"], b["labels"], b["attention_mask"])  # the same first draw of the RNG
    # The reference's features are int32 (RTDTask.example_to_feature: dtype=torch.int).
    ref_in = {"input_ids": b["input_ids"].int(), "labels": ref_labels.int()}
    new = ref_make_electra_data(ref_in, gen.logits.float())
    new["input_ids"] = new["input_ids"].long()
    want = ref_mask_labels(ref_labels, new["input_ids"], b["attention_mask"])
    assert want.sum() > 0
    torch.testing.assert_close(out.rtd_labels[out.real], want)
    # The discriminator read the reference's corrupted input: its logits equal ours on that input.
    torch.testing.assert_close(
        out.rtd_logits, model.discriminator_logits(new["input_ids"], b["attention_mask"])
    )
    # RTD loss = the reference's mean BCE over non-pad tokens.
    ref_loss = F.binary_cross_entropy_with_logits(out.rtd_logits.float()[out.real], want)
    torch.testing.assert_close(out.rtd_loss, ref_loss)


def test_rtd_head_equals_the_reference() -> None:
    torch.manual_seed(0)
    cfg = tiny_rtd()
    head = RTDHead(cfg)
    h = torch.randn(2, 5, cfg.hidden_size)
    # LMMaskPredictionHead.forward: LayerNorm(ctx + h) -> dense -> act (gelu) -> classifier
    ctx = h[:, 0, :]
    seq = head.LayerNorm(ctx.unsqueeze(-2) + h)
    want = head.classifier(F.gelu(head.dense(seq))).squeeze(-1)
    torch.testing.assert_close(head(h), want)


def test_rtd_export_parity(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from modeling.hf import export_hf

    torch.manual_seed(0)
    cfg = tiny_rtd(enhanced_mask_decoder=False)  # transformers has no EMD: parity on the encoder path
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-zero delta, biases and head
    paths = export_hf(model, cfg, tmp_path / "hf")
    assert paths == [tmp_path / "hf", tmp_path / "hf" / "generator"]
    b = batch(5)
    ids, mask = b["input_ids"], b["attention_mask"]
    keep = mask.bool()
    gen = transformers.DebertaV2ForMaskedLM.from_pretrained(str(tmp_path / "hf" / "generator")).eval()
    disc = transformers.DebertaV2Model.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        ours_gen = model.generator(ids, None, mask).logits
        ours_h = model.discriminator_hidden(ids, mask)
        theirs_gen = gen(input_ids=ids, attention_mask=mask).logits
        theirs_h = disc(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(theirs_gen[keep], ours_gen[keep])
        torch.testing.assert_close(theirs_h[keep], ours_h[keep])
        # The discriminator's word table is generator's + delta.
        merged = (
            model.generator.deberta.embeddings.word_embeddings.weight
            + model.discriminator.deberta.embeddings.word_embeddings._weight
        )
        torch.testing.assert_close(disc.embeddings.word_embeddings.weight, merged)
        # The RTD head ships beside the encoder in model.safetensors as `mask_predictions.*` (docs/training.md).
        saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
        head = RTDHead(cfg).eval()
        head.load_state_dict(
            {
                k.removeprefix("mask_predictions."): v
                for k, v in saved.items()
                if k.startswith("mask_predictions.")
            }
        )
        # LayerNorm(h + h[CLS]) -> ... reads each position and [CLS] only: compare at real tokens.
        torch.testing.assert_close(head(theirs_h)[keep], model.discriminator.mask_predictions(ours_h)[keep])


# ---- 2 ranks ---------------------------------------------------------------------------------------------------

TINY = [
    "model.hidden_size=64",
    "model.num_heads=2",
    "model.intermediate_size=128",
    "model.max_position_embeddings=64",
    "model.position_buckets=32",
    "model.max_relative_positions=64",
]
RUNS: dict[tuple[str, int], tuple[float, float, float]] = {}
"""(config, zero stage) -> (first-5 mean, last-5 mean, seconds), printed at the end of the module's runs."""


def train(dataset_dir: Path, run: Path, config: str, stage: int, *extra: str) -> dict[int, float]:
    start = time.monotonic()
    proc = torchrun_cloze(
        [
            "train",
            f"configs/{config}.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={run}",
            f"deepspeed.zero_stage={stage}",
            *(t for t in TINY if not (config.endswith("-v1") and "position_buckets" in t)),  # v1: no buckets
            *extra,
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = read_scalars(run / "tensorboard", "train/loss")
    first = sum(losses[s] for s in range(1, 6)) / 5 if len(losses) >= 5 else float("nan")
    last = sum(losses[s] for s in range(26, 31)) / 5 if 30 in losses else float("nan")
    RUNS[(config, stage)] = (first, last, time.monotonic() - start)
    print(f"{config} zero-{stage}: first-5 {first:.3f} last-5 {last:.3f} in {time.monotonic() - start:.0f} s")
    return losses


RESUME_STAGE = {"tiny-deberta-v1": 2, "tiny-deberta": 3, "tiny-deberta-rtd": 2}
"""Each family's exact-resume check runs at one ZeRO stage (v1 and v3 RTD at 2, v2/v3 MLM at 3)."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path):
    """(config, stage) -> a 30-step run directory of it, trained once for the module (on the MLM shards: every
    DeBERTa family's objectives include mlm)."""
    runs: dict[tuple[str, int], Path] = {}

    def get(config: str, stage: int) -> Path:
        if (config, stage) not in runs:
            run = tmp_path_factory.mktemp(f"{config}-{stage}") / "run"
            train(dataset_dir, run, config, stage)
            runs[(config, stage)] = run
        return runs[(config, stage)]

    return get


def falls(losses: dict[int, float]) -> None:
    assert sorted(losses) == list(range(1, 31))
    first, last = (sum(losses[s] for s in r) / 5 for r in (range(1, 6), range(26, 31)))
    assert last < first - 0.3, losses


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny-deberta-v1", "tiny-deberta", "tiny-deberta-rtd"])
@pytest.mark.parametrize("stage", [2, 3])
def test_trains_on_two_ranks(tmp_path: Path, uninterrupted, config: str, stage: int) -> None:
    run = uninterrupted(config, stage)
    falls(read_scalars(run / "tensorboard", "train/loss"))
    if config == "tiny-deberta-rtd":
        for tag in ("train/gen_loss", "train/rtd_loss", "train/rtd_accuracy", "train/replaced_fraction"):
            assert read_scalars(run / "tensorboard", tag), tag
        assert read_scalars(
            run / "tensorboard", "train/grad_norm_generator"
        )  # decoupled: the generator's step
    if (config, stage) == ("tiny-deberta-rtd", 3):  # `cloze export` of a ZeRO-3 run: both parts load
        transformers = pytest.importorskip("transformers")
        from safetensors.torch import load_file

        out = tmp_path / "hf"
        exported = run_cloze(["export", str(run), "--out", str(out)], HF_HUB_OFFLINE="1")
        assert exported.returncode == 0, exported.stderr[-3000:]
        tok = transformers.AutoTokenizer.from_pretrained(str(out))
        ids = tok(["Return the number of items in a container."], return_tensors="pt")["input_ids"]
        disc = transformers.DebertaV2Model.from_pretrained(str(out)).eval()
        gen = transformers.DebertaV2ForMaskedLM.from_pretrained(str(out / "generator")).eval()
        assert gen.config.num_hidden_layers * 2 == disc.config.num_hidden_layers
        with torch.no_grad():
            assert torch.isfinite(disc(input_ids=ids).last_hidden_state).all()
            assert torch.isfinite(gen(input_ids=ids).logits).all()
        assert any(k.startswith("mask_predictions.") for k in load_file(str(out / "model.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RESUME_STAGE))
def test_resumes_exactly(tmp_path: Path, dataset_dir: Path, uninterrupted, config: str) -> None:
    """Stopped at step 15 (a checkpoint there), resumed in fresh processes: every step's loss equals the
    uninterrupted run's (RTD: the generator's sampling RNG and both phases' optimizer state included)."""
    stage = RESUME_STAGE[config]
    run = tmp_path / "run"
    train(dataset_dir, run, config, stage, "checkpoint.every_steps=15", "trainer.stop_after_steps=15")
    resumed = train(dataset_dir, run, config, stage, "checkpoint.every_steps=15")
    assert read_scalars(run / "tensorboard", "train/loss") == read_scalars(
        uninterrupted(config, stage) / "tensorboard", "train/loss"
    )
    assert sorted(resumed) == list(range(1, 31))


def test_rtd_config_is_the_reference_shape() -> None:
    cfg = ModelConfig.from_preset("deberta_v3_base_rtd")
    model_gen = dataclasses.replace(cfg, num_layers=cfg.num_layers)
    assert (cfg.hidden_size, cfg.num_layers, cfg.rtd_weight) == (768, 12, 10.0)
    assert rtd_generator_config(model_gen).num_layers == 6  # rtd_base.json: generator 6 layers, same width
