"""T5 against transformers' T5ForConditionalGeneration (models/t5/modeling_t5.py): every feed-forward activation
transformers' T5Config accepts (`feed_forward_proj` = '<act>' or 'gated-<act>', <act> in ACT2FN), gated (v1.1) and
not (v1.0), trains (same gradients), exports and imports with the same logits (fp32); the initialisation equals
`T5PreTrainedModel._init_weights` at the same `initializer_factor`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modeling import ModelConfig, ModelConfigError, build_model
from modeling.config import T5_ACTIVATIONS
from modeling.hf import ExportError, config_from_hf, export_hf, hf_config, hf_model, load_hf, to_hf_state_dict
from modeling.registry import get_family
from tests.conftest import tiny_model_config

transformers = pytest.importorskip("transformers")

V = 97


def t5_cfg(**kw) -> ModelConfig:
    base = dict(
        family="t5",
        vocab_size=V,
        num_layers=1,
        num_decoder_layers=1,
        d_kv=8,
        intermediate_size=48,
        layer_norm_eps=1e-6,
        tie_word_embeddings=False,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
    )
    return tiny_model_config(**{**base, **kw})


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[mask == 0] = 0
    dec = torch.randint(2, V, (2, 6), generator=g)
    labels = torch.randint(2, V, (2, 6), generator=g)
    return ids, mask, dec, labels


def test_transformers_activation_table_is_covered() -> None:
    """Every parameter-free ACT2FN name is one of ours; the two with learnable parameters are refused."""
    from transformers.activations import ACT2CLS

    assert set(ACT2CLS) - set(T5_ACTIVATIONS) == {"prelu", "xielu"}


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
def test_every_activation_trains_exports_and_imports_like_transformers(tmp_path: Path, gated: bool) -> None:
    from modeling.t5 import ACTIVATIONS

    ids, mask, dec, labels = inputs()
    probe = torch.linspace(-12.0, 12.0, 241)
    for activation in T5_ACTIVATIONS:
        cfg = t5_cfg(activation=activation, gated_ffn=gated)
        torch.manual_seed(0)
        ours = build_model(cfg)
        with torch.no_grad():  # scale up so that every activation sees its whole range (clipping, saturation)
            for name, p in ours.named_parameters():
                if ".ffn.up." in name or ".ffn.gate_up." in name:  # transformers' DenseReluDense.wi*
                    p.mul_(4.0)
        hf = hf_model(ours, cfg)  # transformers' T5 built from the config we export
        assert hf.config.is_gated_act == gated
        with torch.set_grad_enabled(gated):
            got = ours(ids, dec, attention_mask=mask).logits
            expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(got, expected, msg=f"{activation} gated={gated}: logits")
        # import: the config transformers wrote gives back the same gating and the same function
        hf.config.to_json_file(str(tmp_path / "config.json"))
        back = config_from_hf(tmp_path)
        assert back.gated_ffn == gated, activation
        act = transformers.activations.ACT2FN[hf.config.dense_act_fn]
        torch.testing.assert_close(ACTIVATIONS[back.activation](probe), act(probe), msg=activation)
        if not gated:  # the activation's gradient is checked once, in the gated run (cheaper test)
            continue
        # training: the same gradients for the feed-forward weights
        loss_fn = torch.nn.functional.cross_entropy
        loss_fn(got.flatten(0, 1), labels.flatten()).backward()
        loss_fn(expected.flatten(0, 1), labels.flatten()).backward()
        hf_params = dict(hf.named_parameters())
        # our gradients under transformers' names (the fused wi_0|wi_1 split by the adapter)
        grads = _as_hf({n: p.grad for n, p in ours.named_parameters() if p.grad is not None}, cfg)
        for name, grad in grads.items():
            if "DenseReluDense" in name:
                torch.testing.assert_close(
                    grad, hf_params[name].grad, msg=f"{activation} gated={gated}: {name}"
                )


def test_export_directory_round_trip(tmp_path: Path) -> None:
    """A v1.0-style T5 (ungated relu, tied and rescaled head) through files: export, load_hf, same logits."""
    cfg = t5_cfg(activation="relu", gated_ffn=False, tie_word_embeddings=True)
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    export_hf(ours, cfg, tmp_path)
    back, back_cfg, missing = load_hf(tmp_path)
    assert (back_cfg.activation, back_cfg.gated_ffn, back_cfg.tie_word_embeddings, missing) == (
        "relu",
        False,
        True,
        [],
    )
    ids, mask, dec, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids, dec, mask).logits, ours(ids, dec, mask).logits)


def test_gated_gelu_means_the_tanh_gelu_as_in_transformers() -> None:
    """transformers' T5 v1.1 'gated-gelu' is gelu_new; an exact (erf) gated GELU must not be written so."""
    from modeling.hf import t5_activation_from_hf, t5_feed_forward_proj

    assert t5_feed_forward_proj(t5_cfg(activation="gelu_tanh")) == "gated-gelu"
    assert t5_feed_forward_proj(t5_cfg(activation="gelu")) == "gated-gelu_python"
    assert t5_feed_forward_proj(t5_cfg(activation="relu", gated_ffn=False)) == "relu"
    assert t5_activation_from_hf("gated-gelu", "x") == ("gelu_tanh", True)
    assert t5_activation_from_hf("gated-silu", "x") == ("silu", True)
    assert t5_activation_from_hf("relu", "x") == ("relu", False)


def test_unsupported_activation_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"'prelu'.*gelu_tanh.*silu"):
        t5_cfg(activation="prelu")
    with pytest.raises(ModelConfigError, match="gated_ffn=false applies to model.family='t5' only"):
        ModelConfig(family="bert", gated_ffn=False)
    cfg = t5_cfg(activation="gelu_tanh")
    export_hf(build_model(cfg), cfg, tmp_path)
    raw = (tmp_path / "config.json").read_text()
    for bad, match in [("gated-xielu", r"'xielu' is not supported.*silu"), ("gelu-gated", "neither")]:
        (tmp_path / "config.json").write_text(raw.replace('"gated-gelu"', f'"{bad}"'))
        with pytest.raises(ExportError, match=match):
            config_from_hf(tmp_path)


def _as_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors under transformers' names (the T5 adapter splits fused projections)."""
    return to_hf_state_dict(state, get_family("t5").hf.parts[0])  # type: ignore[union-attr]


def _weight_stats(params: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    return {n: (p.detach().float().std().item(), p.detach().float().mean().item()) for n, p in params.items()}


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # `family: t5` with nothing else: T5's init at factor 1.0 (was 0.02 / 50x too small)
        dict(initializer_factor=0.5, gated_ffn=False, activation="relu", tie_word_embeddings=True),
        dict(initializer_factor=2.0, activation="gelu_tanh", tie_word_embeddings=False),
    ],
)
def test_init_equals_transformers_t5_init(kw: dict) -> None:
    """Per weight, the std (and for the RMSNorm weights, the value) of our init equals transformers' init of the same
    config (T5PreTrainedModel._init_weights); wide enough shapes that a std is measured within a few %."""
    base = dict(
        family="t5",
        vocab_size=600,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        d_kv=16,
        intermediate_size=160,
        relative_attention_num_buckets=32,
    )
    cfg = ModelConfig(**{**base, **kw})
    torch.manual_seed(0)
    ours = _weight_stats(_as_hf(dict(build_model(cfg).named_parameters()), cfg))
    torch.manual_seed(1)
    theirs = _weight_stats(dict(transformers.T5ForConditionalGeneration(hf_config(cfg)).named_parameters()))
    if not cfg.tie_word_embeddings:  # transformers 5 ties lm_head to `shared` at init: same std as `shared`
        theirs.setdefault("lm_head.weight", theirs["shared.weight"])
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    for name, (std, mean) in ours.items():
        ref_std, ref_mean = theirs[name]
        if name.endswith("layer_norm.weight"):  # constant = initializer_factor
            assert (std, mean) == (0.0, pytest.approx(ref_mean)) and ref_mean == cfg.initializer_factor, name
        else:
            assert std == pytest.approx(ref_std, rel=0.2), (name, std, ref_std)
            assert abs(mean) < 0.2 * ref_std, (name, mean)
