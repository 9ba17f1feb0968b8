"""Mixing several datasets by weight: which source each global sample comes from, as a pure function of
(seed, global sample index).

References: the language sampling of XLM (facebookresearch/XLM `train.py` `--lg_sampling_factor`,
`xlm/trainer.py` `get_lambda`/`set_sampling_probs`: p_l ∝ (n_l / n)^alpha, alpha = 0.5) and of mT5
(google-research/multilingual-t5 `multilingual_t5/tasks.py`: `seqio.MixtureRegistry.add(..., default_rate=
functools.partial(seqio.mixing_rate_num_examples, temperature=1 / 0.3))`, i.e. p_l ∝ n_l^0.3); mmBERT anneals the
exponent across stages. XLM-R uses alpha = 0.3 over CC-100.

How a sample's source is chosen. The reference draws sources i.i.d. (seqio's `sample_from_datasets`, XLM's
`np.random.choice`). cloze stratifies instead, so that any window of consecutive samples holds each source's share
to within a few samples (lower variance than i.i.d. draws) and so that the source of global sample i, and its
position in that source's own sequence, are computed in O(log sources + stages) with no state: exact and elastic
resume cost nothing, as for one dataset (data_pipeline/loader.py).
  The sources are the leaves of a balanced binary tree. At a node whose left subtree holds share q of the node's
  weight, the n-th item of the node's stream goes left iff L(n+1) > L(n), where L(n) = floor(n q + theta) (a
  Beatty sequence with a seeded phase theta in [0, 1), computed in exact integer arithmetic with q and theta in
  units of 2^-40); its index in the left stream is L(n), else n - L(n) in the right one. After n items the left
  subtree has exactly floor(n q + theta) of them: every source's realised share is within (tree depth)/n of its
  configured one, at every n.
Stages change the weights at given steps. Source k's position is the sum of its counts in the earlier stages plus
its index in the current stage's tree, so each source is read as one sequence across stages (no sample repeated
or skipped when the weights change).
Units: `sample` mixes within every batch; `step` gives each optimizer step's whole global batch to one source
(XLM's alternation of MLM and TLM steps, `--mlm_steps 'en,fr,en-fr'`, each a separate update on one stream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .sources import InputError

SCALE = 1 << 40
"""Fixed-point unit of q and theta: shares are exact to 2^-40, far below any realisable difference."""


class MixtureError(InputError):
    """A mixture that cannot work (weights, alpha, stages, incompatible datasets)."""


def temperature_weights(sizes: Sequence[float], alpha: float) -> np.ndarray:
    """p_l ∝ n_l^alpha, normalised (XLM's lg_sampling_factor, mT5's mixing_rate_num_examples with temperature
    1/alpha). alpha = 1 samples in proportion to size; alpha -> 0 uniformly over sources."""
    if not 0.0 < alpha <= 1.0:
        raise MixtureError(f"mixture alpha={alpha}: it must be in (0, 1] (mT5 and XLM-R use 0.3, XLM 0.5)")
    n = np.asarray(sizes, dtype=np.float64)
    if (n <= 0).any():
        raise MixtureError(
            f"mixture: every source needs a positive size to derive weights, got {list(sizes)}"
        )
    p = (n / n.sum()) ** alpha
    return p / p.sum()


def normalise(weights: Sequence[float], names: Sequence[str] = ()) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    for k, x in enumerate(w):
        if not np.isfinite(x) or x <= 0:
            who = f" of source {names[k]!r}" if k < len(names) else f" of source {k}"
            raise MixtureError(
                f"mixture weight{who} is {x}: every weight must be > 0 (drop the source to leave it out)"
            )
    return w / w.sum()


class _Tree:
    """One stage's split of a stream among sources with probabilities `p` (see the module docstring)."""

    def __init__(self, p: np.ndarray, seed: int, stage: int) -> None:
        self.n = len(p)
        # node id -> (lo, mid, hi, q numerator, theta numerator); leaves are ranges of one source
        self.nodes: dict[int, tuple[int, int, int, int, int]] = {}
        rng = np.random.default_rng([seed, stage, 0x4D49])
        self._build(1, 0, self.n, p, rng)

    def _build(self, node: int, lo: int, hi: int, p: np.ndarray, rng: np.random.Generator) -> None:
        if hi - lo <= 1:
            return
        mid = (lo + hi) // 2
        left, total = float(p[lo:mid].sum()), float(p[lo:hi].sum())
        q = min(max(round(left / total * SCALE), 1), SCALE - 1)  # both sides keep a positive share
        theta = int(rng.integers(0, SCALE))
        self.nodes[node] = (lo, mid, hi, q, theta)
        self._build(2 * node, lo, mid, p, rng)
        self._build(2 * node + 1, mid, hi, p, rng)

    def locate(self, n: int) -> tuple[int, int]:
        """(source, index in that source's stream) of the stream's n-th item."""
        node, lo, hi = 1, 0, self.n
        while hi - lo > 1:
            _, mid, _, q, theta = self.nodes[node]
            before, after = (n * q + theta) // SCALE, ((n + 1) * q + theta) // SCALE
            if after > before:
                node, hi, n = 2 * node, mid, before
            else:
                node, lo, n = 2 * node + 1, mid, n - before
        return lo, n

    def counts(self, n: int) -> list[int]:
        """How many of the first n items each source gets."""
        out = [0] * self.n

        def walk(node: int, lo: int, hi: int, m: int) -> None:
            if hi - lo <= 1:
                out[lo] = m
                return
            _, mid, _, q, theta = self.nodes[node]
            left = (m * q + theta) // SCALE - theta // SCALE
            walk(2 * node, lo, mid, left)
            walk(2 * node + 1, mid, hi, m - left)

        walk(1, 0, self.n, n)
        return out


@dataclass(frozen=True)
class Stage:
    start_unit: int
    """First unit (sample or step, see MixtureOrder.unit) of the stage."""
    probs: tuple[float, ...]


class MixtureOrder:
    """Global sample index -> (source, index in that source's own sample sequence).

    `stages`: (first step, probabilities) pairs, the first at step 0; `unit`: samples per mixing unit (1 = mix
    within batches; the global batch size = one source per optimizer step); `global_batch`: samples per step, to
    place the stage boundaries."""

    def __init__(
        self, stages: Sequence[tuple[int, Sequence[float]]], seed: int, unit: int, global_batch: int
    ) -> None:
        if not stages or stages[0][0] != 0:
            raise MixtureError("mixture stages must start at step 0")
        if unit < 1 or global_batch % unit:
            raise MixtureError(f"mixture unit {unit} must divide the global batch {global_batch}")
        steps = [s for s, _ in stages]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise MixtureError(f"mixture stage steps must increase, got {steps}")
        self.unit = unit
        per_step = global_batch // unit
        self.stages = [Stage(step * per_step, tuple(float(x) for x in p)) for step, p in stages]
        self.sources = len(self.stages[0].probs)
        if any(len(s.probs) != self.sources for s in self.stages):
            raise MixtureError("every mixture stage must give a weight to every source")
        self.trees = [_Tree(np.asarray(s.probs), seed, k) for k, s in enumerate(self.stages)]
        # each source's position (in units) at the start of each stage
        self.offsets = [np.zeros(self.sources, dtype=np.int64)]
        for k in range(1, len(self.stages)):
            length = self.stages[k].start_unit - self.stages[k - 1].start_unit
            self.offsets.append(self.offsets[-1] + np.asarray(self.trees[k - 1].counts(length)))
        self._starts = np.asarray([s.start_unit for s in self.stages], dtype=np.int64)

    def locate(self, index: int) -> tuple[int, int]:
        u, within = divmod(int(index), self.unit)
        k = int(np.searchsorted(self._starts, u, side="right")) - 1
        source, j = self.trees[k].locate(u - int(self._starts[k]))
        return source, (int(self.offsets[k][source]) + j) * self.unit + within

    def locate_many(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        return [self.locate(int(i)) for i in indices]

    def probs_at(self, step: int, global_batch: int) -> tuple[float, ...]:
        """The configured probabilities in force at optimizer step `step` (0-based)."""
        u = step * (global_batch // self.unit)
        k = int(np.searchsorted(self._starts, u, side="right")) - 1
        return self.stages[k].probs


@dataclass
class MixturePlan:
    """A checked mixture: its datasets, their names, and the probabilities of every stage."""

    names: list[str]
    paths: list[str]
    manifests: list[Any]
    stages: list[tuple[int, tuple[float, ...]]]
    """(first optimizer step, probability of each source), the first at step 0."""
    unit: str
    """'sample' or 'step'."""

    def order(self, seed: int, global_batch: int) -> MixtureOrder:
        return MixtureOrder(self.stages, seed, 1 if self.unit == "sample" else global_batch, global_batch)

    def fingerprint(self) -> str:
        """Identifies what the mixture reads, as a manifest's fingerprint does for one dataset: its datasets'
        fingerprints, in order, with the weights and stages (a checkpoint resumed on another mixture is noticed)."""
        ident = {
            "sources": [[n, m.fingerprint()] for n, m in zip(self.names, self.manifests, strict=True)],
            "stages": [[s, list(p)] for s, p in self.stages],
            "unit": self.unit,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        lines = []
        for step, probs in self.stages:
            shares = ", ".join(f"{n} {p:.3f}" for n, p in zip(self.names, probs, strict=True))
            lines.append(f"from step {step}: {shares}")
        return f"mixture of {len(self.names)} datasets by {self.unit}; " + "; ".join(lines)


def source_tokens(manifest: Any) -> int:
    """A dataset's size for temperature weights: the tokens of its training split (n_l)."""
    return int(sum(s.tokens for s in manifest.shards_of("train")))


def plan_mixture(
    sources: Sequence[tuple[str, str, float]],
    alpha: float,
    unit: str,
    stages: Sequence[tuple[int, float, dict[str, float]]] = (),
) -> MixturePlan:
    """Read and check every source (path, name, weight) and work out each stage's probabilities.

    The datasets must share the tokenizer (sha256) and sequence length; with unit 'sample' (every batch mixes
    them) also the objective and the members their samples carry. Every error names the dataset and the fix."""
    from .manifest import read_manifest

    paths = [p for p, _, _ in sources]
    manifests = [read_manifest(p) for p in paths]
    names = []
    for (path, name, _), m in zip(sources, manifests, strict=True):
        langs = list(getattr(m, "languages", []) or [])
        names.append(name or (langs[0] if len(langs) == 1 else Path(path).name))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MixtureError(
            f"data.mixture: sources share the name(s) {dupes}; give each a distinct `name:` in data.mixture.sources"
        )
    first, m0 = paths[0], manifests[0]
    sha0 = m0.tokenizer.get("sha256", "")
    for path, m in zip(paths[1:], manifests[1:], strict=True):
        if m.tokenizer.get("sha256", "") != sha0:
            raise MixtureError(
                f"data.mixture: {path} was written with another tokenizer (sha256 "
                f"{m.tokenizer.get('sha256', '')[:12]}) than {first} ({sha0[:12]}); a mixture needs one "
                "tokenizer: write every dataset with the same `cloze shards --tokenizer DIR`"
            )
        if m.seq_len != m0.seq_len:
            raise MixtureError(
                f"data.mixture: {path} has seq_len {m.seq_len}, {first} has {m0.seq_len}; write them with one "
                "--seq-len"
            )
        if unit == "sample":
            for what, a, b in (
                ("objective", m.objective, m0.objective),
                ("objective parameters", m.objective_params, m0.objective_params),
                ("sentence task", m.build.get("sentence_task"), m0.build.get("sentence_task")),
                ("document boundaries", m.build.get("doc_boundaries"), m0.build.get("doc_boundaries")),
                ("global tokens", m.build.get("global_tokens"), m0.build.get("global_tokens")),
            ):
                if a != b:
                    raise MixtureError(
                        f"data.mixture: {path} has {what} {a!r}, {first} has {b!r}; samples of one batch must "
                        "match: write them alike, or set data.mixture.unit=step (one dataset per step)"
                    )
    given = [w for _, _, w in sources]
    sizes = [source_tokens(m) for m in manifests]
    for path, n in zip(paths, sizes, strict=True):
        if n <= 0:
            raise MixtureError(f"data.mixture: {path} has no training tokens; rebuild it or drop it")

    def probs(a: float, weights: Sequence[float]) -> tuple[float, ...]:
        if any(weights):
            return tuple(float(x) for x in normalise(weights, names))
        return tuple(float(x) for x in temperature_weights(sizes, a))

    planned = [(0, probs(alpha, given))]
    for step, a, by_name in stages:
        if by_name:
            unknown = sorted(set(by_name) - set(names))
            missing = [n for n in names if n not in by_name]
            if unknown or missing:
                raise MixtureError(
                    f"data.mixture.stages (step {step}): weights must name every source exactly "
                    f"(sources: {names}; unknown: {unknown}, missing: {missing})"
                )
            planned.append((step, probs(0.0, [by_name[n] for n in names])))
        else:
            planned.append((step, probs(a, [])))
    return MixturePlan(names, paths, manifests, planned, unit)
