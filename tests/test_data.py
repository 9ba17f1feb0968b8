"""Real sentencepiece + real WebDataset shards made from the built-in corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline.loader import EvalStream, ShardReader, StreamSpec, TrainStream
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import IGNORE
from data_pipeline.sources import SourceStats, iter_documents
from data_pipeline.tokenizer import Tokenizer, sha256_file
from data_pipeline.writer import split_of


def all_samples(directory: Path, split: str) -> list[dict[str, np.ndarray]]:
    m = read_manifest(directory)
    r = ShardReader(directory, m, split)
    out = [r.read(s, i) for s, e in enumerate(r.shards) for i in range(e.samples)]
    r.close()
    return out


def test_tokenizer_has_every_special_token(tokenizer_dir: Path) -> None:
    tok = Tokenizer(tokenizer_dir)
    ids = tok.special.to_dict()
    assert ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "cls": 4, "sep": 5, "mask": 6}
    assert len(tok.info.sentinel_ids) == 100 and tok.info.sentinel_ids[0] == 7
    assert tok.vocab_size == 3000
    # Control symbols: text spelling a special token is not encoded as it.
    assert tok.special.mask not in tok.encode(["a [MASK] b"])[0]
    meta = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert meta["sha256"] == sha256_file(tokenizer_dir / "tokenizer.model")


def test_manifest_matches_shards(dataset_dir: Path) -> None:
    m = read_manifest(dataset_dir)
    assert m.format == "cloze-shards" and m.objective == "mlm" and m.seq_len == 64 and m.seed == 7
    assert m.tokenizer["sha256"] == sha256_file(dataset_dir / "tokenizer.model")
    assert set(m.special_tokens) == {"pad", "unk", "cls", "sep", "mask", "bos", "eos"}
    assert len(m.sentinel_ids) == 100
    assert m.splits["train"]["shards"] >= 3 and m.splits["valid"]["samples"] > 0
    assert m.build["docs_per_block"] == 1500 and m.build["blocks"] == m.splits["train"]["shards"]
    for split in ("train", "valid"):
        shards = m.shards_of(split)
        assert sum(s.samples for s in shards) == m.splits[split]["samples"]
        assert sum(s.tokens for s in shards) == m.splits[split]["tokens"] == m.splits[split]["samples"] * 64
    for s in m.shards:
        path = dataset_dir / s.name
        assert path.stat().st_size == s.bytes and sha256_file(path) == s.sha256
        assert sha256_file(dataset_dir / s.index) == s.index_sha256
        # Read with webdataset itself: the shards are plain WebDataset tars.
        got = list(wds.WebDataset(str(path), shardshuffle=False).decode())
        assert len(got) == s.samples
        assert all(x["input_ids.npy"].dtype == np.int32 and x["input_ids.npy"].shape == (64,) for x in got)
    keys = [
        x["__key__"] for s in m.shards for x in wds.WebDataset(str(dataset_dir / s.name), shardshuffle=False)
    ]
    assert len(keys) == len(set(keys)), "sample keys must be unique"


def test_indexed_reader_equals_webdataset(dataset_dir: Path) -> None:
    m = read_manifest(dataset_dir)
    reader = ShardReader(dataset_dir, m, "train")
    for shard, entry in enumerate(reader.shards[:2]):
        for i, x in enumerate(wds.WebDataset(str(dataset_dir / entry.name), shardshuffle=False).decode()):
            s = reader.read(shard, i)
            np.testing.assert_array_equal(s["input_ids"], x["input_ids.npy"])
            np.testing.assert_array_equal(s["labels"], x["labels.npy"])


def test_reader_keeps_a_bounded_number_of_shards_open(dataset_dir: Path) -> None:
    """Scale (issue 19): however many shards a pass touches, the reader holds at most OPEN_SHARDS indexes and open
    files (least recently used evicted); a shard read again after eviction reads the same samples."""
    m = read_manifest(dataset_dir)
    reader = ShardReader(dataset_dir, m, "train")
    reader.OPEN_SHARDS = 2
    n = len(reader.shards)
    assert n > 3, "the fixture must have more shards than the reader keeps"
    first = [reader.read(s, 0)["input_ids"] for s in range(n)]
    assert len(reader._index) == 2 and len(reader._files) == 2
    assert list(reader._index) == [n - 2, n - 1]  # the most recently used survive
    reader.read(n - 2, 1)  # a hit moves its shard to the end
    reader.read(0, 0)
    assert list(reader._index) == [n - 2, 0] and list(reader._files) == [n - 2, 0]
    again = [reader.read(s, 0)["input_ids"] for s in reversed(range(n))][::-1]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    reader.close()
    assert not reader._files


def expected_packed(
    tokenizer_dir: Path, seed: int, split: str, valid_fraction: float, seq_len: int, block: int
) -> np.ndarray:
    """Packing re-derived independently: within each block of documents, doc tokens + [SEP] concatenated and
    cut into [CLS] + (seq_len-1); a block's remainder is dropped."""
    tok = Tokenizer(tokenizer_dir)
    docs = list(iter_documents(["builtin:stdlib-docs"], SourceStats()))
    rows = []
    for b in range(0, len(docs), block):
        stream: list[int] = []
        for i in range(b, min(b + block, len(docs))):
            if split_of(i, seed, valid_fraction) == split:
                for line in tok.encode(docs[i]):
                    stream.extend(line)
                stream.append(tok.special.sep)
        n = len(stream) // (seq_len - 1)
        body = np.asarray(stream[: n * (seq_len - 1)], dtype=np.int32).reshape(n, seq_len - 1)
        rows.append(np.concatenate([np.full((n, 1), tok.special.cls, dtype=np.int32), body], axis=1))
    return np.concatenate(rows)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_labels_written_back_give_the_packed_text(dataset_dir: Path, tokenizer_dir: Path, split: str) -> None:
    samples = all_samples(dataset_dir, split)
    restored = []
    for s in samples:
        x = s["input_ids"].copy()
        where = s["labels"] != IGNORE
        x[where] = s["labels"][where]
        restored.append(x)
    np.testing.assert_array_equal(
        np.stack(restored), expected_packed(tokenizer_dir, 7, split, 0.05, 64, 1500)
    )


def test_masking_statistics_on_real_text(dataset_dir: Path) -> None:
    m = read_manifest(dataset_dir)
    special = set(m.special_tokens.values()) | set(m.sentinel_ids)
    samples = all_samples(dataset_dir, "train")
    inputs = np.stack([s["input_ids"] for s in samples])
    labels = np.stack([s["labels"] for s in samples])
    chosen = labels != IGNORE
    restored = np.where(chosen, labels, inputs)
    maskable = ~np.isin(restored, list(special))
    assert not (chosen & ~maskable).any(), "special tokens are never masked"
    rate = chosen.sum() / maskable.sum()
    assert abs(rate - 0.15) < 0.01, rate
    n = chosen.sum()
    as_mask = (inputs[chosen] == m.special_tokens["mask"]).mean()
    unchanged = (inputs[chosen] == labels[chosen]).mean()
    random = 1.0 - as_mask - unchanged
    # "unchanged" also includes the ~1/V random draws that hit the original token.
    assert abs(as_mask - 0.8) < 0.02 and abs(random - 0.1) < 0.02 and abs(unchanged - 0.1) < 0.02, (
        as_mask,
        random,
        unchanged,
        n,
    )
    replaced = inputs[chosen & (inputs != labels) & (inputs != m.special_tokens["mask"])]
    assert not np.isin(replaced, list(special)).any(), "random replacements are ordinary tokens"


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_split(dataset_dir: Path) -> None:
    m = read_manifest(dataset_dir)
    n = m.splits["train"]["samples"]
    B, mb, W = 32, 4, 2
    steps = n // B
    seen: list[bytes] = []
    for rank in range(W):
        spec = StreamSpec(global_batch=B, micro_batch=mb, world_size=W, rank=rank, start_sample=0, seed=3)
        loader = torch.utils.data.DataLoader(TrainStream(dataset_dir, spec), batch_size=None, num_workers=2)
        it = iter(loader)
        for _ in range(steps * spec.accum):
            batch = next(it)
            seen.extend(
                torch.cat([batch["input_ids"], batch["labels"]], 1)
                .numpy()
                .astype(np.int32)
                .tobytes(order="C")[i * 512 : (i + 1) * 512]
                for i in range(mb)
            )
        del it, loader
    everything = {
        np.concatenate([s["input_ids"], s["labels"]]).tobytes() for s in all_samples(dataset_dir, "train")
    }
    assert len(seen) == steps * B
    assert len(set(seen)) == len(seen), "no sample is read twice in an epoch"
    assert set(seen) <= everything
    assert len(everything) - len(set(seen)) == n - steps * B, (
        "the epoch covers the split but the partial last batch"
    )


def test_order_does_not_depend_on_worker_count(dataset_dir: Path) -> None:
    spec = StreamSpec(global_batch=16, micro_batch=4, world_size=2, rank=1, start_sample=5 * 16, seed=1)
    outs = []
    for workers in (0, 3):
        it = iter(
            torch.utils.data.DataLoader(TrainStream(dataset_dir, spec), batch_size=None, num_workers=workers)
        )
        outs.append(torch.stack([next(it)["input_ids"] for _ in range(10)]))
    torch.testing.assert_close(outs[0], outs[1])


def test_eval_stream_gives_each_rank_the_same_number_of_batches(dataset_dir: Path) -> None:
    counts = [len(list(EvalStream(dataset_dir, 8, 2, r, batches=1000))) for r in range(2)]
    assert counts[0] == counts[1] > 0


def test_bpe_tokenizer_with_byte_fallback(tmp_path: Path) -> None:
    from data_pipeline.tokenizer import train_tokenizer

    info = train_tokenizer(
        ["builtin:stdlib-docs"], tmp_path / "bpe", vocab_size=1500, model_type="bpe", byte_fallback=True
    )
    tok = Tokenizer(tmp_path / "bpe")
    assert info.model_type == "bpe" and tok.info.model_type == "bpe"
    assert tok.special.to_dict() == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "cls": 4, "sep": 5, "mask": 6}
    ids = tok.encode(["naïve 数据 café"])[0]
    assert tok.special.unk not in ids  # byte fallback: no unknown token even for unseen characters
    assert tok.decode(ids) == "naïve 数据 café"
