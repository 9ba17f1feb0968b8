"""Checkpoints that cannot be trusted are never used silently: damaged files, crashes mid-save, broken `latest`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_scalars
from tests.conftest import train_tiny_bert as train
from tests.faults import CRASH_ENV, CRASH_EXIT, HASH_LOG_ENV
from trainer.checkpoint import COMPLETE, CheckpointError, find_resume


def make_tag(root: Path, name: str, complete: bool = True) -> None:
    (root / name).mkdir(parents=True)
    if complete:
        (root / name / COMPLETE).write_text(name)


def test_find_resume_rules(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    assert find_resume(root) is None  # nothing yet: a fresh start
    root.mkdir()
    assert find_resume(root) is None
    make_tag(root, ".tmp-step00000005", complete=False)  # a crash before the commit: ignored
    assert find_resume(root) is None
    make_tag(root, "step00000010", complete=False)
    with pytest.raises(CheckpointError, match="step00000010.*none is complete"):
        find_resume(root)
    make_tag(root, "step00000005")
    assert find_resume(root) == "step00000005"  # no `latest`: the newest complete one
    (root / "latest").write_text("")
    with pytest.raises(CheckpointError, match="latest is empty"):
        find_resume(root)
    (root / "latest").write_text("step00000099\n")
    with pytest.raises(CheckpointError, match="names 'step00000099', which does not exist"):
        find_resume(root)
    (root / "latest").write_text("step00000005\n")
    make_tag(root, "step00000007")  # renamed, but the crash came before `latest` was replaced
    assert find_resume(root) == "step00000007"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = train(dataset_dir, run, "checkpoint.every_steps=5")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


@pytest.mark.slow
def test_crash_in_the_middle_of_a_save(tmp_path: Path, dataset_dir: Path, reference: Path) -> None:
    """A rank dies while writing its checkpoint files: rank 1 in the first save (nothing committed), then, in the
    relaunch, rank 0 in a later one (the earlier checkpoint stays `latest`); the next relaunch resumes exactly."""
    run = tmp_path / "run"
    ck = run / "checkpoints"
    faults = ("checkpoint.every_steps=5", "--plugin", "tests.faults")
    crashed = train(dataset_dir, run, *faults, "trainer.stop_after_steps=10", **{CRASH_ENV: "1:5"})
    assert crashed.returncode != 0
    # The save at step 5 crashed: nothing committed, `latest` never written, the partial tag left aside.
    assert not (ck / "latest").exists() and not (ck / "step00000005").exists()
    assert (ck / ".tmp-step00000005").is_dir()
    # The relaunch starts from scratch over the partial tag; its save at step 5 completes, rank 0 dies in step 10's.
    crashed = train(dataset_dir, run, *faults, "trainer.stop_after_steps=14", **{CRASH_ENV: "0:10"})
    assert crashed.returncode != 0
    assert "resumed from" not in crashed.stdout
    assert (ck / "latest").read_text().strip() == "step00000005"
    assert (ck / ".tmp-step00000010").is_dir() and not (ck / "step00000010").exists()
    witness = tmp_path / "hashed"
    witness.mkdir()
    resumed = train(
        dataset_dir,
        run,
        "checkpoint.every_steps=5",
        "--plugin",
        "tests.faults",
        **{HASH_LOG_ENV: str(witness)},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 5" in resumed.stdout
    assert read_scalars(run / "tensorboard", "train/loss") == read_scalars(
        reference / "tensorboard", "train/loss"
    )
    # Scale (issue 19): each rank hashed only its own files, each file once, on resume and on save.
    hashed = {r: (witness / f"rank{r}.txt").read_text().split("\n")[:-1] for r in (0, 1)}
    model, optim = "mp_rank_00_model_states.pt", "zero_pp_rank_{}_mp_rank_00_optim_states.pt"
    for tag in ("step00000005", ".tmp-step00000010", ".tmp-step00000015", ".tmp-step00000020"):
        assert sorted(x for x in hashed[0] if x.startswith(tag + " ")) == [
            f"{tag} {model}",
            f"{tag} {optim.format(0)}",
        ]
        assert [x for x in hashed[1] if x.startswith(tag + " ")] == [f"{tag} {optim.format(1)}"]
    assert len(hashed[0]) == 8 and len(hashed[1]) == 4


def _damaged_copy(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "result.json").unlink()
    return run, run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


@pytest.mark.slow
def test_flipped_byte_is_an_error_naming_the_file(tmp_path: Path, dataset_dir: Path, reference: Path) -> None:
    run, tag = _damaged_copy(reference, tmp_path)
    victim = tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    proc = train(dataset_dir, run, "trainer.max_steps=25")
    assert proc.returncode != 0
    assert f"checkpoint file {victim} fails its sha256 check" in proc.stderr
    assert not (run / "checkpoints" / "step00000025").exists()


@pytest.mark.slow
def test_deleted_rank_file_is_an_error_naming_it(tmp_path: Path, dataset_dir: Path, reference: Path) -> None:
    run, tag = _damaged_copy(reference, tmp_path)
    victim = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    victim.unlink()
    proc = train(dataset_dir, run, "trainer.max_steps=25")
    assert proc.returncode != 0
    assert f"checkpoint file {victim} is missing" in proc.stderr


def test_crash_exit_code_is_distinct() -> None:
    assert CRASH_EXIT not in (0, 1, 2)


def _start_until(dataset_dir: Path, run: Path, step: int):
    """Start a 2-rank run (checkpoints every 5 steps, a log line every step); return it once `step` is logged,
    with the pid of its rank-1 worker."""
    import re
    import subprocess
    import time

    from launch.demo import torchrun_command
    from tests.conftest import ROOT, cloze_env

    cmd = torchrun_command(
        2,
        [
            "train",
            "configs/tiny-bert.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={run}",
            "trainer.eval_every=0",
            "checkpoint.every_steps=5",
            "logging.log_every=1",
        ],
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=cloze_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.time() + 240
    for line in proc.stdout:
        m = re.match(r"step\s+(\d+)/", line)
        if m and int(m.group(1)) >= step:
            break
        assert time.time() < deadline, f"training did not reach step {step}"
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    rank1 = next(p for p in children if b"RANK=1" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"))
    return proc, rank1


@pytest.mark.slow
def test_usr1_to_one_rank_saves_on_all_ranks_and_exits_for_requeue(
    tmp_path: Path, dataset_dir: Path, reference: Path
) -> None:
    import os
    import signal

    from trainer.components import EXIT_REQUEUE

    run = tmp_path / "run"
    proc, rank1 = _start_until(dataset_dir, run, 11)
    os.kill(rank1, signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0  # torchrun reports its workers' exit code
    assert re.search(rf"exitcode\s*:\s*{EXIT_REQUEUE}\b", err), err[-2000:]
    stopped = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 11 <= stopped < 20
    resumed = train(dataset_dir, run, "checkpoint.every_steps=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stdout
    assert read_scalars(run / "tensorboard", "train/loss") == read_scalars(
        reference / "tensorboard", "train/loss"
    )


@pytest.mark.slow
def test_kill_9_of_one_rank_then_relaunch_resumes_exactly(
    tmp_path: Path, dataset_dir: Path, reference: Path
) -> None:
    import os
    import signal

    run = tmp_path / "run"
    proc, rank1 = _start_until(dataset_dir, run, 12)  # past the checkpoint of step 10
    os.kill(rank1, signal.SIGKILL)
    proc.communicate(timeout=240)
    assert proc.returncode != 0
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest in ("step00000010", "step00000015")
    resumed = train(dataset_dir, run, "checkpoint.every_steps=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {int(latest.removeprefix('step'))}" in resumed.stdout
    assert read_scalars(run / "tensorboard", "train/loss") == read_scalars(
        reference / "tensorboard", "train/loss"
    )


class _Payload:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_pickle_payload_in_a_checkpoint_is_refused_and_runs_nothing(
    tmp_path: Path, dataset_dir: Path, reference: Path
) -> None:
    import json

    import torch

    from data_pipeline.tokenizer import sha256_file

    run, tag = _damaged_copy(reference, tmp_path)
    marker = tmp_path / "pwned"
    victim = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _Payload(marker)}, victim)
    # The attacker also rewrote the manifest, so sizes and hashes match: only the unpickling check stands.
    meta_path = tag / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][victim.name] = {"bytes": victim.stat().st_size, "sha256": sha256_file(victim)}
    meta_path.write_text(json.dumps(meta))
    proc = train(dataset_dir, run, "trainer.max_steps=25")
    assert proc.returncode != 0
    assert f"checkpoint file {victim} cannot be loaded safely" in proc.stderr and "system" in proc.stderr
    assert not marker.exists(), "the payload ran"
    assert not (run / "checkpoints" / "step00000025").exists()


@pytest.mark.slow
def test_universal_conversion_two_ranks_to_one(tmp_path: Path, dataset_dir: Path) -> None:
    """Stop a 2-rank ZeRO-2 run at step 5, convert, finish on 1 rank with twice the accumulation: same global batches
    (the loader is elastic), losses within 1e-5 relative of the uninterrupted 2-rank run (dropout off: its masks
    are drawn per rank)."""
    from tests.conftest import run_cloze

    common = (
        "model.hidden_dropout=0.0",
        "model.attention_dropout=0.0",
        "trainer.max_steps=10",
        "checkpoint.every_steps=0",
    )
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(dataset_dir, full, *common).returncode == 0
    assert train(dataset_dir, part, *common, "trainer.stop_after_steps=5").returncode == 0
    converted = run_cloze(["convert", str(part), "--to-universal"])
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert (part / "checkpoints" / "latest").read_text().strip() == "step00000005-universal"
    one = run_cloze(
        [
            "train",
            "configs/tiny-bert.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={part}",
            "trainer.eval_every=0",
            *common,
        ]
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "at step 5" in one.stdout
    import json

    assert json.loads((part / "ds_config.json").read_text())["gradient_accumulation_steps"] == 2
    expected = read_scalars(full / "tensorboard", "train/loss")
    got = read_scalars(part / "tensorboard", "train/loss")
    assert sorted(got) == list(range(1, 11))
    for s in range(6, 11):
        assert got[s] == pytest.approx(expected[s], rel=1e-5), (s, got[s], expected[s])


class _Crash(BaseException):
    """The process dying at this point (raised from a monkeypatched file operation)."""


def _commit_files(root: Path, tag: str, payload: str) -> None:
    """Commit a checkpoint `tag` holding one file with `payload`, as a save does after DeepSpeed wrote it."""
    from trainer import checkpoint as ckpt

    tmp = root / (ckpt.TMP_PREFIX + tag)
    tmp.mkdir(parents=True)
    (tmp / "weights.pt").write_text(payload)
    ckpt._commit(root, tmp, tag, {"step": ckpt.step_of(tag), "expected": []})


def test_crash_while_replacing_a_checkpoint_of_the_same_tag_keeps_latest_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-saving the tag `latest` names, the process dies after the old directory is set aside and before the new
    one is renamed in: `latest` still leads to a complete checkpoint (the old one, put back on resume)."""
    import os

    from trainer import checkpoint as ckpt

    root = tmp_path / "ck"
    _commit_files(root, "step00000010", "old")
    real = os.replace

    def dies_renaming_the_new_one_in(src: str | Path, dst: str | Path) -> None:
        if Path(src).name == ckpt.TMP_PREFIX + "step00000010":
            raise _Crash
        real(src, dst)

    monkeypatch.setattr(os, "replace", dies_renaming_the_new_one_in)
    with pytest.raises(_Crash):
        _commit_files(root, "step00000010", "new")
    monkeypatch.undo()
    assert (root / "latest").read_text().strip() == "step00000010"
    assert find_resume(root) == "step00000010"
    ckpt.verify(root / "step00000010", hashes=True)
    assert (root / "step00000010" / "weights.pt").read_text() == "old"


def test_crash_while_deleting_the_replaced_checkpoint_then_prune_removes_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies deleting the old copy, after `latest` moved: the new checkpoint is the one resumed, and the
    next prune deletes the leftover and every other stale `.tmp-*` directory (a crashed save), as documented."""
    from trainer import checkpoint as ckpt

    root = tmp_path / "ck"
    _commit_files(root, "step00000010", "old")
    real = shutil.rmtree

    def dies_deleting_the_old_copy(path: str | Path, *args: object, **kwargs: object) -> None:
        if Path(path).name == ckpt.ASIDE_PREFIX + "step00000010" and Path(path).exists():
            raise _Crash
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "rmtree", dies_deleting_the_old_copy)
    with pytest.raises(_Crash):
        _commit_files(root, "step00000010", "new")
    monkeypatch.undo()
    assert find_resume(root) == "step00000010"
    assert (root / "step00000010" / "weights.pt").read_text() == "new"
    leftover = root / (ckpt.ASIDE_PREFIX + "step00000010")
    # Its COMPLETE marker went first: never mistaken for a complete checkpoint.
    assert leftover.is_dir() and not (leftover / COMPLETE).exists()
    (root / ".tmp-step00000015").mkdir()  # a save that crashed before its commit
    ckpt.prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step00000010"]
