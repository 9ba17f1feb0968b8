"""DeBERTa v1 / v2 / v3 (modeling/deberta.py) against transformers and microsoft/DeBERTa.

- relative positions: ours = transformers' `build_relative_position` / `make_log_bucket_position`
  (models/deberta_v2/modeling_deberta_v2.py) over -1000..1000, and = microsoft/DeBERTa `DeBERTa/deberta/da_utils.py`
  (ported below) on every row the attention reads;
- logits = transformers' DebertaV2ForMaskedLM (v2 with conv, v3) / DebertaForMaskedLM (v1) after export (saved and
  loaded with from_pretrained) and after import back (fp32, default tolerances, with padding). transformers has no
  Enhanced Mask Decoder, so export parity is checked on the encoder path (model.enhanced_mask_decoder=false, or our
  `mlm_logits(deberta(...))` with it on);
- the Enhanced Mask Decoder = the reference's `EnhancedMaskDecoder` (apps/models/masked_language_model.py, ported
  below onto transformers' layers, which are the reference's);
- bucket settings that cannot work are a ModelConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from modeling import ModelConfig, ModelConfigError, build_model
from modeling.deberta import (
    DebertaForPretraining,
    build_relative_position,
    deberta_flops,
    deberta_params,
    make_log_bucket_position,
    relative_rows,
)
from modeling.hf import export_hf, hf_model, load_hf
from modeling.registry import get_family

transformers = pytest.importorskip("transformers")
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_v2  # noqa: E402

V = 100


# ---- microsoft/DeBERTa DeBERTa/deberta/da_utils.py, ported verbatim (2-space indent made 4, pdb dropped) ----------


@lru_cache(maxsize=128)
def ref_make_log_bucket_dict(bucket_size, max_position, device=None):  # noqa: ANN001, ANN201
    relative_pos = torch.arange(-max_position, max_position, device=device)
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).to(relative_pos),
        torch.abs(relative_pos),
    )
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket_pos = torch.where(abs_pos <= mid, relative_pos, (log_pos * sign).to(relative_pos)).to(torch.long)
    return bucket_pos


def ref_make_log_bucket_position(relative_pos, bucket_size, max_position):  # noqa: ANN001, ANN201
    relative_pos = torch.clamp(relative_pos, -max_position + 1, max_position - 1) + max_position
    bucket_dict = ref_make_log_bucket_dict(bucket_size, max_position, relative_pos.device)
    for _d in range(relative_pos.dim() - 1):
        bucket_dict = bucket_dict.unsqueeze(0)
        bucket_pos = torch.gather(
            bucket_dict.expand(list(relative_pos.size())[:-1] + [bucket_dict.size(-1)]),
            index=relative_pos.long(),
            dim=-1,
        )
    return bucket_pos


def ref_build_relative_position(query_size, key_size, bucket_size=-1, max_position=-1):  # noqa: ANN001, ANN201
    q_ids = torch.arange(0, query_size)
    k_ids = torch.arange(0, key_size)
    rel_pos_ids = q_ids.view(-1, 1) - k_ids.view(1, -1)
    if bucket_size > 0 and max_position > 0:
        rel_pos_ids = ref_make_log_bucket_position(rel_pos_ids, bucket_size, max_position)
    rel_pos_ids = rel_pos_ids[:query_size, :]
    rel_pos_ids = rel_pos_ids.unsqueeze(0)
    return rel_pos_ids


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (8, 16), (0, 512)])
def test_relative_positions_equal_transformers_and_the_reference(buckets: int, max_position: int) -> None:
    T = 1001  # relative distances -1000..1000
    ours = build_relative_position(T, T, buckets, max_position)
    layer = torch.empty(1, T, 1)
    theirs = hf_v2.build_relative_position(layer, layer, bucket_size=buckets, max_position=max_position)[0]
    assert ours.dtype == theirs.dtype == torch.long
    assert torch.equal(ours, theirs)
    d = torch.arange(-1000, 1001)
    if buckets > 0:
        assert torch.equal(
            make_log_bucket_position(d, buckets, max_position),
            hf_v2.make_log_bucket_position(d, buckets, max_position).long(),
        )
    ref = ref_build_relative_position(T, T, buckets, max_position)[0]
    # The reference clamps |d| to max_position - 1 before bucketing, transformers does not: they agree on every
    # distance below max_position, and on the row of the relative table the attention reads (clamp(b + span, 0,
    # 2 span - 1)) for every distance but d <= -max_position, where transformers (and we) read row 0 and the
    # reference row 1 (its buckets stop at -(span - 1)); only sequences longer than max_position meet it.
    span = buckets if buckets > 0 else max_position
    rel = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    inside = rel.abs() < max_position
    assert torch.equal(ours[inside], ref[inside])
    row_ours, row_ref = (ours + span).clamp(0, 2 * span - 1), (ref + span).clamp(0, 2 * span - 1)
    far_left = rel <= -max_position
    assert torch.equal(row_ours[~far_left], row_ref[~far_left])
    if buckets > 0:
        assert bool((row_ours[far_left] == 0).all() and (row_ref[far_left] == 1).all())


# ---- model parity ----------------------------------------------------------------------------------------------------


def tiny(family: str = "deberta", **kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        family=family,
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        position_buckets=8,
        max_relative_positions=12,
    )
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


VERSIONS = {
    # v1: fused in_proj + q/v biases, pos_proj / pos_q_proj, no buckets (span 12 < T: distances clamp), EMD on
    "v1": dict(
        family="deberta_v1", position_buckets=0, share_att_key=False, norm_rel_ebd="none", type_vocab_size=2
    ),
    # v2: own position projections, conv layer after block 1, EMD off (plain encoder path)
    "v2": dict(share_att_key=False, conv_kernel_size=3, enhanced_mask_decoder=False),
    # v3: shared keys, buckets, LayerNorm'd relative table, EMD on
    "v3": dict(),
    # v3 with more buckets than the sequence reaches: only the 2T - 1 rows read are projected
    "v3_short": dict(position_buckets=64, max_relative_positions=128),
}


def make(cfg: ModelConfig, seed: int = 0) -> DebertaForPretraining:
    """A model with every parameter perturbed (biases, LayerNorms and zero-initialised tensors included)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert isinstance(model, DebertaForPretraining)
    return model


def batch(B: int = 3, T: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 10:] = 0  # right padding in one row
    ids[mask == 0] = 0
    types = (torch.arange(T) >= T // 2).long().expand(B, T)
    return ids, mask, types


def encoder_logits(
    model: DebertaForPretraining, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
) -> torch.Tensor:
    """Our MLM logits on the encoder path (what transformers' *ForMaskedLM computes)."""
    return model.mlm_logits(model.deberta(ids, mask, types))


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_logits_equal_transformers_after_export_and_import(tmp_path: Path, version: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny(**VERSIONS[version])  # type: ignore[arg-type]
    ours = make(cfg)
    ids, mask, types = batch()
    keep = mask.bool()
    assert sum(p.numel() for p in ours.parameters()) == get_family(cfg.family).param_count(cfg)

    out = export_hf(ours, cfg, tmp_path / "hf")[0]
    hf_class = "DebertaForMaskedLM" if version == "v1" else "DebertaV2ForMaskedLM"
    if version == "v3_short":
        assert relative_rows(cfg, ids.shape[1]) == (64 - 15, 31)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error"
            )  # loads without a warning (the EMD's position table is ignored quietly)
            theirs = getattr(transformers, hf_class).from_pretrained(str(out)).eval()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not records, [r.getMessage() for r in records]
    assert theirs.config.model_type == ("deberta" if version == "v1" else "deberta-v2")
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.testing.assert_close(encoder_logits(ours, ids, mask, types)[keep], expected[keep])
        if not cfg.enhanced_mask_decoder:  # the model's own forward is the encoder path
            torch.testing.assert_close(
                ours(ids, attention_mask=mask, token_type_ids=types).logits[keep], expected[keep]
            )

    back, back_cfg, missing = load_hf(out)
    # transformers records no EMD: an import turns it on (the reference's default); its position table comes back
    # from the export when the exported model had one, else it starts from its initialisation (reported)
    assert back_cfg.enhanced_mask_decoder and isinstance(back, DebertaForPretraining)
    assert missing == ([] if cfg.enhanced_mask_decoder else ["deberta.embeddings.position_embeddings.weight"])
    unrecorded = ("preset", "enhanced_mask_decoder")
    assert {k: v for k, v in back_cfg.to_dict().items() if k not in unrecorded} == {
        k: v for k, v in cfg.to_dict().items() if k not in unrecorded
    }
    back.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder_logits(back, ids, mask, types)[keep], expected[keep])
        if cfg.enhanced_mask_decoder:  # the full pretraining forward, the EMD included, is unchanged
            torch.testing.assert_close(
                back(ids, attention_mask=mask, token_type_ids=types).logits[keep],
                ours(ids, attention_mask=mask, token_type_ids=types).logits[keep],
            )


# ---- the Enhanced Mask Decoder against the reference -----------------------------------------------------------------


def reference_emd_context_layer(  # noqa: ANN201
    encoder_layers,
    z_states,
    attention_mask,
    encoder,
    target_ids,
    position_biased_input,  # noqa: ANN001
):
    """microsoft/DeBERTa apps/models/masked_language_model.py `EnhancedMaskDecoder.emd_context_layer`, with the
    layer call adapted to transformers' Deberta(V2)Layer signature (it returns (states, attention))."""
    if attention_mask.dim() <= 2:
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        att_mask = extended_attention_mask.byte()
        attention_mask = att_mask * att_mask.squeeze(-2).unsqueeze(-1)
    elif attention_mask.dim() == 3:
        attention_mask = attention_mask.unsqueeze(1)
    hidden_states = encoder_layers[-2]
    if not position_biased_input:
        layers = [encoder.layer[-1] for _ in range(2)]
        z_states = z_states + hidden_states
        query_states = z_states
        query_mask = attention_mask
        outputs = []
        rel_embeddings = encoder.get_rel_embedding()
        for layer in layers:
            output = layer(
                hidden_states,
                query_mask,
                query_states=query_states,
                relative_pos=None,
                rel_embeddings=rel_embeddings,
            )[0]
            query_states = output
            outputs.append(query_states)
    else:
        outputs = [encoder_layers[-1]]
    _mask_index = (target_ids > 0).view(-1).nonzero().view(-1)

    def flatten_states(q_states):  # noqa: ANN001, ANN202
        q_states = q_states.view((-1, q_states.size(-1)))
        return q_states.index_select(0, _mask_index)

    return [flatten_states(q) for q in outputs]


def reference_v1_to_v2(state: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """microsoft/DeBERTa deberta/disentangled_attention.py `_pre_load_hook`: how the reference loads a v1 checkpoint
    (in_proj, q_bias, v_bias, pos_proj, pos_q_proj) into its v2 attention (key / pos_key biases: zero, as built)."""
    out = {}
    for key, t in state.items():
        if key.endswith("in_proj.weight"):
            p = key[: -len("in_proj.weight")]
            v1_proj = t.unsqueeze(0).reshape(heads, -1, t.size(-1))
            q, k, v = v1_proj.chunk(3, dim=1)
            out[p + "query_proj.weight"] = q.reshape(-1, t.size(-1))
            out[p + "key_proj.weight"] = k.reshape(-1, t.size(-1))
            out[p + "value_proj.weight"] = v.reshape(-1, t.size(-1))
            out[p + "query_proj.bias"] = state[p + "q_bias"]
            out[p + "key_proj.bias"] = torch.zeros(t.size(-1))
            out[p + "value_proj.bias"] = state[p + "v_bias"]
            out[p + "pos_key_proj.weight"] = state[p + "pos_proj.weight"]
            out[p + "pos_key_proj.bias"] = torch.zeros(t.size(-1))
            out[p + "pos_query_proj.weight"] = state[p + "pos_q_proj.weight"]
            out[p + "pos_query_proj.bias"] = state[p + "pos_q_proj.bias"]
        elif not key.endswith(
            ("q_bias", "v_bias", "pos_proj.weight", "pos_q_proj.weight", "pos_q_proj.bias")
        ):
            out[key] = t
    return out


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_enhanced_mask_decoder_equals_the_reference(version: str) -> None:
    cfg = tiny(**VERSIONS[version])  # type: ignore[arg-type]
    assert cfg.enhanced_mask_decoder  # the reference's pretraining default
    ours = make(cfg)
    if version == "v1":  # transformers' v1 attention cannot take query_states: load v1 as the reference does
        as_v2 = dataclasses.replace(cfg, family="deberta")
        theirs = hf_model(build_model(as_v2), as_v2)
        theirs.load_state_dict(reference_v1_to_v2(ours.state_dict(), cfg.num_heads))
    else:
        # transformers' layers (the reference's) holding our weights, and the EMD's position table
        theirs = hf_model(ours, cfg)
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 9]] = ids[0, [1, 5, 9]]
    labels[1, [0, 9]] = ids[1, [0, 9]]  # row 1 is padded from 10 on
    labels[2, 15] = ids[2, 15]
    with torch.no_grad():
        out = ours(ids, labels=labels, attention_mask=mask, token_type_ids=types)
        deberta = theirs.deberta
        encoder_layers = deberta(
            ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True
        ).hidden_states
        z_states = deberta.embeddings.position_embeddings(torch.arange(ids.shape[1]))[None]  # raw rows, no LN
        target_ids = torch.where(labels >= 0, labels, 0)  # the reference marks targets by id > 0
        ctx = reference_emd_context_layer(encoder_layers, z_states, mask, deberta.encoder, target_ids, False)
        ctx = ctx[-1]
        ref_logits = theirs.lm_predictions(ctx, deberta.embeddings.word_embeddings)
    assert out.targets is not None and torch.equal(out.targets, labels[labels >= 0])
    torch.testing.assert_close(out.logits, ref_logits)
    # the EMD changes the logits (it is not the encoder path)
    assert not torch.allclose(out.logits, encoder_logits(ours, ids, mask, types)[labels >= 0])


def test_emd_is_the_encoder_path_with_absolute_positions_in_the_input() -> None:
    """The reference's `position_biased_input` branch: the decoder's output is the last layer's."""
    cfg = tiny(position_biased_input=True)
    model = make(cfg)
    ids, mask, types = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, attention_mask=mask, token_type_ids=types).logits,
            encoder_logits(model, ids, mask, types),
        )


# ---- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(position_buckets=600, max_relative_positions=512), r"model.position_buckets=600 cannot bucket"),
        (dict(position_buckets=-1), r"model.position_buckets=-1: use 0 for no bucketing"),
        (dict(position_buckets=1), r"model.position_buckets=1 cannot bucket"),
        (dict(max_relative_positions=0), r"model.max_relative_positions=0"),
        (dict(pos_att_type="c2p|p2p"), r"model.pos_att_type='c2p\|p2p': p2p is not supported"),
        (dict(conv_kernel_size=2), r"model.conv_kernel_size=2"),
        (
            dict(family="deberta_v1", position_buckets=0),
            r"model.family='deberta_v1' has no share_att_key, norm_rel_ebd",
        ),
    ],
)
def test_settings_that_cannot_work_are_clear_errors(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        tiny(**kw)  # type: ignore[arg-type]


def test_v3_presets_have_the_published_sizes() -> None:
    """microsoft/deberta-v3-*: backbone + 128K-token embeddings = 70M (xsmall), 142M (small), 184M (base), 435M
    (large); ours adds the EMD's 512-row position table and the MLM head."""
    published = {"xsmall": 70.7e6, "small": 141.9e6, "base": 184.4e6, "large": 435.1e6}
    for size, n in published.items():
        cfg = ModelConfig.from_preset(f"deberta_v3_{size}")
        assert cfg.vocab_size == 128100 and cfg.position_buckets == 256 and not cfg.position_biased_input
        assert abs(deberta_params(cfg) - n) / n < 0.01, (size, deberta_params(cfg))
        assert deberta_flops(cfg, 512) > 6 * (deberta_params(cfg) - cfg.vocab_size * cfg.hidden_size)
