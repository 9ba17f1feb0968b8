"""`ClozeError`: the one base class of the errors a user can act on.

Every package's own kind derives from it (`modeling.config.ModelConfigError`, `data_pipeline.sources.InputError`,
`trainer.config.ConfigError`, `trainer.checkpoint.CheckpointError`, ...), and `cloze` (launch/cli.py) catches this
one class: it prints the message as one line and exits with status 2. An exception that is not a `ClozeError` is a
bug (or a fault such as a NaN loss) and keeps its traceback.

A leaf module beside the packages, importing nothing of ours, so that `modeling/` (which imports no other package of
ours) and `data_pipeline/` (which imports neither `modeling/` nor `trainer/`) can both derive from it.
"""

from __future__ import annotations


class ClozeError(Exception):
    """An error a user can fix; its message names the file, key or value and what to do."""

    same_on_every_rank: bool = False
    """True for errors of the input or the config, which every rank of a launch meets alike: the CLI prints them
    once (rank 0) rather than once per rank."""


__all__ = ["ClozeError"]
