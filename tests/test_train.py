"""Real DeepSpeed ZeRO on 2 CPU processes (gloo), launched by torchrun through the `cloze` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_scalars, torchrun_cloze

pytestmark = pytest.mark.slow


def train(dataset_dir: Path, run_dir: Path, *overrides: str, nproc: int = 2):
    proc = torchrun_cloze(
        ["train", "configs/tiny-bert.yaml", f"data.path={dataset_dir}", f"run_dir={run_dir}", *overrides],
        nproc=nproc,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    # A made-up peak of 0.05 TFLOP/s per device so MFU is logged on CPU too; the bar exercises the tqdm callback.
    proc = train(dataset_dir, run, "deepspeed.peak_tflops=0.05", "logging.progress_bar=true")
    assert "20/20" in proc.stderr  # tqdm's final state
    return run


def test_zero2_two_processes_lowers_the_loss(uninterrupted: Path) -> None:
    losses = read_scalars(uninterrupted / "tensorboard", "train/loss")
    assert sorted(losses) == list(range(1, 21))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.3, losses
    ds = json.loads((uninterrupted / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 16
    assert ds["gradient_accumulation_steps"] == 1 and ds["train_micro_batch_size_per_gpu"] == 8
    resolved = (uninterrupted / "config.yaml").read_text()
    assert "grad_accum: 1" in resolved and "vocab_size: 3000" in resolved


def test_tensorboard_has_the_scalars(uninterrupted: Path) -> None:
    """Every scalar docs/training.md names, read back with tensorboard's EventAccumulator."""
    tb = uninterrupted / "tensorboard"
    every_step = (
        "loss",
        "mlm_accuracy",
        "lr",
        "grad_norm",
        "loss_scale",
        "skipped_steps",
        "tokens_per_s",
        "samples_per_s",
        "tflops_per_s_per_device",
        "mfu",
        "step_time_s",
        "data_wait_s",
        "compute_s",
        "memory_gib",
        "consumed_samples",
        "consumed_tokens",
        "skipped_samples",
    )
    for name in every_step:
        assert sorted(read_scalars(tb, f"train/{name}")) == list(range(1, 21)), name
    for tag in ("eval/loss", "eval/mlm_accuracy", "eval/baseline_accuracy", "checkpoint/save_seconds"):
        assert read_scalars(tb, tag), tag
    step_time, wait, compute = (
        read_scalars(tb, f"train/{n}") for n in ("step_time_s", "data_wait_s", "compute_s")
    )
    assert all(
        0 <= wait[s] < step_time[s] and compute[s] == pytest.approx(step_time[s] - wait[s]) for s in wait
    )
    assert 0.1 < read_scalars(tb, "train/memory_gib")[20] < 8  # peak RSS of rank 0, in GiB
    assert read_scalars(tb, "train/consumed_tokens")[20] == 20 * 16 * 64
    mfu, tflops = read_scalars(tb, "train/mfu"), read_scalars(tb, "train/tflops_per_s_per_device")
    assert all(mfu[s] == pytest.approx(tflops[s] / 0.05, rel=1e-4) for s in mfu)
    assert set(read_scalars(tb, "train/loss_scale").values()) == {1.0}
    assert set(read_scalars(tb, "train/skipped_steps").values()) == {0.0}
    lr = read_scalars(tb, "train/lr")
    assert lr[10] == pytest.approx(1e-3) and lr[5] == pytest.approx(6e-4) and lr[20] == pytest.approx(0.0)
    assert sorted(read_scalars(tb, "eval/loss")) == [10, 20]


def test_checkpoints_are_complete_and_pruned(uninterrupted: Path) -> None:
    ck = uninterrupted / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step00000020"
    tags = sorted(p.name for p in ck.iterdir() if p.is_dir())
    assert tags == ["step00000010", "step00000020"]
    for t in tags:
        assert (ck / t / "COMPLETE").is_file()
        meta = json.loads((ck / t / "checkpoint.json").read_text())
        assert {
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        } <= set(meta["files"])


def test_stop_and_resume_reproduces_the_uninterrupted_losses(
    tmp_path: Path, dataset_dir: Path, uninterrupted: Path
) -> None:
    run = tmp_path / "run"
    first = train(dataset_dir, run, "trainer.stop_after_steps=7", "checkpoint.every_steps=0")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000007"
    assert "resumed" not in first.stdout
    second = train(dataset_dir, run, "checkpoint.every_steps=0")
    assert "resumed from" in second.stdout and "at step 7" in second.stdout
    expected = read_scalars(uninterrupted / "tensorboard", "train/loss")
    got = read_scalars(run / "tensorboard", "train/loss")
    assert sorted(got) == list(range(1, 21))
    # Exactly equal: same data order, same dropout masks (derived from seed, step, rank), same optimizer state.
    assert got == expected


@pytest.mark.parametrize("stage", [1, 3])
def test_exact_resume_under_zero_stage(tmp_path: Path, dataset_dir: Path, stage: int) -> None:
    """ZeRO-1 and ZeRO-3 (ZeRO-2 above): stop at step 4 + resume == uninterrupted, with dropout on. ZeRO-3 runs with
    activation checkpointing (parameters partitioned across the 2 ranks, blocks recomputed in backward,
    non-reentrant): its loss falls and each rank writes its own model-states file."""
    common = (
        f"deepspeed.zero_stage={stage}",
        f"model.activation_checkpointing={'true' if stage == 3 else 'false'}",
        "trainer.max_steps=12",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
    )
    full, part = tmp_path / "full", tmp_path / "part"
    train(dataset_dir, full, *common)
    train(dataset_dir, part, *common, "trainer.stop_after_steps=4")
    resumed = train(dataset_dir, part, *common)
    assert "at step 4" in resumed.stdout
    expected = read_scalars(full / "tensorboard", "train/loss")
    assert sorted(expected) == list(range(1, 13))
    assert read_scalars(part / "tensorboard", "train/loss") == expected
    if stage == 3:
        assert sum(expected[s] for s in (10, 11, 12)) / 3 < sum(expected[s] for s in (1, 2, 3)) / 3 - 0.2
        meta = json.loads((full / "checkpoints" / "step00000012" / "checkpoint.json").read_text())
        ranks = {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"}
        assert ranks <= set(meta["files"])


def test_optimizer_offload_gives_the_same_losses(
    tmp_path: Path, dataset_dir: Path, uninterrupted: Path
) -> None:
    """ZeRO-Offload (optimizer states and step on the CPU side) is the same arithmetic as ZeRO-2 without it."""
    run = tmp_path / "offload"
    train(dataset_dir, run, "deepspeed.offload_optimizer=true", "trainer.stop_after_steps=6")
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    got = read_scalars(run / "tensorboard", "train/loss")
    expected = read_scalars(uninterrupted / "tensorboard", "train/loss")
    assert sorted(got) == list(range(1, 7))
    for s in got:
        assert got[s] == pytest.approx(expected[s], rel=1e-5), (s, got[s], expected[s])
