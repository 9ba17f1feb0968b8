"""Every file cloze writes gets the mode open() would give it (0o666 less the umask), every directory mkdir's: on a
shared cluster, datasets, run directories and exports are as readable as the user's umask says, never 0600 because
a temporary file was renamed into place."""

from __future__ import annotations

import os
import stat
from itertools import islice
from pathlib import Path

import pytest

from data_pipeline.manifest import atomic_write, current_umask
from tests.conftest import run_cloze


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        atomic_write(tmp_path / "a", b"x")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
        os.umask(0o002)
        atomic_write(tmp_path / "a", b"y")  # a new file replaces the old: the mode of the current umask
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def _modes(roots: list[Path], mask: int) -> list[str]:
    """Every file or directory under `roots` whose mode differs from what open() / mkdir() give under `mask`."""
    bad = []
    for root in roots:
        for p in [root, *root.rglob("*")]:
            if p.is_symlink():
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            # DeepSpeed copies its zero_to_fp32.py / zero_to_torch.py next to the checkpoints and adds u+x.
            if p.suffix == ".py" and p.parent.name == "checkpoints":
                want |= stat.S_IXUSR
            if mode != want:
                bad.append(f"{p.relative_to(root.parent)}: {oct(mode)}, expected {oct(want)}")
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_dataset_run_and_export_files_follow_the_umask(
    tmp_path: Path, tokenizer_dir: Path, mask: int
) -> None:
    from data_pipeline.sources import stdlib_docstrings

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(d) for d in islice(stdlib_docstrings(), 600)) + "\n")
    ds, part, run, hf = tmp_path / "ds", tmp_path / "part", tmp_path / "run", tmp_path / "hf"
    shards = ["shards", "--input", str(corpus), "--tokenizer", str(tokenizer_dir), "--seq-len", "64"]
    shards += ["--docs-per-block", "200", "--valid-fraction", "0.05", "--quiet"]
    old = os.umask(mask)  # the commands below inherit it
    try:
        whole = run_cloze([*shards, "--out", str(ds)])
        assert whole.returncode == 0, whole.stderr[-3000:]
        # One slice of two: its .build/ (plan, block records, tokenizer) stays until the merge.
        one = run_cloze([*shards, "--out", str(part), "--num-slices", "2", "--slice", "0"])
        assert one.returncode == 0, one.stderr[-3000:]
        train = run_cloze(
            ["train", "configs/tiny-bert.yaml", f"data.path={ds}", f"run_dir={run}", "trainer.max_steps=2"]
            + ["trainer.eval_every=0", "trainer.global_batch_size=8", "checkpoint.every_steps=1"]
        )
        assert train.returncode == 0, train.stderr[-3000:]
        export = run_cloze(["export", str(run), "--out", str(hf)])
        assert export.returncode == 0, export.stderr[-3000:]
    finally:
        os.umask(old)
    for must in (ds / "manifest.json", ds / "tokenizer.model", run / "checkpoints" / "latest"):
        assert must.is_file()
    assert (hf / "model.safetensors").is_file() and any((part / ".build").glob("block-*.json"))
    assert _modes([ds, part, run, hf], mask) == []
