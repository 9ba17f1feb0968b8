"""The shipped run recipes (configs/*.yaml), by name: `cloze train bert-base` is `cloze train configs/bert-base.yaml`.

An installed cloze carries them as package data (pyproject.toml installs configs/ as launch/configs/); a source
checkout has them in its top-level configs/. Either way they are found from this file, never from the current
directory, so `cloze demo` and `cloze train NAME` work from anywhere.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import ConfigError

_HERE = Path(__file__).resolve().parent


def recipes_dir() -> Path:
    """The directory holding the recipes: the installed package's launch/configs, else the checkout's configs/."""
    installed = _HERE / "configs"
    return installed if installed.is_dir() else _HERE.parent / "configs"


def recipe_names() -> list[str]:
    """The shipped recipes' names (file stems), sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe(name: str) -> Path:
    """The YAML file of the shipped recipe `name`; an unknown name is an error listing the shipped ones."""
    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{name!r} is neither a config file nor a shipped recipe; give a YAML path or one of the recipes: "
            f"{', '.join(recipe_names())}"
        )
    return path


def resolve_config(arg: str) -> str:
    """`cloze train|submit CONFIG`: CONFIG as given when it is a file or looks like a path (a missing path is then
    load_config's error), else the shipped recipe of that name."""
    if Path(arg).is_file() or "/" in arg or arg.endswith((".yaml", ".yml")):
        return arg
    return str(recipe(arg))
