"""The objective registry: one `ObjectiveSpec` per shard objective, registered once, beside its class.

The writer, the loader, packing and `cloze inspect` ask `get_objective(name)` for what they need (packing kind,
whether it masks on the fly, whether it may be written as sentence pairs, sample lengths, the decoder's start,
how `inspect` renders and measures it); nothing else in data_pipeline/ branches on an objective's name. The
built-in objectives register in data_pipeline/objectives.py (importing it registers them); a plugin registers its
own with `register_objective(ObjectiveSpec(...))` (docs/extending.md). Same pattern as modeling/registry.py.

This module imports nothing of ours but cloze_errors (objectives.py imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloze_errors import ClozeError


class ObjectiveError(ClozeError, ValueError):
    """Objective parameters that cannot work, or an objective nobody registered; the message names the option."""

    same_on_every_rank = True


def _seq_len(seq_len: int, params: dict[str, Any], recorded: int = 0) -> int:
    return seq_len


def _same_labels(seq_len: int, params: dict[str, Any]) -> tuple[int, int] | None:
    return (seq_len, seq_len)


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything data_pipeline needs to know about one shard objective (`--objective` / `data.objective`)."""

    name: str
    """The value of `--objective`, written to the manifest's `objective`."""
    params: type | None
    """Its parameters dataclass (`--opt key=value` sets its fields; `asdict` of it is the manifest's
    objective_params); None: it has none ("tokens")."""
    build: Callable[[Any, int, dict[str, Any]], Any] | None
    """(Vocab, seq_len, options) -> the objective: a callable (Packed, rng) -> sample arrays, with `params()`;
    None: shards hold clean tokens, corrupted on the fly by the loader ("tokens")."""
    packing: str = "encoder"
    """Packing kind of its sequences (data_pipeline/packing.py `packer_for`), recorded as manifest packing.kind."""
    dynamic: bool = False
    """The loader may apply it on the fly to "tokens" shards (`data.objective`)."""
    sentence_pairs: bool = False
    """It may be written as SOP/NSP sentence pairs (`--sentence-task`)."""
    packed_length: Callable[[Any, int], int] | None = None
    """(built objective, seq_len) -> the length the packer cuts sequences to (T5: its raw_len); None: seq_len."""
    longest_input: Callable[[int, dict[str, Any], int], int] = _seq_len
    """(seq_len, objective_params, manifest packing.longest_input) -> the longest input_ids a sample holds
    (BART's noise lengthens it); the shortest is always seq_len."""
    labels_length: Callable[[int, dict[str, Any]], tuple[int, int] | None] = _same_labels
    """(seq_len, objective_params) -> (shortest, longest) labels; None: samples hold no labels."""
    decoder_start: str = ""
    """Encoder-decoder targets: the special token ('pad' T5, 'eos' BART) the collator's decoder_input_ids start
    from; '' = no decoder inputs."""
    inspect_kind: str = ""
    """How `cloze inspect` renders and measures its samples (data_pipeline/inspect.py): 'masked' (labels at the
    predicted positions, -100 elsewhere), 't5' (sentinel spans), 'bart' (the original as target), '' (tokens only)."""

    @property
    def clean(self) -> bool:
        """Its shards hold clean tokens (nothing is corrupted when written)."""
        return self.build is None


_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Make `spec` available by name; registering a name twice is an error (unless it is the same spec)."""
    old = _OBJECTIVES.get(spec.name)
    if old is not None and old is not spec:
        raise ObjectiveError(f"objective {spec.name!r} is already registered")
    _OBJECTIVES[spec.name] = spec
    return spec


def unregister_objective(name: str) -> None:
    """Forget `name` (tests that register a toy objective clean up with it)."""
    _OBJECTIVES.pop(name, None)


def objective_names(where: Callable[[ObjectiveSpec], bool] | None = None) -> tuple[str, ...]:
    """The registered objectives (those `where` accepts), in registration order."""
    return tuple(n for n, s in _OBJECTIVES.items() if where is None or where(s))


def get_objective(name: str) -> ObjectiveSpec:
    """The spec registered as `name`; an unknown name is an ObjectiveError listing the registered ones."""
    from . import objectives  # noqa: F401  (registers the built-in objectives)

    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(
            f"--objective {name!r} is not supported; choose one of {', '.join(objective_names())}"
        ) from None
