"""`pip install .` (a wheel, not editable) into a clean environment works outside the source tree (issue 13).

`install_cloze` builds a wheel of the project and installs it into a fresh venv whose only view of the project is
that wheel: the dependencies (torch, deepspeed, ...) come from this interpreter's site-packages through a .pth
file, which adds the directory alone (the editable finder's own .pth in there is not run), so the source tree is
not importable from it. tests/test_demo.py runs `cloze demo` with it from a temporary directory (the `installed_cloze`
fixture in conftest.py: one demo run serves both issues' checks).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT, cloze_env

_NOT_SHIPPED = (".git", ".venv", "runs", "build", "tests", "benchmarks", "docs", "__pycache__", "*.egg-info")
_NOT_SHIPPED += (".mypy_cache", ".ruff_cache", ".pytest_cache", ".whl", ".gl")


def installed_env() -> dict[str, str]:
    """The environment an installed `cloze` runs under in these tests: nothing that could point at the source tree."""
    env = cloze_env()
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV"):
        env.pop(key, None)
    # The new venv runs this venv's torch and deepspeed: their C++ ops built here serve it too (trainer/engine.py
    # would otherwise build them anew, a minute or more, into the new venv's own torch_extensions).
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    return env


def install_cloze(tmp: Path) -> Path:
    """Build a wheel of the project (from a copy of it, so the checkout gets no build/ or egg-info) and install it
    with --no-deps into a new venv under `tmp`; returns the venv's directory."""
    src, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
    # Without network or a fresh setuptools, build with this venv's setuptools; else pip's isolated build.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", *isolation, "-w", str(wheels), str(src)], check=True, timeout=600
    )
    (wheel,) = wheels.glob("cloze-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "cloze-test-deps.pth").write_text("".join(f"{d}\n" for d in deps))
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", str(wheel)], check=True, timeout=600)
    return venv


def test_installed_cloze_imports_from_its_venv_not_the_source_tree(
    installed_cloze: Path, tmp_path: Path
) -> None:
    py = installed_cloze / "bin" / "python"
    probe = (
        "import json, sys, cloze_errors, launch, launch.recipes as r; "
        "print(json.dumps({'launch': launch.__file__, 'errors': cloze_errors.__file__, "
        "'recipes': str(r.recipes_dir()), 'names': r.recipe_names(), 'path': sys.path}))"
    )
    p = subprocess.run(
        [py, "-c", probe], cwd=tmp_path, env=installed_env(), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    site = installed_cloze / "lib"
    for key in ("launch", "errors", "recipes"):
        assert Path(got[key]).resolve().is_relative_to(site.resolve()), (key, got[key])
    assert {"demo", "bert-base", "t5-base"} <= set(got["names"])
    assert not any(Path(x).resolve() == ROOT for x in got["path"] if x), got["path"]
    # The console script runs the venv's python (which `cloze demo` hands to torchrun for its ranks).
    script = (installed_cloze / "bin" / "cloze").read_text().splitlines()[0]
    assert script == f"#!{py}", script
    # A recipe by name, from a directory with no configs/ in it; an unknown name lists the shipped ones.
    cloze = [str(installed_cloze / "bin" / "cloze")]
    bad = subprocess.run(
        [*cloze, "train", "bert-bass"],
        cwd=tmp_path,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2, bad.stderr
    assert "'bert-bass' is neither a config file nor a shipped recipe" in bad.stderr
    assert "bert-base, bert-large, deberta-v3-base, demo" in bad.stderr
    good = subprocess.run(
        [*cloze, "train", "tiny-bert", "data.path=no-such-dir", "run_dir=run"],
        cwd=tmp_path,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert good.returncode == 2, good.stderr
    assert (
        "dataset directory no-such-dir does not exist" in good.stderr
    )  # the recipe loaded: its data is next
    assert os.listdir(tmp_path) == []


def test_a_recipe_name_is_its_file_and_a_path_stays_a_path() -> None:
    from launch.recipes import recipe_names, recipes_dir, resolve_config
    from trainer.config import ConfigError

    assert resolve_config("bert-base") == str(recipes_dir() / "bert-base.yaml")
    assert resolve_config("configs/bert-base.yaml") == "configs/bert-base.yaml"
    assert (
        resolve_config("elsewhere/missing.yaml") == "elsewhere/missing.yaml"
    )  # load_config's error names it
    assert recipe_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    with pytest.raises(ConfigError, match="'bert' is neither .* one of the recipes: albert-base, bart-base"):
        resolve_config("bert")
