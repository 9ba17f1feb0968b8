"""Human-readable views of a dataset: `cloze inspect` decodes samples; `cloze verify` checks every shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .loader import ShardReader
from .manifest import read_manifest
from .objectives import IGNORE
from .tokenizer import Tokenizer, sha256_file


def _pieces(tok: Tokenizer, ids: np.ndarray) -> str:
    return "".join(tok.sp.id_to_piece(int(i)) for i in ids).replace("\u2581", " ").strip()


def render_mlm(tok: Tokenizer, input_ids: list[int], labels: list[int]) -> str:
    out = []
    for i, lab in zip(input_ids, labels):
        piece = tok.sp.id_to_piece(int(i))
        if lab != IGNORE:
            orig = tok.sp.id_to_piece(int(lab))
            piece = f"[{piece}→{orig}]" if i != lab else f"[={orig}]"
        out.append(piece)
    return "".join(out).replace("\u2581", " ").strip()


def render(tok: Tokenizer, objective: str, sample: dict[str, np.ndarray]) -> str:
    if objective in ("mlm", "wwm", "span", "electra"):
        return render_mlm(tok, sample["input_ids"].tolist(), sample["labels"].tolist())
    if objective in ("t5", "bart"):
        return f"input : {_pieces(tok, sample['input_ids'])}\ntarget: {_pieces(tok, sample['labels'])}"
    return _pieces(tok, sample["input_ids"])


def inspect_dataset(directory: str | Path, n: int = 3, split: str = "train") -> str:
    m = read_manifest(directory)
    tok = Tokenizer(Path(directory) / m.tokenizer["file"])
    reader = ShardReader(directory, m, split)
    lines = [
        f"{directory}: objective {m.objective} {m.objective_params}, seq_len {m.seq_len}, "
        + ", ".join(f"{k} {v['samples']} samples" for k, v in m.splits.items()),
    ]
    if m.objective in ("mlm", "wwm", "span", "electra"):
        lines.append("legend: [MASK→x] masked, [y→x] replaced by a random token, [=x] kept but predicted")
    elif m.objective == "t5":
        lines.append(
            "legend: <extra_id_k> in the input marks a dropped span; the target lists each span after its sentinel"
        )
    shown = 0
    try:
        for shard, entry in enumerate(reader.shards):
            for i in range(entry.samples):
                if shown >= n:
                    return "\n".join(lines)
                lines.append(f"--- {entry.name} #{i}")
                lines.append(render(tok, m.objective, reader.read(shard, i)))
                shown += 1
    finally:
        reader.close()
    return "\n".join(lines)


def verify_dataset(directory: str | Path) -> list[str]:
    """Every problem found, one line each naming the shard (empty list = the dataset matches its manifest)."""
    d = Path(directory)
    m = read_manifest(d)
    problems = []
    tok = d / m.tokenizer["file"]
    if not tok.is_file() or sha256_file(tok) != m.tokenizer["sha256"]:
        problems.append(f"{tok}: missing or its sha256 differs from the manifest")
    for s in m.shards:
        path = d / s.name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != s.bytes:
            problems.append(
                f"{path}: {path.stat().st_size} bytes, manifest says {s.bytes} (truncated or replaced)"
            )
            continue
        if sha256_file(path) != s.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt)")
            continue
        idx = d / s.index
        if not idx.is_file() or sha256_file(idx) != s.index_sha256:
            problems.append(f"{idx}: missing or its sha256 differs from the manifest")
            continue
        if len(np.load(idx)) != s.samples:
            problems.append(f"{idx}: {len(np.load(idx))} samples, manifest says {s.samples}")
    for split, totals in m.splits.items():
        got = sum(s.samples for s in m.shards_of(split))
        if got != totals["samples"]:
            problems.append(
                f"{d / 'manifest.json'}: {split} shards hold {got} samples, totals say {totals['samples']}"
            )
    return problems
