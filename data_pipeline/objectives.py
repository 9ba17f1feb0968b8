"""Corruption objectives: pure functions of (tokens, seed, sample index), in numpy.

Each objective turns one packed sequence into the arrays of a sample. Randomness comes only from
`sample_rng(seed, split, index)`, so a sample's corruption is the same whatever process or worker writes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

IGNORE = -100
SPLIT_CODES = {"train": 0, "valid": 1}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


@dataclass
class MLMParams:
    """BERT masking: `rate` of the maskable tokens are chosen; of those `mask_prob` become [MASK], `random_prob`
    a random ordinary token, and the rest stay unchanged. All chosen positions carry their original id as label."""

    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"mlm rate must be in (0, 1), got {self.rate}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise ValueError(
                f"mlm mask_prob={self.mask_prob} + random_prob={self.random_prob} must be within [0, 1]"
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class MLMMasker:
    """Static BERT masking of packed sequences."""

    def __init__(self, params: MLMParams, vocab_size: int, special_ids: list[int], mask_id: int) -> None:
        self.params = params
        self.mask_id = mask_id
        special = np.zeros(vocab_size, dtype=bool)
        special[np.asarray(special_ids, dtype=np.int64)] = True
        self.is_special = special
        # Random replacements are drawn from ordinary pieces only (never pad/cls/sep/mask/sentinels).
        self.ordinary_ids = np.flatnonzero(~special).astype(np.int32)

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        candidates = np.flatnonzero(~self.is_special[tokens])
        n = len(candidates)
        k = int(round(n * self.params.rate))
        if n and k == 0:
            k = 1
        chosen = np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]
        labels = np.full(tokens.shape, IGNORE, dtype=np.int32)
        labels[chosen] = tokens[chosen]
        inputs = tokens.astype(np.int32, copy=True)
        u = rng.random(k)
        to_mask = chosen[u < self.params.mask_prob]
        to_random = chosen[
            (u >= self.params.mask_prob) & (u < self.params.mask_prob + self.params.random_prob)
        ]
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.choice(self.ordinary_ids, size=len(to_random))
        return {"input_ids": inputs, "labels": labels}
