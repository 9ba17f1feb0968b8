"""Bad input: a one-line error naming the path and the fix, and nothing half-written left behind."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cloze


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    out = tmp_path / "tok"
    err = one_line_error(
        run_cloze(["tokenizer", "--input", str(missing), "--vocab-size", "100", "--out", str(out)])
    )
    assert str(missing) in err and "does not exist" in err
    assert not out.exists()


def test_missing_input_file_for_shards(tmp_path: Path, tokenizer_dir: Path) -> None:
    missing = tmp_path / "nope.txt"
    out = tmp_path / "ds"
    err = one_line_error(
        run_cloze(["shards", "--input", str(missing), "--tokenizer", str(tokenizer_dir), "--out", str(out)])
    )
    assert str(missing) in err
    assert not out.exists()


def test_empty_corpus(tmp_path: Path, tokenizer_dir: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    out = tmp_path / "tok"
    err = one_line_error(
        run_cloze(["tokenizer", "--input", str(empty), "--vocab-size", "100", "--out", str(out)])
    )
    assert str(empty) in err and "no text" in err
    assert not out.exists() and not any(tmp_path.glob(".tokenizer-tmp-*"))
    ds = tmp_path / "ds"
    err = one_line_error(
        run_cloze(["shards", "--input", str(empty), "--tokenizer", str(tokenizer_dir), "--out", str(ds)])
    )
    assert str(empty) in err and "no documents" in err
    assert not ds.exists()


def test_corpus_too_small_for_seq_len(tmp_path: Path, tokenizer_dir: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("A short document.\n\nAnother one.\n")
    ds = tmp_path / "ds"
    err = one_line_error(
        run_cloze(
            [
                "shards",
                "--input",
                str(small),
                "--tokenizer",
                str(tokenizer_dir),
                "--seq-len",
                "512",
                "--out",
                str(ds),
            ]
        )
    )
    assert "--seq-len 512" in err and "lower --seq-len" in err
    assert not ds.exists()


def test_tokenizer_dir_without_model(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some text here.\n")
    out = tmp_path / "ds"
    err = one_line_error(
        run_cloze(["shards", "--input", str(corpus), "--tokenizer", str(tok), "--out", str(out)])
    )
    assert str(tok) in err and "tokenizer.model" in err and "cloze tokenizer" in err
    assert not out.exists()


def test_shard_dir_without_manifest(tmp_path: Path) -> None:
    data = tmp_path / "shards"
    data.mkdir()
    (data / "train-000000.tar").write_bytes(b"")
    run_dir = tmp_path / "run"
    err = one_line_error(
        run_cloze(["train", "configs/tiny-bert.yaml", f"data.path={data}", f"run_dir={run_dir}"])
    )
    assert str(data) in err and "manifest.json" in err and "cloze shards" in err
    assert not run_dir.exists()
    err = one_line_error(run_cloze(["inspect", str(data)]))
    assert "manifest.json" in err


def test_bad_config_key_from_the_command_line(tmp_path: Path) -> None:
    err = one_line_error(run_cloze(["train", "configs/tiny-bert.yaml", "optimizer.lrr=1"]))
    assert "optimizer.lrr" in err and "did you mean optimizer.lr" in err


def test_existing_dataset_is_not_overwritten(tmp_path: Path, dataset_dir: Path, tokenizer_dir: Path) -> None:
    before = (dataset_dir / "manifest.json").read_bytes()
    err = one_line_error(
        run_cloze(
            [
                "shards",
                "--input",
                "builtin:stdlib-docs",
                "--tokenizer",
                str(tokenizer_dir),
                "--out",
                str(dataset_dir),
            ]
        )
    )
    assert "already holds a dataset" in err
    assert (dataset_dir / "manifest.json").read_bytes() == before
