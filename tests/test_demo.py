"""`cloze demo`, a few steps of it: its console shows the evaluation split, and its exported model, loaded in
transformers, scores the same held-out split with the same figures as cloze's evaluation (issue 11).

The demo runs from a wheel installed into a fresh venv (conftest's `installed_cloze`, tests/test_install.py), from a
temporary directory: `pip install .` then `cloze demo --steps 20` works outside the source tree (issue 13)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.loader import EvalStream
from data_pipeline.manifest import read_manifest

from .conftest import read_scalars, run_cloze
from .test_install import installed_env

STEPS = 20


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, installed_cloze: Path) -> tuple[Path, str]:
    out, cwd = tmp_path_factory.mktemp("demo"), tmp_path_factory.mktemp("elsewhere")
    p = subprocess.run(
        [installed_cloze / "bin" / "cloze", "demo", "--out", str(out), "--steps", str(STEPS)],
        cwd=cwd,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, p.stdout


def test_the_installed_demo_ran_its_ranks_and_recipe_from_the_install(
    demo_run: tuple[Path, str], installed_cloze: Path
) -> None:
    _, stdout = demo_run
    (cmd,) = [ln for ln in stdout.splitlines() if ln.startswith("[demo] ") and "torch.distributed.run" in ln]
    assert cmd.startswith(f"[demo] {installed_cloze / 'bin' / 'python'} -m torch.distributed.run"), cmd
    recipe = cmd.split(" train ", 1)[1].split()[0]
    assert recipe.endswith("launch/configs/demo.yaml") and Path(recipe).is_relative_to(installed_cloze), (
        recipe
    )
    assert "[demo] done in " in stdout and f"{STEPS} steps of ZeRO-2 on 2 CPU processes" in stdout


def test_demo_prints_the_split_and_the_verdict(demo_run: tuple[Path, str]) -> None:
    out, stdout = demo_run
    ev = json.loads((out / "run" / "result.json").read_text())["eval"]
    # The whole held-out split, every target once.
    assert (
        ev["eval_samples"]
        == ev["eval_split_samples"]
        == read_manifest(out / "shards").splits["valid"]["samples"]
    )
    assert ev["masked_tokens"] == ev["mask_tokens"] + ev["random_tokens"] + ev["kept_tokens"]
    assert "(the whole held-out split," in stdout
    assert "  [MASK]     accuracy " in stdout and "baseline 1.0000 (copy the input)" in stdout
    assert f"[demo] [MASK]        {ev['mask_accuracy']:>9.4f}{ev['mask_baseline_accuracy']:>10.4f}" in stdout
    assert "the most-frequent-token baseline" in stdout
    train_lines = [ln for ln in stdout.splitlines() if ln.startswith("step ")]
    assert train_lines and not any("baseline" in ln for ln in train_lines)
    tb = out / "run" / "tensorboard"
    assert read_scalars(tb, "eval/mask_accuracy") == {STEPS: pytest.approx(ev["mask_accuracy"])}
    assert read_scalars(tb, "eval/mask_baseline_accuracy") == {
        STEPS: pytest.approx(ev["mask_baseline_accuracy"])
    }
    assert not read_scalars(tb, "train/baseline_accuracy")


def test_export_scores_the_held_out_split_as_cloze_does(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    out, _ = demo_run
    p = run_cloze(["export", str(out / "run"), "--out", str(tmp_path / "hf")])
    assert p.returncode == 0, p.stdout + p.stderr
    ev = json.loads((out / "run" / "result.json").read_text())["eval"]
    mask_id = read_manifest(out / "shards").special_tokens["mask"]

    model = BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    # The same split and the same (seeded) masks as cloze's evaluation, here in one process.
    loss_sum = mask_loss_sum = 0.0
    correct = mask_correct = n = n_mask = 0
    with torch.no_grad():
        for batch in EvalStream(out / "shards", 32, 1, 0, batches=10**6):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            labels = batch["labels"]
            sel = labels != -100
            lg, tg = logits[sel], labels[sel]
            at_mask = batch["input_ids"][sel] == mask_id
            token_loss = F.cross_entropy(lg, tg, reduction="none")
            hit = lg.argmax(-1) == tg
            loss_sum += float(token_loss.sum())
            mask_loss_sum += float(token_loss[at_mask].sum())
            correct += int(hit.sum())
            mask_correct += int(hit[at_mask].sum())
            n += int(sel.sum())
            n_mask += int(at_mask.sum())
    assert (n, n_mask) == (ev["masked_tokens"], ev["mask_tokens"])
    assert loss_sum / n == pytest.approx(ev["loss"], rel=1e-4)
    assert mask_loss_sum / n_mask == pytest.approx(ev["mask_loss"], rel=1e-4)
    # Accuracy: the same argmax up to a near-tie flipped by float rounding.
    assert abs(mask_correct - ev["mask_accuracy"] * n_mask) <= 1
    assert abs(correct - ev["mlm_accuracy"] * n) <= 1
