"""Human-readable views of a dataset: `cloze inspect` decodes samples (`--stats`: measures the corruption);
`cloze verify` checks every shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .loader import ShardReader
from .manifest import read_manifest
from .objectives import IGNORE, SpanParams, TLMParams, span_length_distribution, tlm_sides
from .registry import ObjectiveError, get_objective
from .sources import InputError
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


def inspect_kind(objective: str) -> str:
    """How the objective's samples are shown and measured (`ObjectiveSpec.inspect_kind`; '' when unknown)."""
    try:
        return get_objective(objective).inspect_kind
    except ObjectiveError:
        return ""


def render_pairs(tok: Tokenizer, sample: dict[str, np.ndarray], languages: list[str]) -> str:
    """A sentence-pair sample (tlm): each sentence on its own line after its language, masked positions as in
    render_mlm (each sentence keeps its two </s>)."""
    out = []
    for lang, ids, labels in tlm_sides(sample):
        name = languages[lang] if 0 <= lang < len(languages) else f"lang {lang}"
        out.append(f"[{name}] {render_mlm(tok, ids.tolist(), labels.tolist())}")
    return "\n".join(out)


def render(
    tok: Tokenizer, objective: str, sample: dict[str, np.ndarray], languages: list[str] | None = None
) -> str:
    kind = inspect_kind(objective)
    if kind == "pairs":
        return render_pairs(tok, sample, languages or [])
    if kind == "masked":
        return render_mlm(tok, sample["input_ids"].tolist(), sample["labels"].tolist())
    if kind in ("t5", "bart"):
        return f"input : {_pieces(tok, sample['input_ids'])}\ntarget: {_pieces(tok, sample['labels'])}"
    return _pieces(tok, sample["input_ids"])


def inspect_dataset(directory: str | Path, n: int = 3, split: str = "train") -> str:
    m = read_manifest(directory)
    if not m.shards_of(split):
        have = [k for k, v in m.splits.items() if v.get("samples")]
        raise InputError(
            f"--split {split!r}: {directory} has no such split with samples; its splits: "
            + ", ".join(f"{k} ({v.get('samples', 0)} samples)" for k, v in m.splits.items())
            + (f"; use --split {have[0]}" if have else "")
        )
    tok = Tokenizer(Path(directory) / m.tokenizer["file"])
    reader = ShardReader(directory, m, split)
    lines = [
        f"{directory}: objective {m.objective} {m.objective_params}, seq_len {m.seq_len}, "
        + ", ".join(f"{k} {v['samples']} samples" for k, v in m.splits.items()),
    ]
    kind = inspect_kind(m.objective)
    if m.languages:
        lines.append(f"languages: {', '.join(f'{i} {lang}' for i, lang in enumerate(m.languages))}")
    if kind in ("masked", "pairs"):
        lines.append("legend: [MASK→x] masked, [y→x] replaced by a random token, [=x] kept but predicted")
    elif kind == "t5":
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
                lines.append(render(tok, m.objective, reader.read(shard, i), m.languages))
                shown += 1
    finally:
        reader.close()
    return "\n".join(lines)


# ---- measured corruption statistics (`cloze inspect --stats`) ----------------------------------------------------


def reference_values(objective: str, params: dict[str, Any]) -> dict[str, float]:
    """What the reference recipe asks for, from the manifest's objective_params (keys as in `dataset_stats`)."""
    kind = inspect_kind(objective)
    if kind == "pairs":
        d = TLMParams()
        mask_prob = float(params.get("mask_prob", d.mask_prob))
        random_prob = float(params.get("random_prob", d.random_prob))
        return {
            "rate": float(params.get("rate", d.rate)),
            "mask_share": mask_prob,
            "random_share": random_prob,
            "kept_share": 1.0 - mask_prob - random_prob,
        }
    if kind == "masked":
        spec = get_objective(objective)
        default = spec.params() if spec.params is not None else None  # its dataclass defaults (electra: 85/0)
        mask_prob = float(params.get("mask_prob", getattr(default, "mask_prob", 0.8)))
        random_prob = float(params.get("random_prob", getattr(default, "random_prob", 0.1)))
        ref = {
            "rate": float(params.get("rate", getattr(default, "rate", 0.15))),
            "mask_share": mask_prob,
            "random_share": random_prob,
            "kept_share": 1.0 - mask_prob - random_prob,
        }
        if spec.params is not None and issubclass(spec.params, SpanParams):
            known = {k: params[k] for k in ("geometric_p", "max_span", "min_span") if k in params}
            lens, probs = span_length_distribution(SpanParams(**known))
            ref["drawn_span_words"] = float((lens * probs).sum())
        return ref
    if kind == "t5":
        return {
            "noise_density": float(params.get("noise_density", 0.15)),
            "mean_span_length": float(params.get("mean_noise_span_length", 3.0)),
        }
    if kind == "bart":
        return {"mask_ratio": float(params.get("mask_ratio", 0.3))}
    return {}


def dataset_stats(directory: str | Path, split: str = "train", max_samples: int = 0) -> dict[str, float]:
    """Corruption measured on the shards (the first `max_samples` samples, 0 = all).

    Encoder objectives: `rate` = predicted / maskable tokens; `mask_share`, `random_share`, `kept_share` of the
    predicted tokens ([MASK], another token, unchanged); `mean_span_tokens` / `mean_span_words`: mean length of
    the runs of predicted tokens (adjacent spans merge). t5: `noise_density` = noise / raw tokens,
    `mean_span_length` = noise tokens / spans. bart: `mask_ratio` = share of the body's tokens absent from the
    input, `mean_span_tokens` = those per [MASK] in the input, `input_growth` = mean input length / seq_len.
    (`masked_token_share` is named apart from the recipe's `mask_ratio`: fairseq's budget counts words, and its
    spans may overlap.)"""
    d = Path(directory)
    m = read_manifest(d)
    tok = Tokenizer(d / m.tokenizer["file"])
    word_start = np.asarray(
        [tok.sp.id_to_piece(i).startswith("\u2581") for i in range(tok.vocab_size)], dtype=bool
    )
    special = np.zeros(max(tok.vocab_size, 1), dtype=bool)
    special[list(m.special_tokens.values()) + list(m.sentinel_ids)] = True
    st = m.special_tokens
    reader = ShardReader(d, m, split)
    kind = inspect_kind(m.objective)
    acc: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        acc[key] = acc.get(key, 0.0) + v

    seen = 0
    try:
        for shard, entry in enumerate(reader.shards):
            for i in range(entry.samples):
                if max_samples and seen >= max_samples:
                    break
                seen += 1
                if (
                    not kind
                ):  # not corrupted on disk (tokens, masked on the fly): nothing to measure, no labels
                    continue
                s = reader.read(shard, i)
                x, y = s["input_ids"].astype(np.int64), s["labels"].astype(np.int64)
                if kind == "pairs":  # tlm: XLM's eligible positions (all but the first; </s> per predict_eos)
                    orig = np.where(y != IGNORE, y, x)
                    chosen = y != IGNORE
                    eligible = orig != st["pad"]
                    eligible[0] = not m.objective_params.get("skip_first", True)
                    if not m.objective_params.get("predict_eos", True):
                        eligible &= orig != st["eos"]
                    add("maskable", float(eligible.sum()))
                    add("chosen", float(chosen.sum()))
                    add("as_mask", float((x[chosen] == st["mask"]).sum()))
                    add("kept", float((x[chosen] == y[chosen]).sum()))
                elif kind == "masked":
                    orig = np.where(y != IGNORE, y, x)
                    chosen = y != IGNORE
                    add("maskable", float((~special[orig]).sum()))
                    add("chosen", float(chosen.sum()))
                    add("as_mask", float((x[chosen] == st["mask"]).sum()))
                    add("kept", float((x[chosen] == y[chosen]).sum()))
                    edges = np.flatnonzero(np.diff(np.concatenate([[0], chosen.astype(np.int8), [0]])))
                    for a, b in zip(edges[::2], edges[1::2]):
                        add("runs", 1)
                        add("run_tokens", float(b - a))
                        add("run_words", float(max(1, int(word_start[orig[a:b]].sum()))))
                elif kind == "t5":
                    sentinels = np.isin(y[:-1], m.sentinel_ids)
                    add("noise", float((~sentinels).sum()))
                    add("spans", float(sentinels.sum()))
                    add("raw", float(len(x) - 1 - sentinels.sum() + (~sentinels).sum()))
                elif kind == "bart":
                    n_in = int((x != st["pad"]).sum())
                    body_in = x[1 : n_in - 1]
                    gone = (len(y) - 2) - int((body_in != st["mask"]).sum())
                    add("body", float(len(y) - 2))
                    add("gone", float(gone))
                    add("masks", float((body_in == st["mask"]).sum()))
                    add("in_len", float(n_in))
                    add("seq", float(len(y)))
    finally:
        reader.close()
    out: dict[str, float] = {"samples": float(seen)}
    if kind in ("pairs", "masked") and acc.get("chosen"):
        c = acc["chosen"]
        out.update(
            rate=c / acc["maskable"],
            mask_share=acc["as_mask"] / c,
            random_share=(c - acc["as_mask"] - acc["kept"]) / c,
            kept_share=acc["kept"] / c,
        )
    if kind == "masked" and acc.get("chosen"):
        out.update(
            mean_span_tokens=acc["run_tokens"] / acc["runs"],
            mean_span_words=acc["run_words"] / acc["runs"],
        )
    elif kind == "t5" and acc.get("raw"):
        out.update(noise_density=acc["noise"] / acc["raw"], mean_span_length=acc["noise"] / acc["spans"])
    elif kind == "bart" and acc.get("body"):
        out.update(
            masked_token_share=acc["gone"] / acc["body"],
            mean_span_tokens=acc["gone"] / max(acc["masks"], 1.0),
            input_growth=acc["in_len"] / acc["seq"],
        )
    return out


def format_stats(directory: str | Path, split: str = "train", max_samples: int = 0) -> str:
    m = read_manifest(directory)
    got = dataset_stats(directory, split, max_samples)
    ref = reference_values(m.objective, m.objective_params)
    lines = [f"{directory}: objective {m.objective}, {int(got['samples'])} {split} samples measured"]
    if len(got) == 1:
        lines.append("nothing to measure: the samples are not corrupted on disk (dynamic masking)")
    for k, v in got.items():
        if k == "samples":
            continue
        lines.append(f"  {k:<18} {v:.4f}" + (f"   (reference {ref[k]:.4f})" if k in ref else ""))
    notes = {
        "drawn_span_words": "mean drawn span length (SpanBERT len_distrib); measured runs merge adjacent spans, "
        "stop at [SEP] and are cut at the budget",
        "mask_ratio": "words covered by the drawn spans (fairseq's budget); spans may overlap, so fewer tokens "
        "are masked",
    }
    for k, why in notes.items():
        if k in ref and k not in got:
            lines.append(f"  reference {k} {ref[k]:.4f}: {why}")
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
