"""The BERT encoder: numerics against transformers, the sparse head, activation checkpointing, import rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling import ModelConfig, build_model
from modeling.flops import param_count
from modeling.hf import to_hf_state_dict
from modeling.registry import get_family
from tests.conftest import tiny_model_config as tiny

ROOT = Path(__file__).resolve().parent.parent


def batch(cfg: ModelConfig, B: int = 3, T: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, cfg.vocab_size, (B, T), generator=g)
    labels = torch.full((B, T), -100)
    pick = torch.rand(B, T, generator=g) < 0.3
    labels[pick] = ids[pick]
    return ids, labels


def test_logits_equal_transformers_bert_for_masked_lm() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = tiny()
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu",
        pad_token_id=cfg.pad_token_id,
        attn_implementation="eager",
    )
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    # our fused qkv split (and keys renamed) by the family's adapter, the tied decoder filled in
    state = to_hf_state_dict(ours.state_dict(), get_family("bert").hf.parts[0])  # type: ignore[union-attr]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"bert.embeddings.position_ids"}, missing
    ids, _ = batch(cfg)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # padding in one row
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep])


def test_sparse_head_equals_dense_head_at_labelled_positions() -> None:
    cfg = tiny()
    model = build_model(cfg).eval()
    ids, labels = batch(cfg)
    with torch.no_grad():
        dense = model(ids).logits  # (B, T, V)
        sparse = model(ids, labels=labels)
    where = labels != -100
    torch.testing.assert_close(sparse.logits, dense[where])
    torch.testing.assert_close(sparse.targets, labels[where])


@pytest.mark.parametrize("pre_ln", [False, True])
def test_activation_checkpointing_gives_identical_loss_and_gradients(pre_ln: bool) -> None:
    ids, labels = batch(tiny())
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(
            tiny(activation_checkpointing=ckpt, pre_layer_norm=pre_ln, hidden_dropout=0.1)
        ).train()
        torch.manual_seed(1)
        out = model(ids, labels=labels)
        loss = F.cross_entropy(out.logits, out.targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, rtol=0, atol=0, msg=name)


def test_parameter_count_matches_accounting() -> None:
    for kw in ({}, {"pre_layer_norm": True}, {"type_vocab_size": 0}):
        cfg = tiny(**kw)
        assert sum(p.numel() for p in build_model(cfg).parameters()) == param_count(cfg)


def test_bert_base_preset_size() -> None:
    cfg = ModelConfig.from_preset("bert_base", vocab_size=30522)
    assert 109e6 < param_count(cfg) < 111e6  # BERT-base with its MLM head: 110M


def test_modeling_imports_neither_deepspeed_nor_torch_distributed() -> None:
    for path in (ROOT / "modeling").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert not n.startswith(
                    ("deepspeed", "torch.distributed", "trainer", "data_pipeline", "launch")
                ), (path, n)


def test_only_engine_imports_deepspeed() -> None:
    users = set()
    for pkg in ("modeling", "data_pipeline", "trainer", "launch"):
        for path in (ROOT / pkg).rglob("*.py"):
            if "import deepspeed" in path.read_text() or "from deepspeed" in path.read_text():
                users.add(str(path.relative_to(ROOT)))
    assert users == {"trainer/engine.py"}


@pytest.mark.parametrize(
    "preset",
    [
        "tiny",
        "bert_base",
        "roberta_base",
        "albert_base",
        "electra_small",
        "electra_base",
        "t5_small",
        "t5_base",
        "bart_base",
        "tiny_t5",
        "tiny_bart",
        "tiny_electra",
        "mt5_small",
        "xlmr_base",
        "xlm_base",
    ],
)
def test_parameter_accounting_matches_every_family(preset: str) -> None:
    from modeling.flops import param_count, train_flops_per_token

    cfg = ModelConfig.from_preset(preset, vocab_size=1000)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_count(
        cfg
    )  # parameters() counts shared ones once
    assert train_flops_per_token(cfg, 128, target_len=29) > 0


def test_flops_per_token_is_six_times_the_matmul_weights() -> None:
    """With every position predicted and one token (no attention span), BERT's training FLOPs per token are
    6 x the weights of its matrix multiplies: every Linear weight plus the tied vocabulary projection."""
    from modeling.flops import train_flops_per_token

    cfg = ModelConfig.from_preset("bert_base", vocab_size=30522)
    model = build_model(cfg)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    matmul += model.bert.embeddings.word_embeddings.weight.numel()
    attention = 3 * cfg.num_layers * 2 * 2 * 1 * cfg.hidden_size  # seq_len 1
    assert train_flops_per_token(cfg, 1, mask_fraction=1.0) == pytest.approx(6 * matmul + attention, rel=1e-9)


@pytest.mark.parametrize("preset", ["tiny", "tiny_t5", "tiny_bart"])
def test_every_family_attends_with_the_one_attention_module(preset: str) -> None:
    """One attention module (fused qkv; cross-attention q + fused kv), whatever the family."""
    from torch import nn

    from modeling.layers import Attention

    model = build_model(ModelConfig.from_preset(preset, vocab_size=97))
    attention = [
        m for m in model.modules() if "attention" in type(m).__name__.lower() or isinstance(m, Attention)
    ]
    assert attention and all(type(m) is Attention for m in attention), {type(m).__name__ for m in attention}
    for m in attention:
        fused = m.kv if m.cross else m.qkv
        assert (
            isinstance(fused, nn.Linear)
            and fused.out_features == (2 if m.cross else 3) * m.heads * m.head_dim
        )


def test_sdpa_mask_is_none_when_nothing_is_masked_and_combines_padding_with_causal() -> None:
    from modeling.layers import sdpa_mask

    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert sdpa_mask(None, 4, False, torch.float32) is None
    assert sdpa_mask(None, 4, True, torch.float32) is None  # the attention's is_causal (flash kernels on GPU)
    pad = sdpa_mask(keep, 4, False, torch.float32)
    assert pad is not None and pad.shape == (2, 1, 1, 4)
    both = sdpa_mask(keep, 4, True, torch.float32)
    assert both is not None and both.shape == (2, 1, 4, 4)
    allowed = torch.ones(4, 4).tril().bool() & keep.bool()[:, None, :]  # (B, Tq, Tk)
    torch.testing.assert_close(both[:, 0] == 0, allowed)
    bias = torch.randn(1, 3, 4, 4)
    with_bias = sdpa_mask(None, 4, True, torch.float32, bias)  # T5's decoder: relative bias + causal
    assert with_bias is not None
    torch.testing.assert_close(with_bias.tril(), bias.tril())
    assert (with_bias.triu(1) < -1e30).sum() == 3 * 6


def _module_imports(path: Path, packages: tuple[str, ...], modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `path` imports at module level (function-level imports are deferred: not a cycle
    at import time)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from pkg import submodule` imports the submodule; `from pkg import name` imports pkg itself.
            subs = {f"{module}.{a.name}" for a in node.names} & set(modules)
            out |= subs if subs else {module}
    return {m for m in out if m.split(".")[0] in packages}


def test_no_import_cycles_between_our_modules() -> None:
    """Issue 13: module-level imports of modeling/, data_pipeline/, trainer/, launch/ and cloze_errors form no
    cycle (a cycle makes the import order matter and breaks partial imports such as a plugin's)."""
    packages = ("modeling", "data_pipeline", "trainer", "launch", "cloze_errors")
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.glob("*/**/*.py")}
    files = {m.removesuffix(".__init__"): p for m, p in files.items() if m.split(".")[0] in packages}
    files["cloze_errors"] = ROOT / "cloze_errors.py"
    graph = {
        m: {d for d in _module_imports(p, packages, files) if d in files and d != m} for m, p in files.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 40
