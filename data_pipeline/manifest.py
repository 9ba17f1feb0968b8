"""manifest.json: what a dataset directory holds (see docs/shard-format.md)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .sources import InputError

FORMAT = "cloze-shards"
VERSION = 2
"""Version 2 adds a crc32 per sample to each shard's index (a third column); version 1 datasets are still read,
with a warning, without that check."""
READABLE_VERSIONS = (1, 2)
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
    """File name of the shard's byte-offset index (<name>.idx, an int64 .npy of shape (samples, 3): start, end,
    crc32 of the sample's bytes; (samples, 2) without the crc32 in version 1)."""
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
    languages: list[str] = field(default_factory=list)
    """The dataset's languages, sorted: `[LANG]` for monolingual text written with `--language`, every language
    of the pairs for `--parallel` (the tlm `langs` member holds indices into it); [] when not recorded (datasets
    written before it, or without --language)."""
    format: str = FORMAT
    version: int = VERSION

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == split]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Put the identifying keys first for people reading the file.
        head = {k: d.pop(k) for k in ("format", "version", "objective", "seq_len", "seed")}
        return {**head, **d}

    def fingerprint(self) -> str:
        """What identifies the dataset's contents (sha256 of its shards, indexes, tokenizer, objective, seq_len and
        seed): saved with checkpoints, so resuming on another dataset is noticed. The same wherever it is stored."""
        ident = {
            "format": self.format,
            "version": self.version,
            "objective": self.objective,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "tokenizer": self.tokenizer.get("sha256", ""),
            "objective_params": self.objective_params,
            "shards": [[s.name, s.samples, s.sha256, s.index_sha256] for s in self.shards],
        }
        if self.languages:  # only when recorded: fingerprints of datasets without languages stay as they were
            ident["languages"] = self.languages
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def write(self, directory: str | Path) -> None:
        """Atomically: a temporary file renamed over manifest.json."""
        atomic_write(Path(directory) / MANIFEST, (json.dumps(self.to_dict(), indent=1) + "\n").encode())


def current_umask() -> int:
    """The process's umask, read without changing it (/proc/self/status on Linux >= 4.7); elsewhere set and restored
    under a lock, which other threads calling os.umask could still race with."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def chmod_as_open(path: Path) -> None:
    """Give `path` the mode open() would have given it (0o666 less the umask): for a file a library wrote private
    (safetensors writes 0o600 through a temporary file)."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file of its own (unique name: several processes, e.g. the slices of an array
    job, may write the same file at once), fsynced, then renamed over `path`: readers see the old or the new bytes.
    The file gets the mode open() would give it (0o666 less the umask), not mkstemp's private 0o600: datasets and
    exports on a shared cluster stay readable to whom the umask allows."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LegacyFormatWarning(UserWarning):
    """A dataset of an older shard-format version: readable, with fewer integrity checks."""


def read_manifest(directory: str | Path) -> Manifest:
    d = Path(directory)
    path = d / MANIFEST
    if d.is_file():
        parent = f" (its directory {d.parent} may be the dataset)" if d.name == MANIFEST else ""
        raise InputError(
            f"dataset path {d} is a file, not a directory{parent}; point it at the directory written by "
            "`cloze shards --out DIR` (the one holding manifest.json)"
        )
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
    if raw.get("version") not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: version {raw.get('version')} is not supported (this cloze reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    if raw["version"] < VERSION:
        warnings.warn(
            f"{d} is shard format version {raw['version']}: its index has no per-sample checksums, so damaged "
            f"sample bytes may go unnoticed (token ids and shapes are still checked). Rewrite it as version "
            f"{VERSION} by rerunning `cloze shards` with the same inputs and options into a new --out directory",
            LegacyFormatWarning,
            stacklevel=2,
        )
    try:
        raw["shards"] = [ShardEntry(**s) for s in raw["shards"]]
        return Manifest(**raw)
    except (TypeError, KeyError) as e:
        raise InputError(f"{path} is malformed ({e}); rerun `cloze shards --out {d} ...`") from None
