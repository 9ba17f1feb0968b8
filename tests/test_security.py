"""No checkpoint runs code through any command that reads one, and trust comes only from the command line; a
checkpoint that does not fit the run (another world size, another model shape) is named, not a traceback.

One real 2-rank ZeRO-2 checkpoint (and its universal conversion) is built once per module; every case plants a
pickle payload (raw pickle or torch's zip format) in a copy, rewrites checkpoint.json so that sizes and hashes match
(the attacker can write the whole directory), and runs a command: the payload must not run (it would create a
marker file) and the command must name the file it refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from data_pipeline.tokenizer import sha256_file
from tests.conftest import run_cloze, train_tiny_bert

pytestmark = pytest.mark.slow

TAG = "step00000002"
UNIVERSAL_TAG = TAG + "-universal"


class _Payload:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """A 2-rank ZeRO-2 run directory with one checkpoint, step 2."""
    run = tmp_path_factory.mktemp("sec") / "run"
    proc = train_tiny_bert(dataset_dir, run, "trainer.max_steps=2", "checkpoint.every_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def universal(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> Path:
    """A copy of `trained` whose `latest` names the universal conversion of its checkpoint."""
    run = tmp_path_factory.mktemp("secu") / "run"
    shutil.copytree(trained, run)
    proc = run_cloze(["convert", str(run), "--to-universal"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def plant(tag_dir: Path, name: str, fmt: str, marker: Path) -> Path:
    """Replace `tag_dir/name` by a payload in `fmt` (raw pickle or torch zip); checkpoint.json rewritten to match."""
    victim = tag_dir / name
    obj = {"module": _Payload(marker), "optimizer_state_dict": _Payload(marker)}
    if fmt == "zip":
        torch.save(obj, victim)
    else:
        victim.write_bytes(pickle.dumps(obj, protocol=2))
    meta_path = tag_dir / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][name] = {"bytes": victim.stat().st_size, "sha256": sha256_file(victim)}
    meta_path.write_text(json.dumps(meta))
    return victim


def resume(run: Path, dataset_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "configs/tiny-bert.yaml",
        f"data.path={dataset_dir}",
        f"run_dir={run}",
        "trainer.eval_every=0",
        "trainer.max_steps=4",
        *extra,
    ]


def _universal_file(tag_dir: Path, kind: str) -> str:
    return str(next(tag_dir.glob(f"zero/*/{kind}")).relative_to(tag_dir))


CASES = [
    # (command, source run, file, format)
    ("train", "trained", "mp_rank_00_model_states.pt", "zip"),
    ("train", "trained", "zero_pp_rank_1_mp_rank_00_optim_states.pt", "raw"),
    ("export", "trained", "mp_rank_00_model_states.pt", "raw"),
    ("export", "trained", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zip"),
    ("convert", "trained", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zip"),
    ("convert", "trained", "mp_rank_00_model_states.pt", "raw"),
    ("train", "universal", "fp32.pt", "zip"),
    ("train", "universal", "exp_avg.pt", "raw"),
    ("train", "universal", "mp_rank_00_model_states.pt", "zip"),
]


@pytest.mark.parametrize(("command", "source", "name", "fmt"), CASES)
def test_planted_payload_runs_through_no_command(
    tmp_path: Path,
    dataset_dir: Path,
    request: pytest.FixtureRequest,
    command: str,
    source: str,
    name: str,
    fmt: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(source), run)
    tag_dir = run / "checkpoints" / (UNIVERSAL_TAG if source == "universal" else TAG)
    if name in ("fp32.pt", "exp_avg.pt"):
        name = _universal_file(tag_dir, name)
    marker = tmp_path / "pwned"
    victim = plant(tag_dir, name, fmt, marker)
    # The run directory's own config.yaml claims trust: it must not count (it is inside what is being checked).
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("trusted: false", "trusted: true"))
    assert "trusted: true" in config.read_text()
    if command == "train":
        proc = run_cloze(resume(run, dataset_dir))
    elif command == "export":
        proc = run_cloze(["export", str(run), "--out", str(tmp_path / "hf")])
    else:
        proc = run_cloze(["convert", str(run), "--to-universal"])
    assert not marker.exists(), "the payload ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"checkpoint file {victim} cannot be loaded safely" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "hf").exists()
    assert not (run / "checkpoints" / UNIVERSAL_TAG).exists() or source == "universal"
    assert not (run / "checkpoints" / "step00000004").exists()


def test_the_planted_payloads_are_live(tmp_path: Path) -> None:
    """The payloads the tests plant do run code when unpickled without restriction (as DeepSpeed's loaders do)."""
    for fmt in ("zip", "raw"):
        tag = tmp_path / fmt
        tag.mkdir()
        (tag / "checkpoint.json").write_text(json.dumps({"files": {}}))
        marker = tmp_path / f"pwned-{fmt}"
        victim = plant(tag, "x.pt", fmt, marker)
        if fmt == "zip":
            torch.load(victim, weights_only=False)
        else:
            pickle.loads(victim.read_bytes())
        assert marker.exists()


def test_a_file_the_metadata_does_not_list_is_refused(tmp_path: Path, trained: Path) -> None:
    """DeepSpeed finds rank files by name pattern: an added, unhashed one is refused before any reading."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    extra = run / "checkpoints" / TAG / "zero_pp_rank_2_mp_rank_00_optim_states.pt"
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, extra)
    proc = run_cloze(["convert", str(run), "--to-universal"])
    assert proc.returncode == 2
    assert f"checkpoint file {extra} is not listed in" in proc.stderr
    assert not marker.exists()


def test_trusted_comes_from_the_command_line_only(tmp_path: Path, trained: Path) -> None:
    """`--trusted` skips the unpickling check (a clean checkpoint exports); a YAML `checkpoint.trusted: true` is
    ignored with a note, and the run directory's config.yaml never records trust."""
    from trainer.config import config_from_dict

    assert "trusted: false" in (trained / "config.yaml").read_text()
    cfg = config_from_dict({"checkpoint": {"trusted": True}}, source="x.yaml")
    assert cfg.checkpoint.trusted is False
    assert config_from_dict({}, ["checkpoint.trusted=true"]).checkpoint.trusted is True
    proc = run_cloze(["export", str(trained), "--out", str(tmp_path / "hf"), "--trusted", "--no-tokenizer"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_resume_on_another_world_size_points_to_convert(
    tmp_path: Path, trained: Path, dataset_dir: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    proc = run_cloze(resume(run, dataset_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"checkpoint {run / 'checkpoints' / TAG} was saved by 2 rank(s)" in proc.stderr
    assert "this run has 1 rank(s)" in proc.stderr
    assert f"cloze convert {run} --to-universal" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "checkpoints" / "step00000004").exists()


def test_resume_with_another_model_shape_names_the_key(
    tmp_path: Path, trained: Path, dataset_dir: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    proc = run_cloze(resume(run, dataset_dir, "model.hidden_size=64", "model.intermediate_size=256"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "parameter bert.embeddings.word_embeddings.weight has shape (3000, 128) in the checkpoint but (3000, 64) "
        "in this model" in proc.stderr
    ), proc.stderr[-3000:]
    assert "model.hidden_size: 128 in the checkpoint, 64 now" in proc.stderr
    assert "Traceback" not in proc.stderr
