"""manifest.json: what a dataset directory holds (see docs/shard-format.md)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .sources import InputError

FORMAT = "cloze-shards"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class ShardEntry:
    name: str
    """File name of the tar shard, e.g. train-000000.tar."""
    split: str
    samples: int
    tokens: int
    bytes: int
    sha256: str
    index: str
    """File name of the shard's byte-offset index (<name>.idx, an int64 .npy of shape (samples, 2))."""
    index_sha256: str


@dataclass
class Manifest:
    objective: str
    seq_len: int
    seed: int
    tokenizer: dict[str, Any]
    special_tokens: dict[str, int]
    sentinel_ids: list[int]
    objective_params: dict[str, Any]
    splits: dict[str, dict[str, int]]
    shards: list[ShardEntry]
    packing: dict[str, Any] = field(default_factory=dict)
    source_stats: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    """How it was written: valid_fraction, docs_per_block, dupe_factor, source options, num_slices, blocks."""
    format: str = FORMAT
    version: int = VERSION

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == split]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Put the identifying keys first for people reading the file.
        head = {k: d.pop(k) for k in ("format", "version", "objective", "seq_len", "seed")}
        return {**head, **d}

    def write(self, directory: str | Path) -> None:
        """Atomically: a temporary file renamed over manifest.json."""
        atomic_write(Path(directory) / MANIFEST, (json.dumps(self.to_dict(), indent=1) + "\n").encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file of its own (unique name: several processes, e.g. the slices of an array
    job, may write the same file at once), fsynced, then renamed over `path`: readers see the old or the new bytes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: str | Path) -> Manifest:
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise InputError(f"dataset directory {d} does not exist; create it with `cloze shards --out {d} ...`")
    if not path.is_file():
        raise InputError(
            f"dataset directory {d} has no {MANIFEST}: it is incomplete or not a cloze dataset; "
            f"(re)run `cloze shards --out {d} ...`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); rerun `cloze shards --out {d} ...`") from None
    if raw.get("format") != FORMAT:
        raise InputError(f"{path}: format is {raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise InputError(
            f"{path}: version {raw.get('version')} is not supported (this cloze reads {VERSION})"
        )
    try:
        raw["shards"] = [ShardEntry(**s) for s in raw["shards"]]
        return Manifest(**raw)
    except (TypeError, KeyError) as e:
        raise InputError(f"{path} is malformed ({e}); rerun `cloze shards --out {d} ...`") from None
