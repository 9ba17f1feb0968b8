"""Data mixtures (data_pipeline/mixture.py, data.mixture): realised shares, the sample order as a pure function
of (seed, global sample index) through stages, exact and elastic resume, and the errors a mixture can meet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_pipeline.loader import StreamSource, StreamSpec, TrainStream
from data_pipeline.mixture import MixtureError, MixtureOrder, plan_mixture, temperature_weights
from tests.conftest import write_stdlib_corpus
from trainer.config import ConfigError, load_config


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Path]:
    """Three small MLM datasets of different sizes over one tokenizer."""
    from data_pipeline.writer import ShardOptions, write_shards

    root = tmp_path_factory.mktemp("mix")
    out = []
    for name, docs in (("small", 60), ("medium", 200), ("large", 500)):
        corpus = write_stdlib_corpus(root / f"{name}.txt", docs)
        d = root / name
        write_shards(
            [str(corpus)],
            tokenizer_dir,
            d,
            ShardOptions(seq_len=32, seed=3, docs_per_block=64, valid_fraction=0.1),
            workers=1,
        )
        out.append(d)
    return out


def test_temperature_weights_follow_n_to_the_alpha() -> None:
    sizes = [1000.0, 100.0, 10.0]
    p = temperature_weights(sizes, 0.3)
    want = np.asarray(sizes) ** 0.3
    assert np.allclose(p, want / want.sum())
    assert np.allclose(temperature_weights(sizes, 1.0), np.asarray(sizes) / sum(sizes))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(MixtureError, match=f"alpha={bad}"):
            temperature_weights(sizes, bad)


def test_realised_shares_match_within_one_percent_through_stages() -> None:
    """10^5 samples: each stage's realised shares match its configured ones (to far better than 1%), and every
    source is read as one gap-free sequence across the stage change."""
    p0 = temperature_weights([77_000, 71_000, 5_000, 300, 40_000], 0.3)
    p1 = (0.1, 0.1, 0.3, 0.4, 0.1)
    batch = 64
    order = MixtureOrder([(0, p0), (500, p1)], seed=11, unit=1, global_batch=batch)
    located = order.locate_many(range(100_000))
    src = np.asarray([k for k, _ in located])
    cut = 500 * batch
    for part, p in ((src[:cut], p0), (src[cut:], p1)):
        realised = np.bincount(part, minlength=5) / len(part)
        assert np.abs(realised - np.asarray(p)).max() < 0.01
        assert np.abs(realised - np.asarray(p)).max() < 5 / len(part)  # stratified: a few samples at most
    for k in range(5):
        positions = sorted(j for s, j in located if s == k)
        assert positions == list(range(len(positions))), f"source {k} repeats or skips a sample"
    # pure function of the index: far out, in any order, the same answer
    assert order.locate(10**12) == MixtureOrder([(0, p0), (500, p1)], 11, 1, batch).locate(10**12)
    assert order.locate_many([99_999, 5]) == [located[99_999], located[5]]
    assert MixtureOrder([(0, p0)], 12, 1, batch).locate_many(range(50)) != located[:50]  # the seed matters


def test_unit_step_gives_each_step_one_source() -> None:
    batch = 8
    order = MixtureOrder([(0, (0.5, 0.25, 0.25))], seed=0, unit=batch, global_batch=batch)
    steps = [{order.locate(s * batch + i)[0] for i in range(batch)} for s in range(400)]
    assert all(len(s) == 1 for s in steps)
    per_source = np.bincount([next(iter(s)) for s in steps]) / 400
    assert np.abs(per_source - [0.5, 0.25, 0.25]).max() < 0.01
    # a step's samples are consecutive in its source's own sequence
    first = [order.locate(s * batch)[1] for s in range(40)]
    assert all(order.locate(s * batch + 7)[1] == first[s] + 7 for s in range(40))


def global_steps(
    dirs: list[Path], seed: int, world: int, micro: int, batch: int, start_step: int, steps: int, stages
) -> list[list[bytes]]:
    """The samples of steps start_step.. of a mixture run on `world` ranks, put back in global order from every
    rank's micro-batches (layout (accum, world, micro))."""
    plan = plan_mixture([(str(d), "", 0.0) for d in dirs], 0.3, "sample", stages)
    order = plan.order(seed, batch)
    ranks = []
    for r in range(world):
        spec = StreamSpec(batch, micro, world, r, start_step * batch, seed)
        sources = [StreamSource(d, "train", name=n) for d, n in zip(plan.paths, plan.names, strict=True)]
        ranks.append(iter(TrainStream(dirs[0], spec, sources=sources, mixture=order)))
    accum = batch // (micro * world)
    out = []
    for _ in range(steps):
        step: list[bytes] = []
        per_rank = [[next(it) for _ in range(accum)] for it in ranks]
        counts = sum(int(mb[TrainStream.COUNTS_KEY].sum()) for mbs in per_rank for mb in mbs)
        assert counts == batch
        for a in range(accum):
            for r in range(world):
                ids = per_rank[r][a]["input_ids"].numpy()
                step.extend(row.tobytes() for row in ids)
        out.append(step)
    return out


def test_resume_mid_stage_reads_what_the_uninterrupted_run_read_on_any_world_size(three: list[Path]) -> None:
    """Stage change at step 3; a run stopped at step 5 (mid-stage) and resumed on 2 ranks, or on 1 rank with the
    same global batch, reads exactly the samples the uninterrupted 2-rank run read at steps 5-8."""
    stages = [(3, 0.0, {"small": 3.0, "medium": 1.0, "large": 1.0})]
    whole = global_steps(three, 5, world=2, micro=2, batch=8, start_step=0, steps=9, stages=stages)
    same = global_steps(three, 5, world=2, micro=2, batch=8, start_step=5, steps=4, stages=stages)
    elastic = global_steps(three, 5, world=1, micro=4, batch=8, start_step=5, steps=4, stages=stages)
    assert same == whole[5:] and elastic == whole[5:]
    assert len({row for step in whole for row in step}) > 40  # real, varied samples
    other = global_steps(three, 6, world=2, micro=2, batch=8, start_step=5, steps=4, stages=stages)
    assert other != whole[5:]  # the seed decides the order


def test_plan_checks_and_names(three: list[Path], tmp_path: Path) -> None:
    plan = plan_mixture([(str(d), "", 0.0) for d in three], 0.3, "sample")
    assert plan.names == ["small", "medium", "large"]
    sizes = [sum(s.tokens for s in m.shards_of("train")) for m in plan.manifests]
    assert np.allclose(plan.stages[0][1], temperature_weights(sizes, 0.3))
    weighted = plan_mixture([(str(three[0]), "a", 1.0), (str(three[1]), "b", 3.0)], 0.3, "sample")
    assert weighted.stages[0][1] == (0.25, 0.75) and weighted.fingerprint() != plan.fingerprint()
    with pytest.raises(MixtureError, match="share the name"):
        plan_mixture([(str(three[0]), "x", 0.0), (str(three[1]), "x", 0.0)], 0.3, "sample")
    with pytest.raises(MixtureError, match="weight of source 'b' is -1.0"):
        plan_mixture([(str(three[0]), "a", 1.0), (str(three[1]), "b", -1.0)], 0.3, "sample")
    with pytest.raises(MixtureError, match=r"missing: \['large'\]"):
        plan_mixture([(str(d), "", 0.0) for d in three], 0.3, "sample", [(5, 0.0, {"small": 1, "medium": 1})])
    # another tokenizer: refused, naming both datasets
    other = tmp_path / "other"
    shutil.copytree(three[1], other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer"]["sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MixtureError, match=f"{other} was written with another tokenizer"):
        plan_mixture([(str(three[0]), "", 0.0), (str(other), "", 0.0)], 0.3, "sample")


def test_config_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  mixture:\n    sources: [{path: a}, {path: b}]\n")
    assert load_config(cfg).data.mixture.unit == "sample"
    for override, message in (
        ("data.mixture.alpha=0", r"alpha=0.0: it must be in \(0, 1\]"),
        ("data.mixture.alpha=1.5", r"alpha=1.5"),
        ("data.mixture.unit=batch", "use 'sample' or 'step'"),
        ("data.mixture.sources=[{path: a, weight: 1}, {path: b}]", "give every source a weight, or none"),
        ("data.mixture.sources=[{path: a, weight: -1}, {path: b, weight: 1}]", "weights must be > 0"),
        ("data.mixture.stages=[{step: 0, alpha: 0.5}]", "stage steps must be > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(cfg, [override])


def test_prepare_refuses_data_path_with_a_mixture(three: list[Path], tmp_path: Path) -> None:
    from trainer.state import prepare

    cfg = load_config(
        "configs/tiny-bert.yaml",
        [f"data.mixture.sources=[{{path: {three[0]}}}, {{path: {three[1]}}}]", f"data.path={three[0]}"],
    )
    with pytest.raises(ConfigError, match="are both set"):
        prepare(cfg, 1)
    cfg.data.path = ""
    state = prepare(cfg, 1)
    assert state.mixture is not None and state.data_path == str(three[0])
    assert state.fingerprint == state.mixture.fingerprint() != state.manifest.fingerprint()
    text = cfg.to_yaml_absolute(tmp_path)
    assert str(three[1]) in text
    # Every path key is written absolute (a resume or a SLURM job may start elsewhere): model.teacher too.
    cfg.model.teacher, cfg.model.init_from = "runs/teacher", "hf/init"
    model = yaml.safe_load(cfg.to_yaml_absolute(tmp_path))["model"]
    assert model["teacher"] == str(tmp_path / "runs/teacher") and model["init_from"] == str(
        tmp_path / "hf/init"
    )
    cfg.model.teacher = "???"  # configs/distilbert.yaml's "required" marker stays as it is
    assert yaml.safe_load(cfg.to_yaml_absolute(tmp_path))["model"]["teacher"] == "???"
