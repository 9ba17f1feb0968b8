"""benchmarks/model_throughput.py's dry mode (issue 18): every registered family's row (cloze against its transformers
class, a full training step on each side) runs at a tiny shape, so the rows cannot rot; a family registered
without a row stops the script. Timing figures are not checked (only that each ratio is a finite positive number)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from modeling.registry import FAMILIES
from tests.conftest import run_script
from tests.test_hf import SEQ2SEQ


def builtin_families() -> set[str]:
    """The families `import modeling` registers with a transformers adapter (not the tests' toy family)."""
    return {n for n, s in FAMILIES.items() if s.hf is not None and s.build.__module__.startswith("modeling.")}


def test_every_family_row_runs_dry() -> None:
    proc = run_script("benchmarks/model_throughput.py", "--families", "--dry", "--runs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in FAMILIES:
            rows[cells[0]] = cells
    assert set(rows) == builtin_families(), proc.stdout
    for family, (_, hf_class, shape, ours, theirs, ratios, goal) in rows.items():
        assert hf_class and "layers" in shape and goal.startswith(">="), rows[family]
        for cell in (ours, theirs, ratios):
            values = [float(x.replace(",", "")) for x in cell.split("/")]
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values), rows[family]
    assert re.search(r"^\| bert \| BertForMaskedLM \| 2 layers, H 32", proc.stdout, flags=re.M), proc.stdout


GRAD_CASES: dict[str, dict[str, Any]] = {
    "bert": dict(family="bert"),
    "t5": SEQ2SEQ["t5"],  # test_hf's T5 v1.1 shape (untied head, gated tanh GELU, relative bias)
    "bart": dict(family="bart", layer_norm_eps=1e-5),
}


@pytest.mark.parametrize("family", sorted(GRAD_CASES))
def test_training_step_gradients_equal_transformers(family: str) -> None:
    """The benchmarked step's loss and every parameter's gradient (tied embeddings, relative bias, fused
    projections split back) equal transformers' for the same weights and batch (fp32, no dropout)."""
    from modeling.hf import _part, hf_model, to_hf_state_dict
    from tests.test_hf import cfg_of, make

    cfg = cfg_of(**GRAD_CASES[family])
    ours = make(cfg).train()
    theirs = hf_model(ours, cfg).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, cfg.vocab_size, (3, 12), generator=g)
    if cfg.is_seq2seq:
        labels = torch.randint(7, cfg.vocab_size, (3, 7), generator=g)
        dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], 1)
        logits = ours(ids, dec).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        expected = theirs(input_ids=ids, decoder_input_ids=dec, labels=labels).loss
    else:
        labels = torch.where(torch.rand(3, 12, generator=g) < 0.3, ids, torch.full_like(ids, -100))
        out = ours(ids, labels=labels)
        loss = torch.nn.functional.cross_entropy(out.logits, out.targets)
        expected = theirs(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert all(not g.is_sparse for g in grads.values())
    mapped = to_hf_state_dict(grads, _part(cfg, False))
    hf_params = dict(theirs.named_parameters())
    compared = 0
    for name, grad in mapped.items():
        if name in hf_params and hf_params[name].grad is not None:
            torch.testing.assert_close(grad, hf_params[name].grad, msg=name, rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared == len(hf_params), sorted(set(hf_params) - set(mapped))
