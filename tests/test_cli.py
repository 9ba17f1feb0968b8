"""The `cloze` command line (issue 13): one error class caught in one place, defaults owned by the code that uses
them, arguments parsed as given (no rewriting of argv)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest

from cloze_errors import ClozeError
from launch import cli


def test_every_user_error_kind_is_a_cloze_error() -> None:
    from data_pipeline.hf_tokenizer import TokenizerExportError
    from data_pipeline.loader import SkipBudgetExhausted
    from data_pipeline.objectives import ObjectiveError
    from data_pipeline.sources import InputError
    from data_pipeline.tasks import TaskError
    from launch.slurm.submit import SubmitError
    from modeling.config import ModelConfigError
    from modeling.hf import ExportError
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.distributed import DistributedError
    from trainer.finetune import FinetuneError

    kinds = [
        InputError,
        ObjectiveError,
        TokenizerExportError,
        SkipBudgetExhausted,
        TaskError,
        ModelConfigError,
    ]
    kinds += [ExportError, ConfigError, CheckpointError, DistributedError, FinetuneError, SubmitError]
    assert all(issubclass(k, ClozeError) for k in kinds)
    # Errors of the input or the config: every rank meets them alike, so one rank prints them.
    assert [k.same_on_every_rank for k in (InputError, ObjectiveError, ConfigError, ModelConfigError)] == [
        True
    ] * 4
    assert not CheckpointError.same_on_every_rank and not DistributedError.same_on_every_rank
    # The kinds keep their old bases, so code catching ValueError / RuntimeError still does.
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, RuntimeError)


def test_the_cli_catches_any_cloze_error_once_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class NewKind(ClozeError):
        pass

    def fails(args: argparse.Namespace) -> int:
        raise NewKind(f"{args.dir}: what went wrong and what to do")

    monkeypatch.setattr(cli, "_cmd_verify", fails)
    assert cli.main(["verify", "somewhere"]) == cli.EXIT_USAGE == 2
    assert capsys.readouterr().err == "cloze verify: error: somewhere: what went wrong and what to do\n"

    def bug(args: argparse.Namespace) -> int:
        raise KeyError("a bug keeps its traceback")

    monkeypatch.setattr(cli, "_cmd_verify", bug)
    with pytest.raises(KeyError):
        cli.main(["verify", "somewhere"])


def test_flag_defaults_come_from_the_options_they_set() -> None:
    from data_pipeline.sources import SourceOptions
    from data_pipeline.tokenizer import train_tokenizer
    from data_pipeline.writer import ShardOptions, write_shards
    from launch.demo import run_demo

    parser = cli.build_parser()
    tok = parser.parse_args(["tokenizer", "--input", "x", "--out", "o"])
    sig = inspect.signature(train_tokenizer).parameters
    for key in ("vocab_size", "model_type", "character_coverage", "input_sentence_size"):
        assert getattr(tok, key) == sig[key].default, key
    shards = parser.parse_args(["shards", "--input", "x", "--tokenizer", "t", "--out", "o"])
    opts, src = ShardOptions(), SourceOptions()
    for key in (
        "objective",
        "seq_len",
        "seed",
        "valid_fraction",
        "docs_per_block",
        "dupe_factor",
        "sentence_task",
        "doc_boundaries",
        "global_tokens",
    ):
        assert getattr(shards, key) == getattr(opts, key), key
    for args in (tok, shards):
        assert (args.format, args.text_mode, args.field, args.column) == (
            src.format,
            src.text_mode,
            src.field,
            src.column,
        )
    sig = inspect.signature(write_shards).parameters
    assert (shards.workers, shards.num_slices, shards.slice) == (
        sig["workers"].default,
        sig["num_slices"].default,
        sig["slice_index"].default,
    )
    demo = parser.parse_args(["demo"])
    sig = inspect.signature(run_demo).parameters
    assert (demo.out, demo.nproc, demo.steps) == (
        sig["out"].default,
        sig["nproc"].default,
        sig["steps"].default,
    )
    # inspect's flags not given are left out, so data_pipeline.inspect's own defaults apply
    assert vars(parser.parse_args(["inspect", "d"])).keys().isdisjoint({"n", "split", "max_samples"})


def test_arguments_are_parsed_as_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    # `cloze shards merge DIR` is a subcommand of shards, not a rewritten argv
    merge = parser.parse_args(["shards", "merge", "some/dir"])
    assert merge.fn is cli._cmd_merge and merge.dir == "some/dir"
    assert cli.main(["shards", "merge", str(tmp_path)]) == 2  # merge's own error: nothing to merge there
    assert capsys.readouterr().err.startswith(f"cloze shards: error: {tmp_path}")
    assert cli.main(["shards", "--out", str(tmp_path / "ds")]) == 2  # shards needs its inputs unless merging
    assert (
        capsys.readouterr().err
        == "cloze shards: error: --input, --tokenizer required (or: cloze shards merge DIR)\n"
    )
    # overrides before and after the flags
    sub = parser.parse_args(["submit", "bert-base", "a.b=1", "--nodes", "2", "c.d=x", "--dry-run", "e=[1,2]"])
    assert (sub.config, sub.overrides, sub.nodes, sub.dry_run) == (
        "bert-base",
        ["a.b=1", "c.d=x", "e=[1,2]"],
        2,
        True,
    )
    train = parser.parse_args(["train", "tiny-bert", "--trusted", "x=1"])
    assert (train.config, train.overrides, train.trusted) == ("tiny-bert", ["x=1"], True)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "tiny-bert", "--no-such-flag"])
    src = inspect.getsource(cli)
    assert "sys.argv" not in src and "parse_known_args(argv" not in src
