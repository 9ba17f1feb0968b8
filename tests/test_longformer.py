"""Longformer (issue 16): the windowed attention against full attention under a band mask written here, and the
model against transformers' LongformerForMaskedLM (padding, several windows, global tokens), import back, and the
configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from modeling import ModelConfigError, build_model
from modeling.hf import hf_model, import_hf
from modeling.longformer import GLOBAL, LOCAL, PAD, sliding_window_attention
from tests.conftest import tiny_model_config
from tests.test_hf import make

V = 211


def band_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gq: torch.Tensor,
    gk: torch.Tensor,
    gv: torch.Tensor,
    code: torch.Tensor,
    w: int,
) -> torch.Tensor:
    """Full n x n attention restricted by masks: a local query attends to the local keys within w of it and to every
    global key (ordinary projections); a global query attends to every key with the global projections; padding
    neither attends nor is attended (its rows are zero)."""
    B, N, T, K = q.shape
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    band = (i - j).abs() <= w  # (T, T)
    key_local = (code == LOCAL)[:, None, None, :]
    key_global = (code == GLOBAL)[:, None, None, :]
    allowed = (band & key_local) | key_global  # (B, 1, T, T)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(K)
    out = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v
    sg = (gq @ gk.transpose(-1, -2)) / math.sqrt(K)
    out_g = torch.softmax(sg.masked_fill(~(code != PAD)[:, None, None, :], float("-inf")), -1) @ gv
    out = torch.where((code == GLOBAL)[:, None, :, None], out_g, out)
    return out.masked_fill((code == PAD)[:, None, :, None], 0.0)


@pytest.mark.parametrize(
    "T,w,globals_,pad",
    [
        (16, 2, [], 0),  # no global token
        (24, 4, [0], 5),  # [CLS]-style global, right padding
        (32, 8, [0, 9, 31], 0),  # several, one at the end
        (40, 4, [3, 4, 5, 20], 12),  # adjacent globals inside the window, long padding
        (64, 16, [0, 63], 0),  # wide window
    ],
)
def test_windowed_attention_equals_band_masked_full_attention(
    T: int, w: int, globals_: list[int], pad: int
) -> None:
    g = torch.Generator().manual_seed(T + w)
    B, N, K = 2, 3, 8
    q, k, v, gq, gk, gv = (torch.randn(B, N, T, K, generator=g, dtype=torch.float64) for _ in range(6))
    code = torch.full((B, T), LOCAL)
    code[0, globals_] = GLOBAL
    code[1, globals_[:1]] = GLOBAL  # rows with different numbers of global tokens
    if pad:
        code[1, T - pad :] = PAD
    got = sliding_window_attention(q, k, v, code, w, (gq, gk, gv))
    torch.testing.assert_close(got, band_reference(q, k, v, gq, gk, gv, code, w))


def cfg_of(**kw):
    base = dict(
        family="longformer",
        vocab_size=V,
        pad_token_id=1,
        position_offset=2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        max_position_embeddings=64,
        num_layers=3,
    )
    return tiny_model_config(**{**base, **kw})


@pytest.mark.parametrize("windows", [[4], [4, 8, 4], [8, 8, 16]])
def test_logits_equal_transformers_longformer(windows: list[int]) -> None:
    pytest.importorskip("transformers")
    cfg = cfg_of(attention_window=windows)
    ours = make(cfg)
    hf = hf_model(ours, cfg)
    assert type(hf).__name__ == "LongformerForMaskedLM"
    g = torch.Generator().manual_seed(1)
    B, T = 3, 37  # not a multiple of any window: both pad it
    ids = torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 25:] = 0  # right padding
    mask[2, 30:] = 0
    ids[mask == 0] = cfg.pad_token_id
    glob = torch.zeros(B, T, dtype=torch.long)
    glob[0, 0] = 1  # [CLS]
    glob[1, [0, 6, 7, 20]] = 1  # several, two adjacent
    # row 2: none
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, global_attention_mask=glob).logits
        expected = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits
        no_global = ours(ids, attention_mask=mask).logits
        expected_no_global = hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep])
    torch.testing.assert_close(no_global[keep], expected_no_global[keep])
    assert not torch.allclose(got[keep], no_global[keep])  # the global tokens changed something


def test_import_round_trip() -> None:
    pytest.importorskip("transformers")
    cfg = cfg_of(attention_window=[4, 8, 4])
    ours = make(cfg)
    fresh = build_model(cfg)
    missing, unexpected = fresh.load_state_dict(import_hf(hf_model(ours, cfg), cfg), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    for (key, a), b in zip(ours.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)


def test_memory_of_the_scores_is_linear_in_the_sequence() -> None:
    """No n x n anything: the largest intermediate of the attention grows linearly with T at a fixed window."""
    peak = {}
    for T in (256, 1024):
        q = torch.randn(1, 2, T, 8, requires_grad=True)
        code = torch.full((1, T), LOCAL)
        code[0, 0] = GLOBAL
        sizes: list[int] = []

        def record(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            sliding_window_attention(q, q, q, code, 16, (q, q, q)).sum().backward()
        peak[T] = max(sizes)
    assert peak[1024] <= 4.5 * peak[256]  # linear (4x), where n x n would be 16x


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(attention_window=[5]), "must be even"),
        (dict(attention_window=[0]), "must be even and positive"),
        (dict(attention_window=[128]), "longer than the sequence"),
        (dict(attention_window=[4, 4]), "2 values for 3 layers"),
    ],
)
def test_bad_windows_are_clear_errors(kw: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        build_model(cfg_of(**kw))


def test_parameter_count_matches_accounting() -> None:
    from modeling.flops import param_count

    cfg = cfg_of(attention_window=[4, 8, 4])
    assert sum(p.numel() for p in build_model(cfg).parameters()) == param_count(cfg)


# ---- conversion: cloze convert --to-long (launch/long.py) ---------------------------------------------------------


def roberta_dir(tmp_path, **kw):
    """A tiny RoBERTa exported as transformers files (max 64 positions)."""
    from modeling.hf import export_hf

    cfg = tiny_model_config(
        family="roberta",
        vocab_size=V,
        pad_token_id=1,
        position_offset=2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        **kw,
    )
    model = make(cfg)
    out = tmp_path / "roberta"
    export_hf(model, cfg, out)
    return out, model, cfg


def test_to_long_tiles_positions_copies_global_projections_and_keeps_short_inputs_exact(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from launch.long import convert_to_long

    src, roberta, rcfg = roberta_dir(tmp_path)
    out, cfg = convert_to_long(src, tmp_path / "long", max_len=256, window=128)
    assert cfg.family == "longformer" and cfg.max_position_embeddings == 256 and cfg.attention_window == [128]
    hf = transformers.LongformerForMaskedLM.from_pretrained(out).eval()
    assert hf.config.attention_window == [128] * rcfg.num_layers
    old = roberta.state_dict()["bert.embeddings.position_embeddings.weight"]  # (64 + 2, H)
    new = hf.longformer.embeddings.position_embeddings.weight.detach()  # (256 + 2, H)
    assert new.shape[0] == 258
    torch.testing.assert_close(new[:2], old[:2])  # the reserved rows kept
    for p in (0, 5, 63, 64, 100, 255):  # position p takes learned position p mod 64
        torch.testing.assert_close(new[2 + p], old[2 + p % 64])
    for layer in hf.longformer.encoder.layer:
        a = layer.attention.self
        for local, glob in ((a.query, a.query_global), (a.key, a.key_global), (a.value, a.value_global)):
            torch.testing.assert_close(glob.weight, local.weight)
            torch.testing.assert_close(glob.bias, local.bias)
    # A sequence shorter than the one-sided window: every token sees every other, as in RoBERTa.
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, V, (2, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    ids[mask == 0] = 1
    with torch.no_grad():
        expected = roberta(ids, attention_mask=mask).logits
        got = hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep])


def test_init_from_loads_the_converted_weights_and_refuses_another_shape(tmp_path) -> None:
    pytest.importorskip("transformers")
    from launch.long import convert_to_long
    from modeling.hf import ExportError, init_from_hf

    src, _, _ = roberta_dir(tmp_path)
    out, cfg = convert_to_long(src, tmp_path / "long", max_len=128, window=32)
    model = build_model(cfg)
    assert init_from_hf(model, cfg, out) == []
    converted = build_model(cfg)
    converted.load_state_dict(model.state_dict())
    with pytest.raises(ExportError, match="position_embeddings.weight has shape"):
        from dataclasses import replace

        init_from_hf(build_model(replace(cfg, max_position_embeddings=64)), cfg, out)
    with pytest.raises(ExportError, match="holds a longformer model; this run trains model.family=roberta"):
        rob = tiny_model_config(
            family="roberta", vocab_size=V, pad_token_id=1, position_offset=2, type_vocab_size=1
        )
        init_from_hf(build_model(rob), rob, out)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-len", "1000", "--window", "64"], "--max-len 1000 is not a multiple of --window 64"),
        (["--max-len", "256", "--window", "63"], "the window must be even and positive"),
        (
            ["--max-len", "256", "--window", "64", "--family", "albert"],
            "is a albert model; --to-long converts",
        ),
        (["--max-len", "256", "--window", "64", "--no-out"], "needs --out DIR"),
    ],
)
def test_to_long_bad_input_is_a_clear_error(tmp_path, args: list[str], message: str) -> None:
    pytest.importorskip("transformers")
    from modeling.hf import export_hf
    from tests.conftest import run_cloze

    if "--family" in args:
        i = args.index("--family")
        args = args[:i]
        cfg = tiny_model_config(family="albert", vocab_size=V, embedding_size=16, share_layers=True)
        src = tmp_path / "albert"
        export_hf(build_model(cfg), cfg, src)
    else:
        src, _, _ = roberta_dir(tmp_path)
    out = [] if "--no-out" in args else ["--out", str(tmp_path / "long")]
    args = [a for a in args if a != "--no-out"]
    proc = run_cloze(["convert", str(src), "--to-long", *args, *out])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "long").exists()


@pytest.mark.slow
def test_long_attention_benchmark_dry_mode() -> None:
    """benchmarks/long_attention.py runs end to end (so it cannot rot); activations grow linearly at a fixed window."""
    import re

    from tests.conftest import run_script

    args = ["--dry", "--lengths", "256", "1024", "--layers", "1", "--hidden", "64", "--window", "64"]
    proc = run_script("benchmarks/long_attention.py", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = dict(re.findall(r"  (\S+): activations x([\d.]+)", proc.stdout))
    assert set(growth) == {"cloze-longformer", "cloze-roberta", "hf-longformer"}, proc.stdout
    assert 3.6 <= float(growth["cloze-longformer"]) <= 4.4  # x4 the length: x4 the activations


def test_global_mask_of_another_length_is_a_clear_error() -> None:
    model = build_model(cfg_of(attention_window=[8]))
    ids = torch.randint(5, V, (2, 16))
    with pytest.raises(
        ValueError, match=r"global_attention_mask has shape \(2, 20\) but input_ids \(2, 16\)"
    ):
        model(ids, global_attention_mask=torch.zeros(2, 20, dtype=torch.long))
