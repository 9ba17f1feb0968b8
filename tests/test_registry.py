"""The family registry (modeling/registry.py) and the trainer's task registry (trainer/losses.py `TASKS`).

A family is added from outside the package, with no production file changed: tests/toy_family.py registers a toy
family and its training task, and `cloze train --plugin tests.toy_family` trains it on 2 ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modeling import ModelConfig, ModelConfigError, build_model
from modeling.flops import param_count, train_flops_per_token
from modeling.registry import FAMILIES, FamilySpec, get_family, register_family
from tests.conftest import read_scalars, run_cloze, torchrun_cloze
from trainer.config import ConfigError, load_config
from trainer.losses import task_for

BUILT_IN = ("bert", "roberta", "albert", "electra", "t5", "bart")


def test_unknown_family_is_an_error_listing_the_registered_ones() -> None:
    for call in (lambda: get_family("gpt9"), lambda: ModelConfig(family="gpt9")):
        with pytest.raises(ModelConfigError, match="model.family='gpt9' is not registered") as e:
            call()
        assert all(name in str(e.value) for name in BUILT_IN), e.value


def test_unknown_family_in_a_recipe_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"model.family='gpt9' is not registered; choose one of bert, "
    ) as e:
        load_config("configs/tiny-bert.yaml", ["model.family=gpt9"])
    assert "register_family" in str(e.value) and "override model.family=gpt9" in str(e.value)


def test_every_built_in_family_is_registered_with_its_task() -> None:
    for name in BUILT_IN:
        spec = get_family(name)
        assert spec.name == name and spec.objectives and spec.hf is not None
        assert task_for(name).name  # the trainer's half: a task for every family


def test_a_taken_name_cannot_be_registered_twice() -> None:
    bert = get_family("bert")
    with pytest.raises(ModelConfigError, match="registered twice"):
        register_family(FamilySpec("bert", bert.build, ("mlm",), bert.param_count, bert.flops_per_token))
    assert get_family("bert") is bert


def test_toy_family_builds_counts_and_has_a_task() -> None:
    """Registered by importing the plugin module: preset, build, parameter and FLOP accounting, task."""
    import tests.toy_family  # noqa: F401  (registers "toy")

    assert "toy" in FAMILIES
    cfg = ModelConfig.from_preset("toy", vocab_size=50)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg)
    assert train_flops_per_token(cfg, 64) > 0
    assert task_for(cfg).name == "toy"


def test_prepare_asks_the_family_spec(dataset_dir: Path) -> None:
    """prepare() checks the shards' objective against FamilySpec.objectives and runs FamilySpec.configure
    (RoBERTa: positions start after the pad id) instead of branching on the family's name. What the dataset and
    the family decide lands in the run state's copy of the config; the loaded config is left as it was."""
    import dataclasses

    from trainer.state import prepare

    common = [f"data.path={dataset_dir}", "model.type_vocab_size=1"]
    cfg = load_config("configs/tiny-bert.yaml", [*common, "model.family=roberta"])
    loaded = dataclasses.asdict(cfg)
    state = prepare(cfg, world_size=2)
    assert state.cfg.model.position_offset == state.manifest.special_tokens["pad"] + 1 > 0
    assert state.cfg.model.vocab_size == state.manifest.tokenizer["vocab_size"]
    assert state.cfg.trainer.grad_accum == state.grad_accum >= 1
    assert dataclasses.asdict(cfg) == loaded  # never mutated
    assert cfg.model.vocab_size == 0 and cfg.model.position_offset != state.cfg.model.position_offset
    cfg = load_config("configs/tiny-bert.yaml", [*common, "model.family=t5"])
    with pytest.raises(
        ConfigError, match=r"model.family='t5' trains on t5 shards, but .* holds 'mlm' shards"
    ):
        prepare(cfg, world_size=2)


@pytest.mark.slow
def test_toy_family_and_toy_objective_train_5_steps_on_2_ranks_through_cloze_train(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Issue 13's test: a family and an objective registered from a test module (tests/toy_family.py), with no
    production file changed. `cloze shards --plugin` writes shards with the toy objective; `cloze train --plugin`
    registers both on every rank and trains the toy family on them."""
    from data_pipeline.manifest import read_manifest
    from tests.conftest import write_stdlib_corpus
    from tests.toy_family import TOY_NTH

    data = tmp_path / "shards"
    corpus = write_stdlib_corpus(tmp_path / "c.txt", 400)
    proc = run_cloze(
        ["shards", "--input", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(data)]
        + ["--objective", TOY_NTH.name, "--seq-len", "64", "--valid-fraction", "0.05", "--quiet"]
        + ["--plugin", "tests.toy_family"]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_manifest(data).objective == "toy-nth"
    run = tmp_path / "run"
    proc = torchrun_cloze(
        [
            "train",
            "configs/tiny-bert.yaml",
            f"data.path={data}",
            f"run_dir={run}",
            "model.preset=toy",  # the toy family's own preset (family=toy), added by register_family
            "trainer.max_steps=5",
            "trainer.eval_every=0",
            "checkpoint.every_steps=0",
            "--plugin",
            "tests.toy_family",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = read_scalars(run / "tensorboard", "train/loss")
    assert sorted(losses) == [1, 2, 3, 4, 5], losses
    assert all(v == v and v > 0 for v in losses.values()), losses  # finite, positive cross-entropy
    text = (run / "config.yaml").read_text()
    assert "family: toy" in text
