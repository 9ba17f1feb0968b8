from pathlib import Path

import pytest
import yaml

from modeling.config import PRESETS
from trainer.config import ConfigError, RunConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_in_configs_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.preset in PRESETS
    # Round trip: the resolved config written into a run directory loads back to the same values.
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_there_are_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"tiny-bert.yaml", "demo.yaml", "bert-base.yaml"}


def test_unknown_key_is_named_with_its_file_and_a_suggestion(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "optimizer.learning_rate" in msg and str(p) in msg


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_step\b.*did you mean trainer\.max_steps"):
        config_from_dict({}, ["trainer.max_step=10"])


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown key optimiser"):
        config_from_dict({"optimiser": {"lr": 1.0}})


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_steps=ten", "trainer.max_steps"),
        ("trainer.max_steps=1.5", "trainer.max_steps"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("logging.tensorboard=maybe", "logging.tensorboard"),
        ("optimizer.betas=0.9", "optimizer.betas"),
        ("model.num_layers=[1]", "model.num_layers"),
    ],
)
def test_wrong_type_names_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({}, [override])


def test_overrides_apply_with_types() -> None:
    cfg = config_from_dict(
        {}, ["optimizer.lr=3e-4", "trainer.max_steps=7", "model.preset=tiny", "model.num_layers=3"]
    )
    assert cfg.optimizer.lr == pytest.approx(3e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.trainer.max_steps == 7
    assert cfg.model.hidden_size == PRESETS["tiny"]["hidden_size"] and cfg.model.num_layers == 3


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("optimizer:\n  lr: 1e-4\n")
    assert load_config(p).optimizer.lr == pytest.approx(1e-4)


def test_batch_arithmetic() -> None:
    cfg = config_from_dict({"trainer": {"global_batch_size": 64, "micro_batch_size": 8}})
    assert cfg.resolve_batch(world_size=2) == 4
    with pytest.raises(ConfigError, match="trainer.global_batch_size=64 is not a multiple"):
        cfg.resolve_batch(world_size=3)
    bad = config_from_dict({"trainer": {"global_batch_size": 64, "micro_batch_size": 8, "grad_accum": 3}})
    with pytest.raises(ConfigError) as e:
        bad.resolve_batch(world_size=2)
    assert (
        "trainer.grad_accum=3" in str(e.value)
        and "= 48" in str(e.value)
        and "global_batch_size=64" in str(e.value)
    )


def test_value_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="deepspeed.zero_stage"):
        config_from_dict({"deepspeed": {"zero_stage": 4}})
    with pytest.raises(ConfigError, match="model.hidden_size=100 is not divisible by model.num_heads=3"):
        config_from_dict({"model": {"hidden_size": 100, "num_heads": 3}})
    with pytest.raises(ConfigError, match="model.preset.*unknown preset 'huge'"):
        config_from_dict({"model": {"preset": "huge"}})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config("nope.yaml")


def test_docs_config_reference_names_every_key() -> None:
    import dataclasses

    doc = (ROOT / "docs" / "config.md").read_text()
    cfg = RunConfig()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                assert f"`{section.name}.{f.name}`" in doc, f"docs/config.md lacks {section.name}.{f.name}"
        else:
            assert f"`{section.name}`" in doc


def test_learning_rate_schedules() -> None:
    import math

    from trainer.config import OptimizerConfig
    from trainer.optim import lr_factor

    def f(schedule: str, step: int) -> float:
        return lr_factor(step, OptimizerConfig(schedule=schedule, warmup_steps=10, min_lr_ratio=0.1), 110)

    assert [f("linear", s) for s in (0, 9)] == [0.1, 1.0]  # warmup
    assert f("linear", 60) == pytest.approx(0.55) and f("linear", 110) == pytest.approx(0.1)
    assert f("cosine", 10) == pytest.approx(1.0) and f("cosine", 60) == pytest.approx(0.55)
    assert f("cosine", 110) == pytest.approx(0.1)
    assert f("inverse_sqrt", 9) == 1.0 and f("inverse_sqrt", 39) == pytest.approx(math.sqrt(10 / 40))
    assert f("constant", 100) == 1.0
    with pytest.raises(ConfigError, match="optimizer.schedule='exp'"):
        config_from_dict({"optimizer": {"schedule": "exp"}})
