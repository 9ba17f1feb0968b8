"""Human-readable view of a dataset's samples: masked positions shown as [MASK→original]."""

from __future__ import annotations

from pathlib import Path

from .loader import ShardReader
from .manifest import read_manifest
from .objectives import IGNORE
from .tokenizer import Tokenizer


def render_mlm(tok: Tokenizer, input_ids: list[int], labels: list[int]) -> str:
    out = []
    for i, lab in zip(input_ids, labels):
        piece = tok.sp.id_to_piece(int(i))
        if lab != IGNORE:
            orig = tok.sp.id_to_piece(int(lab))
            piece = f"[{piece}→{orig}]" if i != lab else f"[={orig}]"
        out.append(piece)
    return "".join(out).replace("▁", " ").strip()


def inspect_dataset(directory: str | Path, n: int = 3, split: str = "train") -> str:
    m = read_manifest(directory)
    tok = Tokenizer(Path(directory) / m.tokenizer["file"])
    reader = ShardReader(directory, m, split)
    lines = [
        f"{directory}: objective {m.objective}, seq_len {m.seq_len}, "
        + ", ".join(f"{k} {v['samples']} samples" for k, v in m.splits.items()),
        "legend: [MASK→x] masked, [y→x] replaced by a random token, [=x] kept but predicted",
    ]
    shown = 0
    for shard, entry in enumerate(reader.shards):
        for i in range(entry.samples):
            if shown >= n:
                reader.close()
                return "\n".join(lines)
            s = reader.read(shard, i)
            lines.append(f"--- {entry.name} #{i}")
            lines.append(render_mlm(tok, s["input_ids"].tolist(), s["labels"].tolist()))
            shown += 1
    reader.close()
    return "\n".join(lines)
