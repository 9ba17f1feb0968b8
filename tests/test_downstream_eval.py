"""`cloze finetune` / `cloze evaluate` on a real cloze run (2-rank ZeRO-2 tiny BERT): scores of every checkpoint in
the run's TensorBoard at the checkpoint steps, a run directory and its export fine-tune alike, `--compare`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import read_scalars, run_cloze, train_tiny_bert
from tests.test_finetune import sst2

RECIPE = ["--seeds", "1", "--epochs", "1", "--batch-size", "8", "--max-len", "24", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def run(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("downstream") / "run"
    p = train_tiny_bert(dataset_dir, d, "trainer.max_steps=4", "checkpoint.every_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    return d


def test_every_checkpoint_writes_downstream_scalars_at_checkpoint_steps(run: Path, tmp_path: Path) -> None:
    task = sst2(tmp_path / "sst2")
    p = run_cloze(["evaluate", str(run), "--tasks", str(task), "--every-checkpoint", *RECIPE])
    assert p.returncode == 0, p.stderr[-3000:]
    for metric in ("accuracy", "f1", "matthews"):
        scalars = read_scalars(run / "tensorboard", f"downstream/sst2/{metric}")
        assert sorted(scalars) == [2, 4], (metric, scalars)
    for tag in ("step00000002", "step00000004"):
        res = json.loads((run / "downstream" / tag / "sst2" / "results.json").read_text())
        assert res["step"] == int(tag[4:])
        assert read_scalars(run / "tensorboard", "downstream/sst2/accuracy")[res["step"]] == pytest.approx(
            res["mean"]["accuracy"]
        )
    # --compare: a table and a PNG chart of the downstream scores and the final losses
    chart = tmp_path / "cmp.png"
    p = run_cloze(["evaluate", "--compare", str(run), str(run), "--chart", str(chart)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sst2 (accuracy)" in p.stdout and "eval/loss" in p.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_directory_and_its_export_fine_tune_alike(run: Path, tmp_path: Path) -> None:
    from launch.downstream import run_finetune
    from launch.export import export_run

    task = str(sst2(tmp_path / "sst2"))
    export_run(run, tmp_path / "hf")
    recipe = dict(seeds=1, epochs=1, batch_size=8, max_len=24, lr=[1e-3])
    a = run_finetune(str(run), [task], tmp_path / "a", recipe, log=lambda _: None)["sst2"]
    b = run_finetune(str(tmp_path / "hf"), [task], tmp_path / "b", recipe, log=lambda _: None)["sst2"]
    assert a["step"] == 4 and b["step"] is None
    assert a["seeds"]["0"] == pytest.approx(b["seeds"]["0"], abs=1e-6)
    assert json.loads((tmp_path / "a" / "results.json").read_text())["seeds"] == a["seeds"]


def test_bad_task_fails_before_loading_the_checkpoint(tmp_path: Path) -> None:
    task = sst2(tmp_path / "sst2")
    (task / "dev.tsv").write_text("sentence1\tlabel\nfine\tmaybe\n")
    p = run_cloze(["finetune", str(tmp_path / "no-such-run"), "--task", str(task)])
    assert p.returncode == 2
    assert f"{task / 'dev.tsv'}:2: label 'maybe' is not one of the declared labels" in p.stderr


def test_submit_eval_tasks_adds_a_dependent_evaluation_job(tmp_path: Path, dataset_dir: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho 4242\n')
    fake.chmod(0o755)
    run = tmp_path / "run"
    task = sst2(tmp_path / "sst2")
    p = run_cloze(
        ["submit", "configs/tiny-bert.yaml", f"data.path={dataset_dir}", f"run_dir={run}"]
        + ["--eval-tasks", "builtin:docstring-kind", str(task)],
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "submitted evaluation job 4242 (afterok:4242)" in p.stdout
    pretrain, evaluate = calls.read_text().splitlines()
    assert pretrain.endswith("pretrain.sbatch")
    assert "--dependency=afterok:4242" in evaluate and evaluate.endswith("evaluate.sbatch")
    script = (run / "slurm" / "evaluate.sbatch").read_text()
    assert f"launch.cli evaluate {run} --every-checkpoint --tasks builtin:docstring-kind {task}" in script
    assert "{{" not in script
    assert subprocess.run(["bash", "-n", str(run / "slurm" / "evaluate.sbatch")]).returncode == 0
