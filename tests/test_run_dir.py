"""A run directory stands alone: `cloze train` records absolute paths and keeps a copy of the tokenizer, so
`cloze export` run months later from any directory writes the tokenizer; export without one is an error unless
`--no-tokenizer` is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from data_pipeline.manifest import read_manifest
from data_pipeline.tokenizer import Tokenizer, sha256_file
from launch.export import export_run, find_tokenizer
from modeling.hf import ExportError
from tests.conftest import ROOT, run_cloze
from trainer.config import RunConfig, config_from_dict

transformers = pytest.importorskip("transformers")


def test_saved_config_has_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict(
        {"run_dir": "runs/x", "data": {"path": "../shards"}, "slurm": {"python": ".venv/bin/python"}}
    )
    saved = yaml.safe_load(cfg.to_yaml_absolute())
    assert saved["run_dir"] == str(tmp_path / "runs" / "x")
    assert saved["data"]["path"] == str(tmp_path.parent / "shards")
    assert saved["slurm"]["python"] == str(tmp_path / ".venv" / "bin" / "python")
    assert cfg.run_dir == "runs/x" and cfg.data.path == "../shards"  # the loaded config is left as it was
    bare = RunConfig(run_dir="/abs/run")
    bare.slurm.python = "python3"  # a command found on PATH stays a command
    again = yaml.safe_load(bare.to_yaml_absolute())
    assert (
        again["run_dir"] == "/abs/run"
        and again["slurm"]["python"] == "python3"
        and again["data"]["path"] == ""
    )


def test_export_from_another_directory_writes_the_tokenizer(
    tmp_path: Path, dataset_dir: Path, monkeypatch
) -> None:
    train_cwd, export_cwd = tmp_path / "train", tmp_path / "elsewhere"
    train_cwd.mkdir()
    export_cwd.mkdir()
    (train_cwd / "data").symlink_to(dataset_dir)  # relative paths, as a user types them
    proc = run_cloze(
        [
            "train",
            str(ROOT / "configs/tiny-bert.yaml"),
            "data.path=data",
            "run_dir=run",
            "trainer.max_steps=2",
            "trainer.eval_every=0",
            "checkpoint.every_steps=0",
            "logging.tensorboard=false",
            "data.num_workers=0",
        ],
        cwd=train_cwd,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = train_cwd / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["run_dir"] == str(run) and saved["data"]["path"] == str(train_cwd / "data")
    copy = run / "tokenizer" / "tokenizer.model"
    manifest = read_manifest(dataset_dir)
    assert sha256_file(copy) == manifest.tokenizer["sha256"]
    meta = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert meta["special_tokens"] == manifest.special_tokens and meta["sentinel_ids"] == manifest.sentinel_ids
    assert meta["packing"] == "encoder"

    # Months later, from elsewhere, with the dataset gone: the run directory is enough.
    (train_cwd / "data").unlink()
    exported = run_cloze(["export", str(run), "--out", "hf"], cwd=export_cwd, HF_HUB_OFFLINE="1")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "model + tokenizer" in exported.stdout
    out = export_cwd / "hf"
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    tok = Tokenizer(copy)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Return the number of items in the container."
    assert hf(text)["input_ids"] == [tok.special.cls, *tok.encode([text])[0], tok.special.sep]

    # Without the run's copy the recorded dataset path is the fallback; with neither, export refuses by name.
    shutil.rmtree(run / "tokenizer")
    cfg = config_from_dict(saved)
    cfg.data.path = str(dataset_dir)
    assert find_tokenizer(run, cfg).model == dataset_dir / "tokenizer.model"
    with pytest.raises(ExportError, match="--no-tokenizer") as err:
        export_run(run, tmp_path / "nothing")
    assert str(run / "tokenizer" / "tokenizer.model") in str(err.value)
    assert not (tmp_path / "nothing").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    written = export_run(run, tmp_path / "model-only", tokenizer=False)
    assert (written[0] / "model.safetensors").is_file() and not (written[0] / "tokenizer.json").exists()
