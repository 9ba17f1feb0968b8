"""Atomic, verified checkpoints on top of DeepSpeed's sharded save.

Save (all ranks):  DeepSpeed writes into <ckpt>/.tmp-<tag> (never touching `latest`); each rank fsyncs and hashes
the files it wrote itself (one read of each, from the page cache, while slower ranks are still writing); barrier;
rank 0 gathers the digests, checks that every rank's files are there, writes checkpoint.json (each file's size and
sha256, step, data position, resolved config), then COMPLETE, renames the directory to <tag>, and replaces `latest`
atomically. Rank 0's own extra work is O(number of files): it reads no other rank's bytes. A crash at any point leaves `latest` naming the previous complete checkpoint. Saving a tag that
already exists sets the old directory aside (`.tmp-old-<tag>`), renames the new one in, moves `latest`, and only
then deletes the old one; a crash between the first two renames is undone on resume (the old one is put back).

Resume: `latest` (or, if a crash hit between the rename and `latest`, the newest COMPLETE tag) is verified before
DeepSpeed loads it: rank 0 checks the layout (every listed file there with its size, nothing unlisted), then each
rank checks the contents (sha256 on request, safe unpickling) of its share of the files (`share`: its own rank's
files, the shared ones dealt out in turn), and the verdicts are gathered so that one bad file stops every rank. Checkpoints present but none valid, or a `latest`
that is empty or names nothing, is an error naming the file: never a silent fresh start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from cloze_errors import ClozeError
from data_pipeline.manifest import atomic_write

from . import distributed as D

log = logging.getLogger(__name__)

LATEST = "latest"
COMPLETE = "COMPLETE"
META = "checkpoint.json"
TMP_PREFIX = ".tmp-"
ASIDE_PREFIX = TMP_PREFIX + "old-"
"""An existing checkpoint of the tag being committed waits here until `latest` has moved."""
TAG_RE = re.compile(r"^step(\d+)(-universal)?$")
UNIVERSAL = "-universal"


class CheckpointError(ClozeError, RuntimeError):
    """A checkpoint that cannot be trusted, named."""


def step_of(tag: str) -> int:
    """The step of a tag like step00000100; -1 for anything else."""
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else -1


def is_universal(tag: str) -> bool:
    return tag.endswith(UNIVERSAL)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


_RANK_FILE = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_")


def owner(name: str) -> int | None:
    """The rank a checkpoint file belongs to (DeepSpeed's `zero_pp_rank_N_...`), None for a file of no one rank
    (`mp_rank_00_model_states.pt`, written by rank 0 and read by all; a universal checkpoint's parameter files)."""
    m = _RANK_FILE.search(name)
    return int(m.group(1)) if m else None


def share(names: list[str], rank: int, world_size: int) -> list[str]:
    """The files `rank` of `world_size` checks: its own rank's files, and every world_size-th of the rest (in sorted
    order). Each file is checked by exactly one rank; a rank's own optimizer shard by the rank that loads it."""
    common = sorted(n for n in names if owner(n) is None)
    mine = [n for n in names if (o := owner(n)) is not None and o % world_size == rank]
    return sorted(mine + common[rank::world_size])


def hash_file(path: Path, fsync: bool = False) -> str:
    """sha256 of a file, fsyncing it after the read when asked (one pass over the bytes for both). Every checkpoint
    hash goes through here."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _digest(path: Path, fsync: bool = False) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hash_file(path, fsync)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def expected_rank_files(world_size: int, zero_stage: int, precision: str) -> list[str]:
    """Files DeepSpeed writes per rank for data-parallel training (model parallel size 1)."""
    files = ["mp_rank_00_model_states.pt"]
    if zero_stage > 0:
        prefix = "bf16_" if precision == "bf16" else ""
        files += [f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world_size)]
    if zero_stage == 3:
        files = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)] + files[1:]
    return files


def save(
    engine: Any,
    root: str | Path,
    step: int,
    client_state: dict[str, Any],
    expected: list[str],
    keep_last: int,
    is_main: bool,
    written: Callable[[Path], None] | None = None,
) -> Path:
    """Save an atomic checkpoint for `step`; returns its directory. Collective: every rank calls it. `written` is
    called with the temporary directory once this rank's files are written and fsynced, before the commit's
    barrier (the loop's Callback.on_checkpoint_written)."""
    root = Path(root)
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)
    D.barrier()
    engine.save(root, tmp_tag, client_state)
    tmp = root / tmp_tag
    # This rank's own files (owner N, or rank 0's files of no one rank): fsync and sha256 in one read, before the
    # barrier, so hashing overlaps the other ranks' writes and no rank reads another's bytes.
    rank = D.rank()
    own = [n for n in expected if (owner(n) or 0) == rank]
    mine = {n: _digest(tmp / n, fsync=True) for n in own if (tmp / n).is_file()}
    if written is not None:
        written(tmp)
    D.barrier()
    gathered = D.all_gather_object(mine)
    final = root / tag
    if is_main:
        files: dict[str, dict[str, Any]] = {}
        for part in gathered:
            files.update(cast(dict[str, dict[str, Any]], part))
        missing = [f for f in expected if f not in files]
        if missing:
            raise CheckpointError(
                f"checkpoint {tmp} lacks {', '.join(missing)} after save; not marking it complete"
            )
        _commit(root, tmp, tag, {"step": step, "expected": expected, "client_state": client_state}, files)
        prune(root, keep_last)
    D.barrier()
    return final


def convert_to_universal(
    root: str | Path,
    tag: str,
    convert: Callable[[Path, Path], None],
    verify_source: Callable[[Path], dict[str, Any]],
) -> str:
    """Write `<tag>-universal` (loadable on another world size) next to `tag`, committed like a save: temporary
    directory, checkpoint.json, COMPLETE, rename, then `latest`. `verify_source` (engine.verify_checkpoint) checks
    `tag` before `convert` (DeepSpeed's converter, which unpickles without restriction) reads it. Returns the new
    tag."""
    root = Path(root)
    source = verify_source(root / tag)
    new = tag + UNIVERSAL
    tmp = root / (TMP_PREFIX + new)
    shutil.rmtree(tmp, ignore_errors=True)
    convert(root / tag, tmp)
    meta = {
        "step": source["step"],
        "expected": [],
        "client_state": source["client_state"],
        "converted_from": tag,
    }
    _commit(root, tmp, new, meta)
    return new


def _commit(
    root: Path, tmp: Path, tag: str, meta: dict[str, Any], hashed: dict[str, dict[str, Any]] | None = None
) -> None:
    """Make the files in `tmp` the complete checkpoint `tag`: checkpoint.json (every file's size and sha256, plus
    `meta`), COMPLETE, fsync, rename to `root/tag`, then replace `latest` atomically. Until the rename nothing is
    visible, and `latest` only ever names a complete directory. `hashed`: the digests the ranks computed of their
    own files; any other file (one a callback wrote) is hashed and fsynced here."""
    hashed = hashed or {}
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            name = str(p.relative_to(tmp))
            files[name] = hashed[name] if name in hashed else _digest(p, fsync=True)
    (tmp / META).write_text(json.dumps({**meta, "tag": tag, "files": files}, indent=1, default=str) + "\n")
    (tmp / COMPLETE).write_text(tag + "\n")
    for name in (META, COMPLETE):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    final = root / tag
    aside = root / (ASIDE_PREFIX + tag)
    if final.exists():  # a checkpoint of the same tag from an earlier attempt: set it aside, delete it last
        _remove(aside)
        os.replace(final, aside)
        _fsync_dir(root)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write(root / LATEST, (tag + "\n").encode())
    _fsync_dir(root)
    if aside.exists():
        _remove(aside)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory, its COMPLETE marker first, so a half-deleted one never passes for complete."""
    (path / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def complete_tags(root: Path) -> list[str]:
    """Tags with a COMPLETE marker, oldest first."""
    tags = [
        p.name for p in root.iterdir() if p.is_dir() and TAG_RE.match(p.name) and (p / COMPLETE).is_file()
    ]
    return sorted(tags, key=step_of)


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names) and stale
    temporary directories (`.tmp-*`: saves or commits a crash interrupted). Called by rank 0 after a commit,
    when no save is in progress. A failed delete is logged, not fatal."""
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else ""
    tags = complete_tags(root)
    stale = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(TMP_PREFIX)]
    for tag in [*tags[: max(0, len(tags) - keep_last)], *stale]:
        if tag == latest:
            continue
        try:
            (root / tag / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(root / tag)
        except OSError as e:
            log.warning("could not delete old checkpoint %s: %s", root / tag, e)


def verify(
    path: Path, hashes: bool, check_file: Callable[[Path], str | None] | None = None
) -> dict[str, Any]:
    """Check a checkpoint directory against its checkpoint.json, every file in this process (`cloze export`,
    `cloze convert`); return the metadata. `check_file` (the engine's weights-only unpickling) refuses a .pt file
    that would run code when loaded. A resume on several ranks splits this: verify_layout on rank 0, then
    verify_contents of each rank's `share`."""
    meta = verify_layout(path)
    verify_contents(path, meta, sorted(meta["files"]), hashes, check_file)
    return meta


def verify_layout(path: Path) -> dict[str, Any]:
    """What costs O(number of files): the COMPLETE marker, checkpoint.json, every expected and listed file present
    with its listed size, no file it does not list. Returns the metadata."""
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} has no {COMPLETE} marker: it was not finished; delete it")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint metadata {path / META} is unreadable ({e}); delete {path}"
        ) from None
    for name in meta.get("expected", []):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint file {path / name} is missing; restore it or delete {path}")
    # DeepSpeed finds its files by name pattern: a file the metadata does not list was never hashed or checked.
    listed = {*meta["files"], META, COMPLETE}
    for p in sorted(path.rglob("*")):
        if not p.is_dir() and str(p.relative_to(path)) not in listed:
            raise CheckpointError(
                f"checkpoint file {p} is not listed in {path / META}: it was added after the save; refusing the "
                f"checkpoint. Delete the file (or {path})"
            )
    for name, info in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing; restore it or delete {path}")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint file {f} has {f.stat().st_size} bytes, expected {info['bytes']}: it is damaged; "
                f"restore it or delete {path}"
            )
    return meta


def verify_contents(
    path: Path,
    meta: dict[str, Any],
    names: list[str],
    hashes: bool,
    check_file: Callable[[Path], str | None] | None = None,
) -> None:
    """What costs O(bytes), for the files `names` only: each one's sha256 against checkpoint.json (when `hashes`),
    and `check_file` on each file torch.load would unpickle."""
    for name in names:
        f, info = path / name, meta["files"][name]
        if hashes and hash_file(f) != info["sha256"]:
            raise CheckpointError(
                f"checkpoint file {f} fails its sha256 check: it is damaged; restore it or delete {path}"
            )
        if check_file is not None and _may_unpickle(f):
            refused = check_file(f)
            if refused is not None:
                raise CheckpointError(
                    f"checkpoint file {f} cannot be loaded safely ({refused}); refusing it. If you trust its "
                    "source, say so on the command line: `cloze export/convert --trusted`, or `cloze train ... "
                    "checkpoint.trusted=true`"
                )


def _may_unpickle(f: Path) -> bool:
    """A file torch.load would unpickle: a .pt name, or pickle / zip bytes under any name."""
    if f.suffix in (".pt", ".pth", ".bin", ".pkl"):
        return True
    with open(f, "rb") as fh:
        head = fh.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def find_resume(root: str | Path) -> str | None:
    """The tag to resume from, None for a fresh start; CheckpointError when checkpoints exist but none is usable."""
    root = Path(root)
    if not root.is_dir():
        return None
    latest_file = root / LATEST
    tags = complete_tags(root)
    if latest_file.exists():
        tag = latest_file.read_text().strip()
        if not tag:
            raise CheckpointError(
                f"{latest_file} is empty; write the tag of a complete checkpoint into it ({tags or 'none'})"
            )
        aside = root / (ASIDE_PREFIX + tag)
        if not (root / tag).is_dir() and (aside / COMPLETE).is_file():
            # A crash while re-saving `tag`: the old copy was set aside, the new one not yet renamed in. Put it back.
            log.warning("restoring %s from %s (a save of the same tag was interrupted)", root / tag, aside)
            os.replace(aside, root / tag)
            _fsync_dir(root)
            tags = complete_tags(root)
        if not (root / tag).is_dir():
            raise CheckpointError(
                f"{latest_file} names {tag!r}, which does not exist in {root}; fix or delete {latest_file}"
            )
        # A crash between renaming a newer checkpoint and updating `latest` leaves a newer complete tag.
        if tags and step_of(tags[-1]) > step_of(tag):
            return tags[-1]
        return tag
    if tags:
        return tags[-1]
    leftovers = [p.name for p in root.iterdir() if TAG_RE.match(p.name)]
    if leftovers:
        raise CheckpointError(
            f"{root} holds checkpoints ({', '.join(sorted(leftovers))}) but none is complete; delete them to start fresh"
        )
    return None
