"""Activation checkpointing in every family: identical losses and gradients, fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling import ModelConfig, build_model
from tests.conftest import tiny_model_config

V = 151
FAMILIES = {
    "bert": {},
    "albert": dict(family="albert", embedding_size=16, share_layers=True),
    "electra": dict(family="electra", generator_fraction=0.5),
    "t5": dict(family="t5", d_kv=8, tie_word_embeddings=False, initializer_range=1.0),
    "bart": dict(family="bart"),
    "longformer": dict(family="longformer", attention_window=[8], position_offset=1, type_vocab_size=1),
}


def cfg(family: str, **kw) -> ModelConfig:
    base = dict(vocab_size=V, num_layers=4, hidden_dropout=0.1, attention_dropout=0.1)
    return tiny_model_config(**{**base, **FAMILIES[family], **kw})


def loss_of(model: torch.nn.Module, family: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, V, (4, 32), generator=g)
    labels = torch.where(torch.rand(4, 32, generator=g) < 0.2, ids, torch.full_like(ids, -100))
    torch.manual_seed(1)  # dropout (and ELECTRA's sampling) identical in both runs
    if family in ("t5", "bart"):
        out = model(ids, ids[:, :16])
        return F.cross_entropy(out.logits.reshape(-1, V), ids[:, 1:17].reshape(-1))
    if family == "longformer":  # windowed attention with two global tokens
        glob = torch.zeros_like(ids)
        glob[:, [0, 17]] = 1
        out = model(ids, labels=labels, global_attention_mask=glob)
    else:
        out = model(ids, labels=labels)
    return out.loss if family == "electra" else F.cross_entropy(out.logits, out.targets)


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass while `fn` runs (the activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


# Whole-block checkpointing for every family; selective (attention-only) for the encoder blocks.
CASES = [(f, "full") for f in sorted(FAMILIES)] + [
    (f, "attention") for f in ("albert", "bert", "electra", "longformer")
]


@pytest.mark.parametrize("family, mode", CASES)
def test_checkpointing_identical_and_smaller(family: str, mode: str) -> None:
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg(family, activation_checkpointing=on, checkpoint_mode=mode)).train()
        box: dict[str, torch.Tensor] = {}
        kept = saved_bytes(lambda m=model, b=box: b.__setitem__("loss", loss_of(m, family)))
        box["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((box["loss"].detach(), grads, kept))
    (l0, g0, b0), (l1, g1, b1) = results
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=0, msg=name)
    assert b1 < (0.6 if mode == "full" else 0.95) * b0, (b1, b0)
