"""`model.last_layer_at_labels`: the last encoder block computed at the labelled positions only gives the same
logits, targets, sentence logits and parameter gradients as the block at every position (the reference's
computation), for every family and block variant that takes the path, with padding and activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from modeling import ModelConfig, build_model
from modeling.layers import FeedForward, QueryRows
from tests.conftest import tiny_model_config

V, B, T = 97, 3, 16
BASE = dict(vocab_size=V, num_layers=3, intermediate_size=128)
"""On top of tests/conftest.py's `tiny_model_config` (width 32, 4 heads, no dropout)."""
CASES = {
    "bert": {},
    "bert-pre-ln": dict(pre_layer_norm=True),
    "bert-sentence-head": dict(sentence_head=True),
    "bert-checkpoint-full": dict(activation_checkpointing=True),
    "bert-checkpoint-attention": dict(
        activation_checkpointing=True, checkpoint_mode="attention", checkpoint_every=2
    ),
    "roberta": dict(family="roberta", position_offset=1),
    "albert": dict(family="albert", share_layers=True, embedding_size=16),
    "distilbert": dict(family="distilbert", type_vocab_size=0),
    "electra": dict(family="electra", embedding_size=16, generator_fraction=0.5),
    "xlm": dict(family="xlm", languages=["en", "fr"], type_vocab_size=0),
}


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 10:] = 0  # right padding in one row
    ids[mask == 0] = 0
    at = (torch.rand(B, T, generator=g) < 0.3) & mask.bool()
    at[2] = False  # a row with no label
    at[0, 0] = True  # a label on the first position
    labels = torch.full_like(ids, -100)
    labels[at] = ids[at]
    return ids, mask, labels


def step(kw: dict, at_labels: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Outputs, parameter gradients, and the fewest rows any feed-forward saw."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(**BASE, **kw, last_layer_at_labels=at_labels)).train()
    rows: list[int] = []
    for m in model.modules():
        if isinstance(m, FeedForward):
            m.register_forward_hook(lambda _m, inp, _out: rows.append(inp[0].shape[:-1].numel()))
    ids, mask, labels = batch()
    extra = {"langs": (ids % 2)} if kw.get("family") == "xlm" else {}
    torch.manual_seed(1)  # ELECTRA samples its replacements
    out = model(ids, labels=labels, attention_mask=mask, **extra)
    if kw.get("family") == "electra":
        loss, got = out.loss, {"logits": out.gen_logits, "targets": out.targets, "rtd": out.rtd_logits}
    else:
        loss = torch.nn.functional.cross_entropy(out.logits, out.targets)
        got = {"logits": out.logits, "targets": out.targets}
        if out.sentence_logits is not None:
            got["sentence"] = out.sentence_logits
            loss = loss + out.sentence_logits.square().sum()
    loss.backward()
    grads = {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}
    return got, grads, min(rows)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_outputs_and_gradients(case: str) -> None:
    got, grads, rows = step(CASES[case], True)
    want, want_grads, all_rows = step(CASES[case], False)
    assert got.keys() == want.keys() and grads.keys() == want_grads.keys()
    labelled = int((batch()[2] != -100).sum())
    assert got["logits"].shape[0] == labelled > 0
    # The path was taken: the last feed-forward ran at the labelled positions (+ the [CLS] of rows 1 and 2, whose
    # first position carries no label, with a sentence head), not at all B * T.
    assert all_rows == B * T and rows == labelled + 2 * ("sentence" in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{case}: {k}")
    for n in want_grads:
        torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=f"{case}: grad {n}")


def test_query_rows_follow_the_flat_row_major_order() -> None:
    selected = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    q = QueryRows.of(selected)
    assert q.at.shape == (3, 3)
    assert q.flat.tolist() == selected.reshape(-1).nonzero().squeeze(1).tolist() == [1, 3, 4, 10, 14]
    assert q.at.reshape(-1)[q.rows].tolist() == [1, 3, 4, 0, 4]
    empty = QueryRows.of(torch.zeros(2, 4, dtype=torch.bool))
    assert empty.flat.numel() == 0 and empty.at.shape == (2, 1)


def test_flops_count_the_last_block_at_the_masked_positions() -> None:
    """MFU's FLOPs are the ones executed: with the option, the last block's attention rows, output projection and
    FFN (not its q/k/v projection) are counted at the mask fraction."""
    from modeling.flops import train_flops_per_token

    H, F, T, f = 768, 3072, 128, 0.15
    on = ModelConfig.from_preset("bert_base", vocab_size=30522)
    off = ModelConfig.from_preset("bert_base", vocab_size=30522, last_layer_at_labels=False)
    rest = 2 * (H * H + 2 * H * F) + 2 * 2 * T * H
    assert train_flops_per_token(off, T, mask_fraction=f) - train_flops_per_token(on, T, mask_fraction=f) == (
        pytest.approx(3 * (1 - f) * rest)
    )
    assert train_flops_per_token(on, T, mask_fraction=1.0) == train_flops_per_token(off, T, mask_fraction=1.0)


class _OutsideItsModule(torch.overrides.TorchFunctionMode):
    """Records every parameter that a torch function reads while no module owning it (directly) is in its call:
    what ZeRO-3, which gathers a module's own parameters around that module's call, would hand over partitioned."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.active: dict[int, int] = {}
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.outside: set[str] = set()
        for m in model.modules():
            m.register_forward_pre_hook(lambda mod, _args: self._enter(mod, 1))
            m.register_forward_hook(lambda mod, _args, _out: self._enter(mod, -1))

    def _enter(self, module: torch.nn.Module, step: int) -> None:
        for p in module.parameters(recurse=False):
            self.active[id(p)] = self.active.get(id(p), 0) + step

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        for a in [*args, *kwargs.values()]:
            if isinstance(a, torch.nn.Parameter) and self.active.get(id(a), 0) <= 0:
                self.outside.add(self.names.get(id(a), "?"))
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "case", ["bert-sentence-head", "albert", "electra", "xlm", "bert-checkpoint-attention"]
)
def test_every_parameter_is_read_inside_its_own_module_call(case: str) -> None:
    """The last block at the labelled positions reads each weight through its module's call (the fused q/k/v
    projection included), so that ZeRO-3's per-module gathering sees it."""
    torch.manual_seed(0)
    kw = CASES[case]
    model = build_model(tiny_model_config(**BASE, **kw)).train()
    ids, mask, labels = batch()
    extra = {"langs": (ids % 2)} if kw.get("family") == "xlm" else {}
    mode = _OutsideItsModule(model)
    with mode:
        model(ids, labels=labels, attention_mask=mask, **extra)
    assert not mode.outside, sorted(mode.outside)
