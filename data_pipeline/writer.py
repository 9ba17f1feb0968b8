"""Write corrupted pretraining samples as WebDataset tar shards, plus a byte-offset index and the manifest.

Order of writing, so that a crash never leaves something that looks complete:
  each shard is written as <name>.tmp, closed, hashed, then renamed to <name>; its index likewise;
  manifest.json is written last (atomically). A directory without manifest.json is not a dataset.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from .manifest import MANIFEST, Manifest, ShardEntry
from .objectives import MLMMasker, MLMParams, sample_rng
from .packing import Packer
from .sources import InputError, SourceStats, iter_documents, resolve_inputs
from .tokenizer import MODEL_FILE, Tokenizer, sha256_file, tokenizer_meta

OBJECTIVES = ("mlm",)


def _split_of(doc_index: int, seed: int, valid_fraction: float) -> str:
    """Documents (not sequences) go to the validation split, so no text is shared between the splits."""
    if valid_fraction <= 0:
        return "train"
    x = (doc_index + 0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 29
    return "valid" if (x % 1_000_000) < valid_fraction * 1_000_000 else "train"


def sample_byte_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) byte range of each sample (its consecutive members) in a finished tar shard."""
    ranges: list[tuple[int, int]] = []
    last_key = None
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            key = m.name.split(".", 1)[0]
            end = m.offset_data + ((m.size + 511) // 512) * 512
            if key != last_key:
                ranges.append((m.offset, end))
                last_key = key
            else:
                ranges[-1] = (ranges[-1][0], end)
    return ranges


class ShardSink:
    """Writes one split's samples into shards of `samples_per_shard`, each with a byte-offset index."""

    def __init__(self, out: Path, split: str, samples_per_shard: int) -> None:
        self.out = out
        self.split = split
        self.samples_per_shard = samples_per_shard
        self.entries: list[ShardEntry] = []
        self._file: Any = None
        self._tar: wds.TarWriter | None = None
        self._offsets: list[tuple[int, int]] = []
        self._tokens = 0
        self.samples = 0
        self.tokens = 0

    @property
    def _name(self) -> str:
        return f"{self.split}-{len(self.entries):06d}.tar"

    def write(self, key: str, sample: dict[str, np.ndarray], n_tokens: int) -> None:
        if self._tar is None:
            self._file = open(self.out / (self._name + ".tmp"), "wb")  # noqa: SIM115 - closed by TarWriter.close()
            self._tar = wds.TarWriter(self._file)
        self._tar.write({"__key__": key, **{f"{k}.npy": v for k, v in sample.items()}})
        self._offsets.append((0, 0))  # filled from the finished file in close_shard
        self._tokens += n_tokens
        if len(self._offsets) >= self.samples_per_shard:
            self.close_shard()

    def close_shard(self) -> None:
        if self._tar is None:
            return
        name = self._name
        self._tar.close()  # also closes self._file
        tmp = self.out / (name + ".tmp")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        self._offsets = sample_byte_ranges(tmp)
        idx_name = name + ".idx"
        buf = io.BytesIO()
        np.save(buf, np.asarray(self._offsets, dtype=np.int64))
        (self.out / (idx_name + ".tmp")).write_bytes(buf.getvalue())
        os.replace(self.out / (idx_name + ".tmp"), self.out / idx_name)
        os.replace(tmp, self.out / name)
        self.entries.append(
            ShardEntry(
                name=name,
                split=self.split,
                samples=len(self._offsets),
                tokens=self._tokens,
                bytes=(self.out / name).stat().st_size,
                sha256=sha256_file(self.out / name),
                index=idx_name,
                index_sha256=sha256_file(self.out / idx_name),
            )
        )
        self.samples += len(self._offsets)
        self.tokens += self._tokens
        self._tar, self._file, self._offsets, self._tokens = None, None, [], 0


def write_shards(
    inputs: list[str],
    tokenizer: str | Path,
    out: str | Path,
    objective: str = "mlm",
    seq_len: int = 128,
    seed: int = 0,
    samples_per_shard: int = 2048,
    valid_fraction: float = 0.02,
    mlm: MLMParams | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> Manifest:
    """Tokenize, pack, corrupt and write `inputs` into the dataset directory `out`. Returns the manifest."""
    if objective not in OBJECTIVES:
        raise InputError(f"--objective {objective!r} is not supported; choose one of {', '.join(OBJECTIVES)}")
    if samples_per_shard < 1:
        raise InputError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if not 0.0 <= valid_fraction < 1.0:
        raise InputError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    files = resolve_inputs(inputs)  # every input checked before anything is written
    tok = Tokenizer(tokenizer)
    packer_check = Packer(seq_len, tok.special.cls, tok.special.sep)  # validates seq_len
    del packer_check
    out = Path(out)
    if (out / MANIFEST).exists():
        raise InputError(
            f"{out} already holds a dataset ({MANIFEST} exists); choose another --out or delete it"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _write(
            files,
            inputs,
            tok,
            out,
            objective,
            seq_len,
            seed,
            samples_per_shard,
            valid_fraction,
            mlm or MLMParams(),
            progress,
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return manifest


def _write(
    files: list[str],
    inputs: list[str],
    tok: Tokenizer,
    out: Path,
    objective: str,
    seq_len: int,
    seed: int,
    samples_per_shard: int,
    valid_fraction: float,
    mlm: MLMParams,
    progress: Callable[[dict[str, float]], None] | None,
) -> Manifest:
    special = tok.special
    masker = MLMMasker(mlm, tok.vocab_size, special.all() + tok.info.sentinel_ids, special.mask)
    splits = ("train", "valid")
    packers = {s: Packer(seq_len, special.cls, special.sep) for s in splits}
    sinks = {s: ShardSink(out, s, samples_per_shard) for s in splits}
    stats = SourceStats()
    t0 = time.perf_counter()
    for doc_index, doc in enumerate(iter_documents(files, stats)):
        split = _split_of(doc_index, seed, valid_fraction)
        sink = sinks[split]
        for seq in packers[split].add(tok.encode(doc)):
            index = sink.samples + len(sink._offsets)
            sample = masker(seq, sample_rng(seed, split, index))
            sink.write(f"{split}-{index:09d}", sample, seq_len)
        if progress is not None and doc_index % 500 == 0:
            dt = max(time.perf_counter() - t0, 1e-9)
            done = sum(s.samples + len(s._offsets) for s in sinks.values()) * seq_len
            progress(
                {"documents": stats.documents, "docs_per_s": stats.documents / dt, "tokens_per_s": done / dt}
            )
    for s in splits:
        packers[s].finish()
        sinks[s].close_shard()
    if stats.documents == 0:
        raise InputError(f"the corpus {' '.join(inputs)} holds no documents; check the input files")
    if sinks["train"].samples == 0:
        raise InputError(
            f"the corpus {' '.join(inputs)} ({stats.documents} documents) gives no training sequence of "
            f"--seq-len {seq_len}; add text or lower --seq-len"
        )
    if valid_fraction > 0 and sinks["valid"].samples == 0:
        raise InputError(
            f"--valid-fraction {valid_fraction} gives no validation sequence of --seq-len {seq_len} from "
            f"{' '.join(inputs)}; raise --valid-fraction or lower --seq-len"
        )
    shutil.copyfile(tok.path, out / MODEL_FILE)
    meta = tokenizer_meta(tok.info)
    manifest = Manifest(
        objective=objective,
        seq_len=seq_len,
        seed=seed,
        tokenizer={k: meta[k] for k in ("file", "sha256", "vocab_size", "model_type")},
        special_tokens=special.to_dict(),
        sentinel_ids=tok.info.sentinel_ids,
        objective_params=mlm.to_dict(),
        splits={
            s: {"samples": sinks[s].samples, "tokens": sinks[s].tokens, "shards": len(sinks[s].entries)}
            for s in splits
        },
        shards=sinks["train"].entries + sinks["valid"].entries,
        packing={"method": "concat", "dropped_tokens": sum(p.dropped_tokens for p in packers.values())},
        source_stats=stats.to_dict(),
        inputs=list(inputs),
    )
    manifest.write(out)
    return manifest
