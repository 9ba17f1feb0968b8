"""DistilBERT's frequency-smoothed masking, objective `distil_mlm` (data_pipeline/objectives.py SmoothedMLM; issue 15),
against the reference's arithmetic ported below from transformers examples/research_projects/distillation:

- train.py: `token_probs = np.maximum(counts, 1) ** -args.mlm_smoothing`, then 0 for every special token;
- distiller.py `Distiller.prepare_batch_mlm`: `n_tgt = ceil(mlm_mask_prop * lengths.sum())` positions drawn without
  replacement by `torch.multinomial(x_prob / x_prob.sum(), n_tgt)` over the batch, pads dropped, then
  `pred_probs` [0.8, 0.1, 0.1] over ([MASK], kept, `random_(vocab_size)`).

cloze draws its budget per sequence (each sample's mask depends on its own seed: exact resume), the reference per
batch; the weights are the same, so the rate at which each token is asked for must agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.objectives import ObjectiveError, Packed, SmoothedMLM, SmoothedMLMParams, Vocab
from data_pipeline.sources import InputError

from .conftest import run_cloze

V, PAD, CLS, SEP, MASK = 40, 0, 1, 2, 4
SPECIAL = [0, 1, 2, 3, 4]


def vocab() -> Vocab:
    return Vocab(
        size=V, pad=PAD, cls=CLS, sep=SEP, mask=MASK, bos=CLS, eos=SEP, special_ids=SPECIAL, sentinel_ids=[]
    )


def counts() -> np.ndarray:
    """Zipf-like counts: token 5 is the most frequent, 39 the rarest; the specials are frequent too."""
    c = np.zeros(V, dtype=np.int64)
    c[5:] = (100_000 / np.arange(1, V - 4) ** 1.5).astype(np.int64)
    c[SPECIAL] = 50_000
    return c


def reference_token_probs(counts: np.ndarray, special_ids: list[int], smoothing: float) -> np.ndarray:
    """train.py, ported."""
    token_probs = np.maximum(counts, 1) ** -smoothing
    for idx in special_ids:
        token_probs[idx] = 0.0  # do not predict special tokens
    return token_probs


def reference_prepare_batch_mlm(
    token_ids: torch.Tensor, lengths: torch.Tensor, token_probs: torch.Tensor, mlm_mask_prop: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """distiller.py `prepare_batch_mlm`, ported (pred_probs [0.8, 0.1, 0.1], pad 0, fp16 rounding off)."""
    bs, max_seq_len = token_ids.size()
    mlm_labels = token_ids.new(token_ids.size()).copy_(token_ids)
    x_prob = token_probs[token_ids.flatten()]
    n_tgt = math.ceil(mlm_mask_prop * lengths.sum().item())
    tgt_ids = torch.multinomial(x_prob / x_prob.sum(), n_tgt, replacement=False)
    pred_mask = torch.zeros(bs * max_seq_len, dtype=torch.bool)
    pred_mask[tgt_ids] = 1
    pred_mask = pred_mask.view(bs, max_seq_len)
    pred_mask[token_ids == PAD] = 0
    _token_ids_real = token_ids[pred_mask]
    _token_ids_rand = _token_ids_real.clone().random_(V)
    _token_ids_mask = _token_ids_real.clone().fill_(MASK)
    probs = torch.multinomial(torch.tensor([0.8, 0.1, 0.1]), len(_token_ids_real), replacement=True)
    _token_ids = (
        _token_ids_mask * (probs == 0).long()
        + _token_ids_real * (probs == 1).long()
        + _token_ids_rand * (probs == 2).long()
    )
    token_ids = token_ids.masked_scatter(pred_mask, _token_ids)
    mlm_labels[~pred_mask] = -100
    return token_ids, mlm_labels


def sequences(n: int, seed: int = 0) -> np.ndarray:
    """[CLS] tokens [SEP] then padding, 32 positions, tokens drawn from the same Zipf law as `counts`."""
    rng = np.random.default_rng(seed)
    p = counts()[5:] / counts()[5:].sum()
    out = np.zeros((n, 32), dtype=np.int64)
    for i in range(n):
        length = int(rng.integers(10, 31))
        out[i, 0], out[i, length - 1] = CLS, SEP
        out[i, 1 : length - 1] = 5 + rng.choice(V - 5, size=length - 2, p=p)
    return out


@pytest.fixture
def objective(tmp_path: Path) -> SmoothedMLM:
    np.save(tmp_path / "counts.npy", counts())
    return SmoothedMLM(vocab(), SmoothedMLMParams(token_counts=str(tmp_path / "counts.npy")))


def test_weights_are_the_references_token_probs(objective: SmoothedMLM) -> None:
    np.testing.assert_array_equal(objective.weights, reference_token_probs(counts(), SPECIAL, 0.7))


def test_each_token_is_asked_for_at_the_references_rate(objective: SmoothedMLM) -> None:
    """Micro-batches of 5 (the reference README's per-GPU batch): the same budget per batch, and each token asked
    for at the reference's rate (sampling noise aside)."""
    seqs = sequences(3000)
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    ours, theirs = [], []
    for i in range(0, len(seqs), 5):
        batch = seqs[i : i + 5]
        out = objective.mask_batch(batch, rng)
        ours.append(out["labels"])
        t = torch.from_numpy(batch)
        theirs.append(
            reference_prepare_batch_mlm(t, (t != PAD).sum(1), torch.from_numpy(objective.weights))[1].numpy()
        )
        assert (out["labels"] >= 0).sum() == math.ceil(0.15 * (batch != PAD).sum())
        assert (out["labels"] >= 0).sum() == (theirs[-1] >= 0).sum()
    labels, ref = np.concatenate(ours), np.concatenate(theirs)
    occurrences = np.bincount(seqs.ravel(), minlength=V)
    rate_ours = np.bincount(seqs[labels >= 0], minlength=V) / np.maximum(occurrences, 1)
    rate_ref = np.bincount(seqs[ref >= 0], minlength=V) / np.maximum(occurrences, 1)
    assert rate_ours[SPECIAL].sum() == 0 and rate_ref[SPECIAL].sum() == 0
    common = occurrences >= 300  # enough occurrences for a rate to mean something
    assert common[5:].sum() >= 10
    np.testing.assert_allclose(rate_ours[common], rate_ref[common], rtol=0.12)
    # The point of the smoothing: the rarest token is asked for far more often than the most frequent one.
    seen = np.flatnonzero(common)
    assert rate_ours[seen[-1]] > 3 * rate_ours[5]


def test_replacements_are_80_10_10_over_the_whole_vocabulary(objective: SmoothedMLM) -> None:
    rng = np.random.default_rng(2)
    seqs = sequences(3000, seed=3)
    out = [objective(Packed(s), rng) for s in seqs]  # per sequence: evaluation's masks
    chosen = np.concatenate([o["labels"][o["labels"] >= 0] for o in out])
    inputs = np.concatenate([o["input_ids"][o["labels"] >= 0] for o in out])
    masked, kept = (inputs == MASK).mean(), (inputs == chosen).mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - (0.1 + 0.1 / V)) < 0.015
    # `random_(vocab_size)`: any id, special ones included
    assert np.isin(inputs[(inputs != MASK) & (inputs != chosen)], SPECIAL).any()
    for o, s in zip(out, seqs, strict=True):
        untouched = o["labels"] < 0
        np.testing.assert_array_equal(o["input_ids"][untouched], s[untouched])


def test_bad_counts_are_named(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError, match="needs token_counts=FILE.*cloze token-counts"):
        SmoothedMLM(vocab(), SmoothedMLMParams())
    np.save(tmp_path / "short.npy", counts()[:10])
    with pytest.raises(ObjectiveError, match=r"short.npy.*holds \(10,\) counts but the tokenizer has 40 ids"):
        SmoothedMLM(vocab(), SmoothedMLMParams(token_counts=str(tmp_path / "short.npy")))
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(ObjectiveError, match="junk.npy.*cannot be read as a token-counts file"):
        SmoothedMLM(vocab(), SmoothedMLMParams(token_counts=str(tmp_path / "junk.npy")))


def test_token_counts_command_and_the_loader(tmp_path: Path, tokenizer_dir: Path) -> None:
    """`cloze token-counts` counts a `--objective tokens` dataset; the loader masks it with distil_mlm on the fly."""
    from data_pipeline.loader import ShardReader, StreamSpec, TrainStream
    from data_pipeline.manifest import read_manifest
    from data_pipeline.writer import ShardOptions, write_shards

    data = tmp_path / "tokens"
    opts = ShardOptions(objective="tokens", seq_len=64, docs_per_block=4000, valid_fraction=0.05)
    write_shards(["builtin:stdlib-docs"], tokenizer_dir, data, opts, workers=1)
    out = tmp_path / "counts.npy"
    r = run_cloze(["token-counts", str(data), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    manifest = read_manifest(data)
    reader = ShardReader(data, manifest, "train")
    expected = np.zeros(manifest.tokenizer["vocab_size"], dtype=np.int64)
    for shard, entry in enumerate(reader.shards):
        for i in range(entry.samples):
            np.add.at(expected, reader.read(shard, i)["input_ids"], 1)
    reader.close()
    np.testing.assert_array_equal(np.load(out), expected)
    stream = TrainStream(data, StreamSpec(8, 8), "train", "distil_mlm", {"token_counts": str(out)})
    batches = iter(stream)
    first = next(batches)
    ids, labels = first["input_ids"], first["labels"]
    assert (labels >= 0).sum() == math.ceil(0.15 * int((ids != manifest.special_tokens["pad"]).sum()))
    # the same micro-batch is masked the same way by a stream that starts at it (a resumed run)
    second = next(batches)
    again = next(
        iter(
            TrainStream(
                data, StreamSpec(8, 8, start_sample=8), "train", "distil_mlm", {"token_counts": str(out)}
            )
        )
    )
    assert torch.equal(again["input_ids"], second["input_ids"]) and torch.equal(
        again["labels"], second["labels"]
    )
    with pytest.raises(InputError, match="masks whole training micro-batches"):
        opts = ShardOptions(objective="distil_mlm", seq_len=64, objective_options={"token_counts": str(out)})
        write_shards(["builtin:stdlib-docs"], tokenizer_dir, tmp_path / "static", opts, workers=1)
    with pytest.raises(ObjectiveError, match="needs token_counts=FILE"):
        TrainStream(data, StreamSpec(8, 8), "train", "distil_mlm", {})
