"""Damaged data never trains silently (issue 12): every sample is checked where its bytes are read (crc32 in the
index, shapes and token ids against the manifest), a damaged one is named (shard, sample) and counted against
data.skip_budget, and a run never resumes on another dataset unless told to."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from data_pipeline.loader import ShardReader, SkipBudget, StreamSpec, TrainStream
from data_pipeline.manifest import VERSION, LegacyFormatWarning, read_manifest
from data_pipeline.sources import InputError
from data_pipeline.tarshard import ShardTarWriter
from trainer.components import most_frequent_label

from .conftest import run_cloze


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _index(d: Path, shard_name: str) -> np.ndarray:
    return np.load(d / (shard_name + ".idx"))


def _token_offset(d: Path, shard_name: str, sample: int) -> int:
    """File offset of the first token id of `sample`'s input_ids (its first member: header, then the npy)."""
    start = int(_index(d, shard_name)[sample, 0])
    raw = (d / shard_name).read_bytes()
    member = raw[start + 512 : start + 1024]
    assert raw[start : start + 100].rstrip(b"\0").endswith(b".input_ids.npy")
    header = 10 + int.from_bytes(member[8:10], "little")  # npy v1: magic(6) version(2) len(2) header
    return start + 512 + header


def _rewrite_manifest(d: Path, **changes) -> None:
    raw = json.loads((d / "manifest.json").read_text())
    raw.update(changes)
    (d / "manifest.json").write_text(json.dumps(raw))


def test_new_datasets_have_a_crc_per_sample(dataset_dir: Path) -> None:
    m = read_manifest(dataset_dir)
    assert m.version == VERSION == 2
    s = m.shards_of("train")[0]
    idx = _index(dataset_dir, s.name)
    assert idx.shape == (s.samples, 3) and idx.dtype == np.int64
    raw = (dataset_dir / s.name).read_bytes()
    import zlib

    assert [zlib.crc32(raw[a:b]) for a, b, _ in idx[:5]] == list(idx[:5, 2])


def test_flipped_token_byte_is_named_by_shard_and_sample(tmp_path: Path, dataset_dir: Path) -> None:
    """A flip that keeps the id inside the vocabulary (it trained silently before): caught by the crc32."""
    d = _copy(dataset_dir, tmp_path / "flip")
    m = read_manifest(d)
    name = m.shards_of("train")[1].name
    at = _token_offset(d, name, 5) + 4 * 3  # token 3 of sample 5, its low byte
    data = bytearray((d / name).read_bytes())
    data[at] ^= 0x01
    (d / name).write_bytes(bytes(data))
    reader = ShardReader(d, m, "train")
    with pytest.raises(InputError, match=rf"shard {d / name}, sample 5: .*crc32"):
        reader.read(1, 5)
    assert set(reader.read(1, 4)) == {"input_ids", "labels"}  # its neighbours are untouched
    # The run-wide budget counts it: a stream over the whole split reports exactly one skipped sample.
    n = m.splits["train"]["samples"]
    it = iter(DataLoader(TrainStream(d, StreamSpec(64, 64, 1, 0, 0, 1)), batch_size=None, num_workers=1))
    skips = SkipBudget(1)
    errors = []
    for _ in range(n // 64 + 1):
        b = next(it)
        skips.add(int(b["skipped_samples"]))
        errors += [b["skip_error"]] if b["skip_error"] else []
    assert skips.skipped == 1 and f"{name}, sample 5" in errors[0]


def _as_version_1(d: Path) -> None:
    """Rewrite a dataset as shard-format version 1 wrote it: 2-column indexes, no crc32."""
    raw = json.loads((d / "manifest.json").read_text())
    for s in raw["shards"]:
        buf = io.BytesIO()
        np.save(buf, np.load(d / s["index"])[:, :2].copy())
        (d / s["index"]).write_bytes(buf.getvalue())
        s["index_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    raw["version"] = 1
    (d / "manifest.json").write_text(json.dumps(raw))


def test_version_1_dataset_reads_with_a_warning_and_checks_token_ids(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """An id outside the vocabulary used to crash the embedding with an IndexError naming no shard."""
    d = _copy(dataset_dir, tmp_path / "v1")
    _as_version_1(d)
    with pytest.warns(
        LegacyFormatWarning, match=r"shard format version 1: .* Rewrite it as version 2 .*cloze shards"
    ):
        m = read_manifest(d)
    name = m.shards_of("train")[0].name
    at = _token_offset(d, name, 2) + 4 * 7 + 2  # token 7 of sample 2, its third byte: id >= 65536
    data = bytearray((d / name).read_bytes())
    data[at] ^= 0x40
    (d / name).write_bytes(bytes(data))
    reader = ShardReader(d, m, "train")
    assert len(reader.read(0, 1)["input_ids"]) == 64  # version 1 samples still read
    with pytest.raises(
        InputError, match=rf"shard {d / name}, sample 2: input_ids holds \d+, outside \[0, 3000\)"
    ):
        reader.read(0, 2)


def _reshard(d: Path, name: str, change) -> None:
    """Rewrite shard `name` with the same keys and sizes but other contents (`change(sample)`), as another dataset
    written with the same options (another seed, another corpus) would hold. The index is left alone."""
    m = read_manifest(d)
    k = next(i for i, s in enumerate(m.shards_of("train")) if s.name == name)
    reader = ShardReader(d, m, "train")
    samples = [change(reader.read(k, i)) for i in range(m.shards_of("train")[k].samples)]
    reader.close()
    buf = io.BytesIO()
    tw = ShardTarWriter(buf)
    for i, s in enumerate(samples):
        tw.write(f"train-{k:06d}-{i:07d}", s)
    tw.close()
    assert len(buf.getvalue()) == (d / name).stat().st_size
    (d / name).write_bytes(buf.getvalue())
    return tw.index()


def test_shard_swapped_from_another_dataset_is_detected(tmp_path: Path, dataset_dir: Path) -> None:
    d = _copy(dataset_dir, tmp_path / "swap")
    name = read_manifest(d).shards_of("train")[0].name

    def other(s):  # the same text masked elsewhere: valid ids, valid shapes
        return {"input_ids": s["input_ids"][::-1].copy(), "labels": s["labels"][::-1].copy()}

    index = _reshard(d, name, other)
    reader = ShardReader(d, read_manifest(d), "train")
    for i in (0, 7):
        with pytest.raises(InputError, match=rf"{name}, sample {i}: .*another dataset"):
            reader.read(0, i)
    # Its index swapped in too: the index no longer matches the manifest.
    buf = io.BytesIO()
    np.save(buf, index)
    (d / (name + ".idx")).write_bytes(buf.getvalue())
    reader = ShardReader(d, read_manifest(d), "train")
    with pytest.raises(InputError, match=rf"index {d / name}.idx: its sha256 differs from the manifest"):
        reader.read(0, 0)


def test_manifest_seq_len_edit_is_caught(tmp_path: Path, dataset_dir: Path) -> None:
    d = _copy(dataset_dir, tmp_path / "seqlen")
    _rewrite_manifest(d, seq_len=32)
    m = read_manifest(d)
    with pytest.raises(InputError, match=r"sample 0: input_ids has length 64, the manifest says 32"):
        ShardReader(d, m, "train").read(0, 0)
    # The start-up scan honours the budget: the first damaged sample past it is one clear error.
    with pytest.raises(InputError, match=r"2 unreadable samples skipped while scanning .*data.skip_budget=1"):
        most_frequent_label(str(d), m, budget=SkipBudget(1))


def test_every_sample_unreadable_is_reported_not_raised_in_the_worker(
    tmp_path: Path, dataset_dir: Path
) -> None:
    d = _copy(dataset_dir, tmp_path / "allbad")
    _rewrite_manifest(d, seq_len=32)
    b = next(iter(DataLoader(TrainStream(d, StreamSpec(8, 8, 1, 0, 0, 1)), batch_size=None, num_workers=1)))
    assert int(b["skipped_samples"]) == 8 and "input_ids" not in b
    assert "every sample of micro-batch 0" in b[TrainStream.UNREADABLE_KEY]


def test_bart_inputs_longer_than_seq_len_pass_and_shapes_are_bounded(dataset_dir: Path) -> None:
    from data_pipeline.loader import SampleCheck

    m = dataclasses.replace(
        read_manifest(dataset_dir),
        objective="bart",
        packing={"kind": "bart"},
        objective_params={"mask_ratio": 0.3, "insert_ratio": 0.1},
    )
    check = SampleCheck(m)
    ok = {"input_ids": np.full(64 + 30, 5, np.int32), "labels": np.full(64, 5, np.int32)}
    assert check.problem(ok) == ""
    assert "length 1000" in check.problem({**ok, "input_ids": np.full(1000, 5, np.int32)})
    assert "length 63" in check.problem({**ok, "labels": np.full(63, 5, np.int32)})
    assert "members" in check.problem({"input_ids": ok["input_ids"]})


TRAIN = ("configs/tiny-bert.yaml", "trainer.eval_every=0", "data.num_workers=2", "logging.log_every=1")


def test_train_on_edited_manifest_fails_with_one_clear_error(tmp_path: Path, dataset_dir: Path) -> None:
    """It trained (rc 0) before. Now the start-up scan meets the damage first, inside the budget's one error."""
    d = _copy(dataset_dir, tmp_path / "seqlen")
    _rewrite_manifest(d, seq_len=32)
    proc = run_cloze(
        ["train", *TRAIN, f"data.path={d}", f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2"]
    )
    assert proc.returncode != 0
    assert "more than data.skip_budget=0" in proc.stderr and "input_ids has length 64" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # A budget large enough for the scan: the first micro-batch has nothing to train on, one error from the
    # training process (not a DataLoader worker's traceback).
    proc = run_cloze(
        ["train", *TRAIN, f"data.path={d}", f"run_dir={tmp_path / 'run2'}", "trainer.max_steps=2"]
        + ["data.skip_budget=1000000"]
    )
    assert proc.returncode != 0
    assert "every sample of micro-batch 0" in proc.stderr and "input_ids has length 64" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]


def test_resume_on_another_dataset_needs_allow_dataset_change(tmp_path: Path, dataset_dir: Path) -> None:
    run = tmp_path / "run"
    first = run_cloze(["train", *TRAIN, f"data.path={dataset_dir}", f"run_dir={run}", "trainer.max_steps=2"])
    assert first.returncode == 0, first.stderr[-3000:]
    meta = json.loads((run / "checkpoints" / "step00000002" / "checkpoint.json").read_text())
    assert meta["client_state"]["dataset_fingerprint"] == read_manifest(dataset_dir).fingerprint()
    # Another dataset: the same one without its last training shard.
    other = _copy(dataset_dir, tmp_path / "other")
    raw = json.loads((other / "manifest.json").read_text())
    last = [s for s in raw["shards"] if s["split"] == "train"][-1]
    raw["shards"].remove(last)
    raw["splits"]["train"] = {k: raw["splits"]["train"][k] - last[k] for k in ("samples", "tokens")} | {
        "shards": raw["splits"]["train"]["shards"] - 1
    }
    (other / "manifest.json").write_text(json.dumps(raw))
    args = ["train", *TRAIN, f"data.path={other}", f"run_dir={run}", "trainer.max_steps=3"]
    refused = run_cloze(args)
    assert refused.returncode != 0
    assert (
        "trained on another dataset" in refused.stderr and "data.allow_dataset_change=true" in refused.stderr
    )
    assert "Traceback" not in refused.stderr
    allowed = run_cloze([*args, "data.allow_dataset_change=true"])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "data.allow_dataset_change: resuming on" in allowed.stdout
    # The same dataset copied elsewhere is the same dataset.
    assert (
        read_manifest(_copy(dataset_dir, tmp_path / "moved")).fingerprint()
        == read_manifest(dataset_dir).fingerprint()
    )
