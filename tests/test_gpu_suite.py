"""benchmarks/gpu.py, the GPU suite (issue 18): its dry mode on CPU runs every case through the same code path and
prints the table, and its install planning picks the right carried wheels (without installing anything)."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu
from tests.conftest import cloze_env, run_script

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def table(lines: list[str]) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")
    ]


def test_dry_mode_prints_every_case_with_sane_numbers() -> None:
    env = {
        k: v for k, v in cloze_env().items() if k not in LAUNCHER_VARS and not k.startswith(("OMPI_", "PMI"))
    }
    start = time.time()
    out = run_script("benchmarks/gpu.py", "--dry", env=env)
    wall = time.time() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    final = next(i for i, line in enumerate(lines) if line.startswith("### GPU suite: CPU"))
    streamed, rows = table(lines[:final]), table(lines[final:])
    header, rows = rows[0], rows[1:]
    assert header == [c.strip() for c in gpu.HEADER.strip("|").split("|")]
    expected = [(model, system) for model, *_ in gpu.SHAPES for system in gpu.SYSTEMS]
    assert [(r[0], r[3]) for r in rows] == [(m, gpu.SYSTEM_NAMES[s]) for m, s in expected]
    assert len(streamed) == 1 + len(expected)  # each row printed as it was measured, after the header
    col = {name: i for i, name in enumerate(header)}
    for r in rows:
        assert r[col["note"]] == "", r
        assert float(r[col["tokens/s"]].replace(",", "")) > 0, r
        assert float(r[col["TFLOP/s"]]) > 0, r
        # no peak FLOP/s and no GPU memory on CPU
        assert r[col["MFU"]] == "n/a" and r[col["peak GiB"]] == "n/a", r
        assert r[col["precision"]] == "bf16" and r[col["micro-batch"]] == str(gpu.DRY_BATCH)
        if r[3] == "bare torch":
            assert r[col["vs torch"]] == "1.00"
    seqs = [gpu.DRY_SEQ[seq] for _, _, seq, *_ in gpu.SHAPES for _ in gpu.SYSTEMS]
    assert [r[col["seq"]].split("/")[0] for r in rows] == [str(s) for s in seqs]
    assert all(r[col["seq"]].count("/") == r[0].startswith("t5") for r in rows)  # T5: inputs/targets
    assert wall < 120, f"the dry mode took {wall:.0f} s"


def test_budget_skips_stops_and_fails_cases_without_losing_a_row() -> None:
    cases = gpu.make_cases(dry=True, models=["bert-base"], systems=None, scale=1.0)  # 2 shapes x 4 systems
    shown: list[gpu.Case] = []

    def run(case: gpu.Case) -> None:
        if case.system == "transformers":
            raise RuntimeError("CUDA out of memory.\nmore")
        if case.seq == gpu.DRY_SEQ[128] and case.system == "torch":
            time.sleep(30)  # still running at the deadline + grace: stopped by the alarm
        case.tokens_s = case.tflops = 1.0

    def guess(case: gpu.Case, prev: gpu.Case | None) -> float:
        return 100.0 if case.system == "zero3" else 0.0

    start = time.time()
    gpu.run_cases(cases, run, deadline_at=time.time() + 0.5, grace_s=0.5, guess=guess, show=shown.append)
    assert time.time() - start < 5
    assert [id(c) for c in shown] == [id(c) for c in cases]  # each once, in order
    notes = [(c.system, c.note.split(":")[0]) for c in cases]
    assert notes == [
        ("zero1", ""),
        ("torch", ""),
        ("transformers", "failed"),
        ("zero3", "skipped"),  # 100 s guessed, 0.5 s left
        ("zero1", ""),
        ("torch", "stopped"),
        ("transformers", "stopped"),
        ("zero3", "stopped"),
    ]
    assert cases[2].note == "failed: RuntimeError: CUDA out of memory."
    lines = [gpu.row(c, "bf16", cases) for c in cases]
    assert lines[0].split("|")[-3].strip() == "1.00"  # vs the bare torch row of its shape
    assert lines[5].split("|")[6].strip() == "-"  # no tokens/s for a stopped case


def fake_wheel(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any"
):
    """A wheel file with just its METADATA (what planning reads)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)
    return path


def installed(versions: dict[str, str]):
    return lambda name: versions.get(name)


def test_plan_installs_what_is_missing_needs_first(tmp_path: Path) -> None:
    fake_wheel(tmp_path, "deepspeed", "0.19.8", ("hjson", "msgpack", "pydantic>=2.0.0", "torch>=2.0.0"))
    fake_wheel(tmp_path, "hjson", "3.1.0")
    fake_wheel(tmp_path, "pydantic", "2.14.4", ("pydantic-core==2.50.5", 'email-validator; extra == "email"'))
    fake_wheel(tmp_path, "pydantic_core", "2.50.5", ('typing-extensions>=4.16.0; python_version >= "3"',))
    fake_wheel(tmp_path, "typing_extensions", "4.16.0")
    fake_wheel(tmp_path, "webdataset", "1.0.2", ("braceexpand", "numpy", "pyyaml"))
    fake_wheel(tmp_path, "braceexpand", "0.1.7")
    image = {"torch": "2.11.0", "numpy": "2.5.2", "pyyaml": "6.0.3", "typing-extensions": "4.12.0"}
    plan = gpu.plan_install(tmp_path, installed(image))
    names = [w.name for w in plan.install]  # typing-extensions: the image's 4.12 is too old for pydantic-core
    assert sorted(names) == sorted(
        ["deepspeed", "hjson", "pydantic", "pydantic-core", "typing-extensions", "webdataset", "braceexpand"]
    )
    assert len(plan.missing) == 1 and plan.missing[0].startswith("msgpack (needed by deepspeed 0.19.8")
    assert "torch 2.11.0" in plan.present
    assert not any("email" in line for line in plan.present + plan.missing)  # an extra's needs are not needs

    # once installed, their needs are read from what is installed (here: the same metadata)
    everything = {**image, **{w.name: w.version for w in plan.install}, "msgpack": "1.1.0"}
    requires = {w.name: list(w.requires) for w in gpu.read_wheels(tmp_path)}
    done = gpu.plan_install(tmp_path, installed(everything), requires=lambda n: requires.get(n, []))
    assert done.install == [] and done.missing == []
    assert "pydantic-core 2.50.5" in done.present  # a need of the installed pydantic
    gone = gpu.plan_install(
        tmp_path / "absent", installed(everything), requires=lambda n: requires.get(n, [])
    )
    assert gone.install == [] and gone.missing == []


def test_plan_checks_the_needs_of_an_installed_deepspeed(tmp_path: Path) -> None:
    image = {"deepspeed": "0.19.8", "webdataset": "1.0.2", "braceexpand": "0.1.7", "torch": "2.11.0"}
    requires = {"deepspeed": ["hjson", "torch>=2.0.0"], "torch": ["sympy>=1.13"]}
    plan = gpu.plan_install(tmp_path, installed(image), requires=lambda n: requires.get(n, []))
    assert plan.install == []
    assert plan.missing == [
        "hjson (needed by deepspeed 0.19.8; installed: no; carried: no)"
    ]  # not torch's sympy


def test_plan_refuses_wheels_for_another_python(tmp_path: Path) -> None:
    from packaging.tags import Tag

    fake_wheel(tmp_path, "deepspeed", "0.19.8", ("pydantic-core",))
    fake_wheel(tmp_path, "pydantic_core", "2.50.5", tag="cp312-cp312-manylinux_2_17_x86_64")
    cp311 = frozenset({Tag("py3", "none", "any"), Tag("cp311", "cp311", "manylinux_2_17_x86_64")})
    plan = gpu.plan_install(tmp_path, installed({}), supported=cp311, roots=("deepspeed",))
    assert [w.name for w in plan.install] == ["deepspeed"]
    assert "not for this Python/platform" in plan.missing[0]
    cp312 = cp311 | {Tag("cp312", "cp312", "manylinux_2_17_x86_64")}
    plan = gpu.plan_install(tmp_path, installed({}), supported=cp312, roots=("deepspeed",))
    assert [w.name for w in plan.install] == ["deepspeed", "pydantic-core"] and plan.missing == []
    old = gpu.plan_install(tmp_path, installed({}), supported=cp312, roots=("deepspeed>=0.20",))
    assert old.install == [] and "carried: deepspeed-0.19.8-py3-none-any.whl" in old.missing[0]


def test_check_wheels_names_versions_and_platform(tmp_path: Path) -> None:
    assert "make wheels" in gpu.check_wheels(tmp_path / "absent")[0]
    for name, version in gpu.CARRIED.items():
        tag = "cp312-cp312-manylinux_2_17_x86_64" if name == "pydantic-core" else "py3-none-any"
        fake_wheel(tmp_path, name, version, tag=tag)
    assert gpu.check_wheels(tmp_path) == []
    assert main_rc(["--check-wheels", str(tmp_path)]) == 0

    (tmp_path / "hjson-3.1.0-py3-none-any.whl").unlink()
    fake_wheel(tmp_path, "hjson", "3.0.0")
    fake_wheel(tmp_path, "webdataset", "0.2.100")
    fake_wheel(tmp_path, "einops", "0.8.2")
    next(tmp_path.glob("pydantic_core-*.whl")).unlink()
    fake_wheel(
        tmp_path, "pydantic_core", gpu.CARRIED["pydantic-core"], tag="cp311-cp311-manylinux_2_17_x86_64"
    )
    problems = "\n".join(gpu.check_wheels(tmp_path))
    assert "hjson: hjson-3.0.0-py3-none-any.whl is version 3.0.0, not 3.1.0" in problems
    assert "webdataset: 2 wheels" in problems
    assert "pydantic-core" in problems and "does not install on CPython 3.12" in problems
    assert "einops-0.8.2-py3-none-any.whl: not one of the carried wheels" in problems
    assert main_rc(["--check-wheels", str(tmp_path)]) == 1


def main_rc(argv: list[str]) -> int:
    before = dict(os.environ)
    try:
        return gpu.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(before)


def test_op_builds_are_refused_on_the_gpu(monkeypatch) -> None:
    """On the GPU the suite turns any DeepSpeed JIT op build (minutes of device time) into an error naming it."""
    import deepspeed
    from deepspeed.ops.op_builder import builder

    monkeypatch.setattr(builder.OpBuilder, "jit_load", builder.OpBuilder.jit_load)  # restored after the test
    gpu.forbid_op_builds()
    op = deepspeed.get_accelerator().create_op_builder("CPUAdamBuilder")
    with pytest.raises(RuntimeError, match="would JIT-compile its cpu_adam op; the GPU suite never compiles"):
        op.jit_load()
