"""Every bad input named, nothing left behind: damaged compressed input, a full disk, the wrong text field, a corpus
too small for the options, config errors under torchrun, kill -9 of a multi-worker shard job, and progress."""

from __future__ import annotations

import errno
import functools
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import tokenizer as tokenizer_mod
from data_pipeline import writer
from data_pipeline.inspect import inspect_dataset
from data_pipeline.manifest import read_manifest
from data_pipeline.objectives import ObjectiveError, build_objective
from data_pipeline.sources import InputError
from data_pipeline.tokenizer import Tokenizer, train_tokenizer, vocab_of
from launch import cli
from tests.conftest import ROOT, cloze_env, run_cloze, torchrun_cloze
from tests.test_errors import one_line_error

WORDS = [
    "the",
    "a",
    "model",
    "reads",
    "text",
    "of",
    "many",
    "kinds",
    "and",
    "learns",
    "which",
    "word",
    "fits",
    "where",
    "each",
    "sentence",
    "ends",
]


def corpus(n_docs: int, seed: int = 0) -> str:
    """`n_docs` documents of a few sentences each, separated by blank lines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sents = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
            for _ in range(3)
        ]
        docs.append("\n".join(sents))
    return "\n\n".join(docs) + "\n"


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """`cloze ARGV` in this process: exit code 2 and one error line on stderr, no traceback."""
    rc = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


# ---- damaged compressed input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_names_the_file_and_line_and_stops(tmp_path, tokenizer_dir, capsys, damage):
    text = corpus(3000).encode()
    packed = bytearray(gzip.compress(text))
    if damage == "truncated":
        packed = packed[: len(packed) * 2 // 3]
    else:
        packed[len(packed) * 2 // 3] ^= 0xFF
    bad = tmp_path / "part-0001.txt.gz"
    bad.write_bytes(bytes(packed))
    out = tmp_path / "ds"
    err = cli_error(
        capsys, ["shards", "--input", str(bad), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    )
    line = int(re.search(r"after line (\d+)", err).group(1))  # type: ignore[union-attr]
    assert str(bad) in err and "damaged" in err and "stopped" in err
    assert 0 < line < text.count(b"\n")
    assert not out.exists()
    err = cli_error(
        capsys, ["tokenizer", "--input", str(bad), "--vocab-size", "200", "--out", str(tmp_path / "t")]
    )
    assert str(bad) in err and "after line" in err


def test_parquet_with_a_corrupt_page_names_the_row_group(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": corpus(300).split("\n\n")}), path, row_group_size=100)
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 16] = b"\xff" * 16  # the page header of row group 1
    path.write_bytes(bytes(raw))
    out = tmp_path / "ds"
    err = cli_error(
        capsys, ["shards", "--input", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    )
    assert str(path) in err and "row group 1" in err and "stopped" in err
    assert not out.exists()


# ---- a full disk -----------------------------------------------------------------------------------------------


def test_disk_full_names_the_path_keeps_the_work_and_the_rerun_resumes(
    tmp_path, tokenizer_dir, capsys, monkeypatch
):
    text = tmp_path / "c.txt"
    text.write_text(corpus(240))
    args = [
        "--input",
        str(text),
        "--tokenizer",
        str(tokenizer_dir),
        "--seq-len",
        "32",
        "--docs-per-block",
        "60",
    ]
    args += ["--valid-fraction", "0.1", "--quiet"]
    clean, out = tmp_path / "clean", tmp_path / "ds"
    assert cli.main(["shards", *args, "--out", str(clean)]) == 0
    capsys.readouterr()

    real_write = writer.ShardTarWriter.write

    def full_after_two_blocks(self, key, sample):  # the third block's first shard hits ENOSPC
        if key.startswith("train-000002"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, key, sample)

    monkeypatch.setattr(writer.ShardTarWriter, "write", full_after_two_blocks)
    err = cli_error(capsys, ["shards", *args, "--out", str(out)])
    assert "disk full" in err and str(out / "train-000002.tar.tmp") in err
    assert "rerun the same command" in err and "resumes" in err and "2 finished block(s)" in err
    assert not list(out.glob("*.tmp")), "a partial shard is removed (it only takes space)"
    assert len(list((out / writer.BUILD).glob("block-*.json"))) == 2

    monkeypatch.setattr(writer.ShardTarWriter, "write", real_write)
    seen: list[dict[str, float]] = []
    real_write_shards = writer.write_shards

    @functools.wraps(real_write_shards)  # the CLI reads its flag defaults from write_shards' signature
    def recording(*a, progress, **kw):
        def both(p):
            seen.append(p)
            progress(p)

        return real_write_shards(*a, progress=both, **kw)

    monkeypatch.setattr(writer, "write_shards", recording)
    assert cli.main(["shards", *args, "--out", str(out)]) == 0
    assert (
        "reused 2 block(s) (120 documents) written by an earlier run; wrote 2 block(s)"
        in capsys.readouterr().out
    )
    last = seen[-1]
    assert last["reused_blocks"] == 2 and last["written_blocks"] == 2
    # the rates count this run's work only: documents of reused blocks are not documents written per second
    assert last["written_documents"] == 120 and last["documents"] == 240
    m = read_manifest(out)
    assert [(s.name, s.sha256) for s in m.shards] == [(s.name, s.sha256) for s in read_manifest(clean).shards]


# ---- inputs that give no documents, corpora too small for the options ------------------------------------------


def test_wrong_jsonl_field_says_which_field_and_what_was_there(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"body": f"text number {i}", "id": i}) + "\n" for i in range(5)))
    out = tmp_path / "ds"
    err = cli_error(
        capsys, ["shards", "--input", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    )
    assert "'text'" in err and "5 absent" in err and "body" in err and "--field" in err
    assert not out.exists()
    err = cli_error(
        capsys, ["tokenizer", "--input", str(path), "--vocab-size", "100", "--out", str(tmp_path / "t")]
    )
    assert "'text'" in err and "5 absent" in err and "body" in err and "--field" in err
    numbers = tmp_path / "n.jsonl"
    numbers.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(3)) + '{"text": null}\n')
    err = cli_error(
        capsys, ["shards", "--input", str(numbers), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    )
    assert "3 int" in err and "1 NoneType" in err


def test_non_text_parquet_column_names_its_type(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3], "content": ["a b", "c d", "e f"]}), path)
    err = cli_error(
        capsys,
        ["shards", "--input", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ds")],
    )
    assert "'text' holds int64" in err and "content" in err and "--column" in err


def test_valid_fraction_too_small_says_the_corpus_size(tmp_path, tokenizer_dir, capsys):
    text = tmp_path / "c.txt"
    text.write_text(corpus(40))
    out = tmp_path / "ds"
    argv = ["shards", "--input", str(text), "--tokenizer", str(tokenizer_dir), "--seq-len", "32"]
    err = cli_error(capsys, [*argv, "--valid-fraction", "0.001", "--out", str(out)])
    assert "40 documents" in err and "tokens" in err and "--valid-fraction 0 " in err
    suggested = re.search(r"use --valid-fraction ([0-9.]+) \(", err)
    assert suggested, err
    assert cli.main([*argv, "--valid-fraction", suggested.group(1), "--quiet", "--out", str(out)]) == 0


def test_vocab_size_too_large_says_the_largest_that_works(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text(corpus(60))
    with pytest.raises(InputError) as e:
        train_tokenizer([str(text)], tmp_path / "t", vocab_size=32000)
    most = int(re.search(r"rerun with --vocab-size (\d+)", str(e.value)).group(1))  # type: ignore[union-attr]
    assert "--vocab-size 32000" in str(e.value) and f"at most {most}" in str(e.value)
    assert train_tokenizer([str(text)], tmp_path / "t", vocab_size=most).vocab_size == most
    with pytest.raises(InputError) as e:
        train_tokenizer([str(text)], tmp_path / "t2", vocab_size=50)
    least = int(re.search(r"rerun with --vocab-size (\d+) or more", str(e.value)).group(1))  # type: ignore[union-attr]
    assert "--vocab-size 50 is too small" in str(e.value)
    assert train_tokenizer([str(text)], tmp_path / "t2", vocab_size=least).vocab_size == least


# ---- config errors ---------------------------------------------------------------------------------------------


def test_override_errors_name_the_override():
    from trainer.config import ConfigError, load_config

    for override, key in [
        ("optimizer.lr=abc", "optimizer.lr"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("trainer.max_steps=x", "trainer.max_steps"),
        ("model.preset=nope", "model.preset"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config("configs/tiny-bert.yaml", [override])
        assert f"override {override}" in str(e.value) and key in str(e.value), e.value
        assert "configs/tiny-bert.yaml" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny-bert.yaml", ["trainer.lr=abc"])
    assert "override trainer.lr=abc" in str(e.value) and "did you mean optimizer.lr" in str(e.value)


def test_data_path_that_is_a_file_says_so(tmp_path, dataset_dir):
    run_dir = tmp_path / "run"
    err = one_line_error(
        run_cloze(
            [
                "train",
                "configs/tiny-bert.yaml",
                f"data.path={dataset_dir / 'manifest.json'}",
                f"run_dir={run_dir}",
            ]
        )
    )
    assert "is a file, not a directory" in err and str(dataset_dir) in err


def test_config_error_under_torchrun_is_printed_once_and_first():
    proc = torchrun_cloze(["train", "configs/tiny-bert.yaml", "optimizer.lr=abc"])
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count("override optimizer.lr=abc") == 1, text
    first = text.index("override optimizer.lr=abc")
    assert "Traceback" not in text[:first] and "ChildFailedError" not in text[:first]


# ---- T5 lengths, inspect splits --------------------------------------------------------------------------------


def test_t5_seq_len_suggestions_are_accepted(tokenizer_dir):
    vocab = vocab_of(Tokenizer(tokenizer_dir))
    tried = 0
    for options in (
        {},
        {"mean_noise_span_length": 5.0},
        {"noise_density": 0.3, "mean_noise_span_length": 2.0},
    ):
        for seq_len in range(8, 160):
            try:
                build_objective("t5", vocab, seq_len, options)
            except ObjectiveError as e:
                if "cannot be filled exactly" not in str(e):
                    continue
                suggested = [int(x) for x in re.findall(r"\d+", str(e).split("use --seq-len", 1)[1])]
                assert suggested, e
                for length in suggested:
                    build_objective("t5", vocab, length, options)  # raises if a suggestion does not work
                tried += 1
    assert tried > 0


def test_inspect_unknown_split_lists_the_splits(dataset_dir):
    with pytest.raises(InputError) as e:
        inspect_dataset(dataset_dir, split="bogus")
    assert "'bogus'" in str(e.value) and "train (" in str(e.value) and "valid (" in str(e.value)


# ---- no process left behind ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_shards_main_process_ends_its_workers(tmp_path, tokenizer_dir):
    cmd = [sys.executable, "-m", "launch.cli", "shards", "--input", "builtin:stdlib-docs", "--tokenizer"]
    cmd += [
        str(tokenizer_dir),
        "--docs-per-block",
        "100",
        "--workers",
        "2",
        "--quiet",
        "--out",
        str(tmp_path / "ds"),
    ]
    main = subprocess.Popen(
        cmd, cwd=ROOT, env=cloze_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and main.poll() is None:
            workers = [p for p in _children(main.pid) if _alive(p)]
            time.sleep(0.1)
        assert len(workers) == 2, "the job should have started 2 workers"
        main.send_signal(signal.SIGKILL)
        main.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in workers if _alive(p)]
        for p in left:  # do not leave them behind even when the test fails
            os.kill(p, signal.SIGKILL)
        assert not left, f"workers {left} outlived their parent"
    finally:
        if main.poll() is None:
            main.kill()


# ---- progress --------------------------------------------------------------------------------------------------


def test_tokenizer_reports_progress_while_reading_and_training(tmp_path, monkeypatch):
    text = tmp_path / "c.txt"
    text.write_text(corpus(200))
    lines: list[str] = []
    train_tokenizer([str(text)], tmp_path / "t", vocab_size=150, progress=lines.append)
    assert lines[0].startswith("tokenizer: reading")
    assert any("read 600 sentences" in ln and "training unigram, vocab 150" in ln for ln in lines), lines
    assert lines[-1].startswith("tokenizer: trained in")
    # while reading a long input, a line every PROGRESS_SECONDS
    monkeypatch.setattr(tokenizer_mod, "PROGRESS_SECONDS", 0.0)
    lines.clear()
    train_tokenizer([str(text)], tmp_path / "t2", vocab_size=150, progress=lines.append)
    assert sum(1 for ln in lines if ln.startswith("tokenizer: read ") and "training" not in ln) >= 100
