"""Engine options and faults on 2 CPU processes (DeepSpeed, gloo): bf16 / fp16, LAMB, optimizer offload, NaN steps
skipped on every rank, a hung rank. Faults are injected by the test plugin tests/faults.py (`--plugin tests.faults`),
told which fault, rank and step through CLOZE_INJECT_* environment variables."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import read_scalars, train_tiny_bert
from trainer.config import ConfigError, load_config
from trainer.optim import Lamb

FAULTS = ("--plugin", "tests.faults")
"""The test plugin that injects the fault the CLOZE_INJECT_* variable names."""


def run(dataset_dir: Path, run_dir: Path, *overrides: str, **env: str):
    return train_tiny_bert(
        dataset_dir, run_dir, "checkpoint.every_steps=0", "logging.log_every=1", *overrides, **env
    )


def assert_only_step_3_skipped(tb: Path) -> None:
    """Of 6 steps, step 3 was skipped (counted from there on), the schedule held there, and every loss is finite."""
    skipped = read_scalars(tb, "train/skipped_steps")
    assert [skipped[s] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    lr = read_scalars(tb, "train/lr")
    assert lr[3] == lr[2] and lr[4] > lr[3]  # the schedule did not advance on the skipped step
    loss = read_scalars(tb, "train/loss")
    assert all(math.isfinite(loss[s]) for s in range(1, 7)), loss  # a NaN update would make later steps NaN


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_lamb_matches_the_paper_update() -> None:
    """One tensor, three steps: our LAMB against the formula written out (Adam moments with bias correction,
    decoupled decay, trust ratio ||w|| / ||update|| clamped to [0.01, 10])."""
    torch.manual_seed(0)
    w = torch.randn(7, 5)
    p = torch.nn.Parameter(w.clone())
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    ref, m, v = w.clone().double(), torch.zeros(7, 5).double(), torch.zeros(7, 5).double()
    for t in range(1, 4):
        g = torch.randn(7, 5)
        p.grad = g.clone()
        opt.step()
        gd = g.double()
        m = 0.9 * m + 0.1 * gd
        v = 0.99 * v + 0.01 * gd * gd
        u = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6) + 0.01 * ref
        ratio = min(max(float(ref.norm() / u.norm()), 0.01), 10.0)
        ref = ref - 0.1 * ratio * u
        torch.testing.assert_close(p.detach().double(), ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(p.detach(), w)


def test_lamb_with_zero_or_bf16_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer.name=lamb needs deepspeed.zero_stage=0.*trust ratio"):
        load_config("configs/tiny-bert.yaml", ["optimizer.name=lamb", "deepspeed.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"precision=bf16"):
        load_config(
            "configs/tiny-bert.yaml",
            ["optimizer.name=lamb", "deepspeed.zero_stage=0", "deepspeed.precision=bf16"],
        )
    with pytest.raises(ConfigError, match=r"deepspeed.offload_optimizer=true needs ZeRO"):
        load_config("configs/tiny-bert.yaml", ["deepspeed.offload_optimizer=true", "deepspeed.zero_stage=0"])


@pytest.mark.slow
def test_lamb_trains_on_two_processes(tmp_path: Path, dataset_dir: Path) -> None:
    r = tmp_path / "lamb"
    ok(run(dataset_dir, r, "optimizer.name=lamb", "optimizer.lr=2e-2", "deepspeed.zero_stage=0"))
    losses = read_scalars(r / "tensorboard", "train/loss")
    assert sorted(losses) == list(range(1, 21))
    assert sum(losses[s] for s in (18, 19, 20)) / 3 < sum(losses[s] for s in (1, 2, 3)) / 3 - 0.3, losses
    gnorm = read_scalars(r / "tensorboard", "train/grad_norm")
    assert len(gnorm) == 20 and all(0 < g < 100 for g in gnorm.values())  # stage 0 reports its norm too


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_trains_and_reports_the_loss_scale(
    tmp_path: Path, dataset_dir: Path, precision: str
) -> None:
    r = tmp_path / precision
    proc = run(dataset_dir, r, f"deepspeed.precision={precision}", "trainer.max_steps=10")
    from deepspeed.accelerator import get_accelerator

    if precision == "fp16" and not get_accelerator().is_fp16_supported():
        # A CPU without oneDNN fp16 (DeepSpeed refuses fp16 there): one clear config error, once, no traceback.
        assert proc.returncode != 0, proc.stderr[-3000:]
        assert proc.stderr.count("deepspeed.precision=fp16: this device") == 1, proc.stderr[-3000:]
        assert proc.stderr.lstrip().startswith("cloze train: error: deepspeed.precision=fp16"), proc.stderr[
            -3000:
        ]
        return
    ok(proc)
    ds = json.loads((r / "ds_config.json").read_text())
    assert ds[precision]["enabled"] is True
    tb = r / "tensorboard"
    losses = read_scalars(tb, "train/loss")
    assert sorted(losses) == list(range(1, 11))
    assert losses[10] < losses[1] - 0.1, losses
    scale = read_scalars(tb, "train/loss_scale")
    # fp16: DeepSpeed's dynamic scaler starts at 2^16 (initial_scale_power); bf16 needs none.
    assert set(scale.values()) == ({65536.0} if precision == "fp16" else {1.0}), scale
    assert read_scalars(tb, "train/skipped_steps")[10] == 0
    meta = json.loads((r / "checkpoints" / "step00000010" / "checkpoint.json").read_text())
    if precision == "bf16":
        assert any(f.startswith("bf16_zero_pp_rank_1") for f in meta["files"]), meta["files"]


@pytest.mark.slow
def test_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path, dataset_dir: Path) -> None:
    """Rank 1's loss is NaN at step 3 (of 6, 2 micro-batches per step): both ranks skip it, nothing is updated,
    the schedule holds, the count is logged and saved, and training goes on with finite losses."""
    r = tmp_path / "nan"
    proc = run(
        dataset_dir,
        r,
        "trainer.max_steps=6",
        "trainer.global_batch_size=32",
        *FAULTS,
        CLOZE_INJECT_NAN="1:3",
    )
    ok(proc)
    assert "step 3: non-finite loss on 1 rank(s); step skipped on every rank" in proc.stdout
    assert_only_step_3_skipped(r / "tensorboard")
    tag = r / "checkpoints" / "step00000006"
    for rank in (0, 1):  # each rank's own optimizer shard took 5 steps, not 6
        states = torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)
        steps = {
            float(s["step"]) for s in states["optimizer_state_dict"]["base_optimizer_state"]["state"].values()
        }
        assert steps == {5.0}, (rank, steps)
    model_states = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)
    assert model_states["cloze_skipped_steps"] == 1


@pytest.mark.parametrize("stage", [0, 3])
def test_nan_gradients_with_a_finite_loss_are_skipped_on_every_rank(
    tmp_path: Path, dataset_dir: Path, stage: int
) -> None:
    """Rank 1's loss is finite at step 3 but its gradients are NaN, so after the all-reduce the gradient norm is NaN
    everywhere. At stage 0 in fp32 DeepSpeed would step on it (and poison every weight): the engine's own norm check
    skips it. At stage 3 DeepSpeed's check does. Either way: skipped on both ranks, counted, said, weights finite."""
    r = tmp_path / f"nan-grad-{stage}"
    proc = run(
        dataset_dir,
        r,
        "trainer.max_steps=6",
        f"deepspeed.zero_stage={stage}",
        *FAULTS,
        CLOZE_INJECT_NAN_GRAD="1:3",
    )
    ok(proc)
    assert "step 3: non-finite gradient norm; step skipped on every rank (1 in a row)" in proc.stdout
    assert_only_step_3_skipped(r / "tensorboard")
    norm = read_scalars(r / "tensorboard", "train/grad_norm")  # a NaN norm is not logged; DeepSpeed's inf is
    finite = [s for s in range(1, 7) if math.isfinite(norm.get(s, math.nan))]
    assert finite == [1, 2, 4, 5, 6]


def test_stage_0_clips_like_deepspeed(tmp_path: Path, dataset_dir: Path) -> None:
    """At stage 0 in fp32 the engine clips from its own norm (DeepSpeed's clip there keeps no norm and has no NaN
    check). With a clip that binds on every step, its losses and norms equal ZeRO-1's, where DeepSpeed clips."""
    runs = {}
    for stage in (0, 1):
        r = tmp_path / f"clip-{stage}"
        ok(
            run(
                dataset_dir,
                r,
                "trainer.max_steps=5",
                "optimizer.grad_clip=0.05",
                f"deepspeed.zero_stage={stage}",
            )
        )
        runs[stage] = {k: read_scalars(r / "tensorboard", f"train/{k}") for k in ("loss", "grad_norm")}
        assert json.loads((r / "ds_config.json").read_text())["gradient_clipping"] == (
            0.0 if stage == 0 else 0.05
        )
    # The clip binds on every step: without it the updates would differ.
    assert min(runs[0]["grad_norm"].values()) > 0.05 * 4
    # ZeRO-1's own norm differs from torch's by ~2e-5 relative (its reduction order); the losses come out equal.
    for k, rel in (("loss", 1e-5), ("grad_norm", 1e-4)):
        assert runs[0][k].keys() == runs[1][k].keys() == set(range(1, 6))
        for s in range(1, 6):
            assert runs[0][k][s] == pytest.approx(runs[1][k][s], rel=rel), (k, s, runs[0][k], runs[1][k])


@pytest.mark.slow
def test_nan_steps_in_a_row_stop_the_run_with_a_clear_error(tmp_path: Path, dataset_dir: Path) -> None:
    r = tmp_path / "nans"
    proc = run(
        dataset_dir,
        r,
        "trainer.max_steps=20",
        "trainer.max_nonfinite_steps=3",
        "checkpoint.every_steps=2",
        *FAULTS,
        CLOZE_INJECT_NAN="0:5:99",
    )
    assert proc.returncode != 0
    assert re.search(r"NonFiniteLossError: 3 steps in a row \(up to step 7\) had a NaN/Inf loss", proc.stderr)
    assert "Lower optimizer.lr" in proc.stderr
    # Checkpoints stay valid to resume from: the one at step 6 holds step 4's weights (5 and 6 were skipped).
    assert (r / "checkpoints" / "latest").read_text().strip() == "step00000006"
    assert (r / "checkpoints" / "step00000006" / "COMPLETE").is_file()


@pytest.mark.slow
def test_a_hung_rank_makes_every_rank_exit_within_the_timeout(tmp_path: Path, dataset_dir: Path) -> None:
    """Rank 1 stops making progress at step 3, outside any collective; rank 0 waits in the step's all-reduce.
    With a 15 s timeout both must end non-zero, and soon: not wait for the 30-minute default."""
    r = tmp_path / "hang"
    t0 = time.monotonic()
    proc = run(
        dataset_dir,
        r,
        "deepspeed.timeout_minutes=0.25",
        "trainer.max_steps=10",
        *FAULTS,
        CLOZE_INJECT_HANG="1:3",
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "step      2/10" in out and "step      3/10" not in out
    assert "cloze: rank 1 made no progress for" in out and "(step 3)" in out
    codes = dict(re.findall(r"rank\s*:\s*(\d) \(local_rank: \d\)\s*\n\s*exitcode\s*:\s*(-?\d+)", out))
    assert set(codes) == {"0", "1"} and all(int(c) != 0 for c in codes.values()), out[-3000:]
    assert elapsed < 120, elapsed  # start-up (~20 s) + the 15 s timeout + teardown, far from 30 minutes


def test_a_build_lock_left_by_a_killed_compile_is_an_error_not_a_hang(
    tmp_path: Path, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory op under a lock file that torch waits on forever; a
    compile killed half-way leaves the lock. `cloze train` names the stale lock and exits; a young lock (a build
    in progress elsewhere) is left to torch to wait on."""
    import os

    from trainer.engine import STALE_BUILD_LOCK_S, prepare_op_builds

    ext = tmp_path / "ext"
    lock = ext / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ext))
    prepare_op_builds()  # a build in progress: no error
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.raises(ConfigError, match="build lock"):
        prepare_op_builds()
    from tests.conftest import run_cloze

    proc = run_cloze(
        ["train", "configs/tiny-bert.yaml", f"data.path={dataset_dir}", f"run_dir={tmp_path / 'run'}"],
        timeout=120,
        TORCH_EXTENSIONS_DIR=str(ext),
    )
    assert proc.returncode != 0
    assert f"rm {lock}" in proc.stderr, proc.stderr[-3000:]
