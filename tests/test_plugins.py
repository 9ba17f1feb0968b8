"""Training plugins (`cloze train --plugin MODULE[:ATTR]`): the one way test faults reach the loop. Production code
reads no fault variable; a plugin that is not there is an error naming it before anything trains; `cloze submit`
passes plugins on to the job's own command line. The faults themselves are tested where they matter
(test_trainer_engine.py: NaN loss and gradient, hang; test_checkpoint.py: crash in a save; test_slurm.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from launch.cli import main
from tests import faults
from tests.conftest import ROOT, run_cloze
from trainer.callbacks import Callback, load_plugins, overriding
from trainer.config import ConfigError

PRODUCTION = ("trainer", "data_pipeline", "modeling", "launch")


def test_no_production_module_reads_a_fault_variable() -> None:
    names = ["CLOZE_INJECT", faults.NAN_ENV, faults.NAN_GRAD_ENV, faults.HANG_ENV, faults.CRASH_ENV]
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in PRODUCTION
        for path in sorted((ROOT / package).rglob("*"))
        if path.is_file() and path.suffix in (".py", ".sbatch", ".sh", ".yaml")
        for name in names
        if name in path.read_text()
    ]
    assert found == []


def test_the_fault_plugin_installs_only_the_faults_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (faults.NAN_ENV, faults.NAN_GRAD_ENV, faults.HANG_ENV, faults.CRASH_ENV):
        monkeypatch.delenv(env, raising=False)
    assert load_plugins(["tests.faults"]) == []
    monkeypatch.setenv(faults.NAN_ENV, "1:3")
    monkeypatch.setenv(faults.CRASH_ENV, "0")
    cbs = load_plugins(["tests.faults"])
    assert [type(cb) for cb in cbs] == [faults.NaNLoss, faults.CrashInSave]
    # The loop calls a hook only on the callbacks that override it.
    assert overriding(cbs, "on_loss") == cbs[:1]
    assert overriding(cbs, "on_checkpoint_written") == cbs[1:]
    assert overriding(cbs, "on_step_begin") == []
    import torch

    loss = torch.tensor(2.0)
    nan = faults.NaNLoss()
    assert nan.on_loss(3, 0, loss) is loss  # another rank
    assert torch.isnan(nan.on_loss(3, 1, loss)) and nan.on_loss(4, 1, loss) is loss


def test_plugin_errors_name_the_plugin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--plugin tests\.nope: no module named 'tests\.nope'"):
        load_plugins(["tests.nope"])
    with pytest.raises(
        ConfigError, match=r"--plugin tests\.faults:nothing: module 'tests\.faults' has no callable"
    ):
        load_plugins(["tests.faults:nothing"])
    with pytest.raises(
        ConfigError, match=r"--plugin os:getcwd: os\.getcwd\(\) returned '.*', not Callback objects"
    ):
        load_plugins(["os:getcwd"])
    with pytest.raises(ConfigError, match=r"--plugin '': name a module"):
        load_plugins([""])
    # The plugin's own import failing (not the plugin missing) keeps its traceback.
    (tmp_path / "broken_plugin.py").write_text("import no_such_dependency_of_the_plugin\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_plugin"):
            load_plugins(["broken_plugin"])
    finally:
        sys.path.remove(str(tmp_path))
    assert isinstance(faults.Hang(), Callback)


def test_a_missing_plugin_stops_cloze_train_before_anything_trains(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cloze(
        ["train", "configs/tiny-bert.yaml", f"run_dir={run}", "--plugin", "tests.no_such_plugin"]
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "cloze train: error: --plugin tests.no_such_plugin: no module named 'tests.no_such_plugin'"
        in proc.stderr
    )
    assert not run.exists()


def test_submit_passes_plugins_to_the_job_command_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")  # submit checks that the shards exist, not what they hold
    run = tmp_path / "run"
    args = ["submit", "configs/tiny-bert.yaml", f"data.path={data}", f"run_dir={run}", "--dry-run"]
    assert main([*args, "--plugin", "tests.faults", "--plugin", "tests.faults:callbacks"]) == 0
    script = (run / "slurm" / "pretrain.sbatch").read_text()
    train = re.search(r"launch\.cli train (.*)&$", script, re.M)
    assert train, script
    assert train.group(1).rstrip().endswith("--plugin tests.faults --plugin tests.faults:callbacks")
    assert subprocess.run(["bash", "-n", str(run / "slurm" / "pretrain.sbatch")]).returncode == 0
    # Nothing records the plugins where a later run could pick them up.
    assert "tests.faults" not in (run / "slurm" / "pretrain.sbatch").read_text().split("launch.cli train")[0]
    # A plugin that is not there fails at submit time, on the login node, not in the job.
    capsys.readouterr()
    assert main([*args, "--plugin", "tests.nope"]) == 2
    assert "--plugin tests.nope: no module named" in capsys.readouterr().err
