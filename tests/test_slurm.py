"""Launching on a real SLURM cluster (munge + slurmctld + four slurmd emulating node1 ... node4 on this machine,
started under a temporary directory) and under real MPI (Open MPI's mpirun, SLURM's pmix plugin)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.slurm.cluster import ClusterError, LocalCluster, install, missing_commands
from tests.conftest import ROOT, cloze_env, read_scalars, run_cloze
from tests.test_writer import OPTS, fingerprint, shards_cli_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    try:
        install()  # apt-get as root when missing (CI); elsewhere, say what to install
    except ClusterError as e:
        if os.geteuid() != 0:
            pytest.skip(f"no SLURM here and not root to install it: {e}")
        raise
    c = LocalCluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


def slurm_env(c: LocalCluster, **extra: str) -> dict[str, str]:
    # OMPI_MCA_btl: two emulated nodes share /dev/shm, where Open MPI's shared-memory transport would collide.
    return cloze_env(SLURM_CONF=str(c.conf), OMPI_MCA_btl="self,tcp", **extra)


def cloze(c: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return run_cloze(list(args), SLURM_CONF=str(c.conf), OMPI_MCA_btl="self,tcp")


def job_id(out: str) -> str:
    m = re.search(r"submitted job (\d+)", out)
    assert m, out
    return m.group(1)


def job_field(c: LocalCluster, job: str, name: str) -> str:
    out = c.run("scontrol", "show", "job", job, "-o").stdout
    m = re.search(rf"\b{name}=(\S+)", out)
    return m.group(1) if m else ""


def wait_job(c: LocalCluster, job: str, timeout: float = 180, nudge: bool = False) -> str:
    """Wait until `job` has ended; return its final JobState. `nudge`: start a requeued job now instead of after
    SLURM's requeue delay (BeginTime, ~2 minutes), which only slows the test down."""
    deadline = time.monotonic() + timeout
    held_since = 0.0
    while time.monotonic() < deadline:
        state = job_field(c, job, "JobState")
        # Ended = out of the queue (a job being requeued passes through other states while still in it).
        queued = c.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
        if not queued and state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", ""):
            return state
        if nudge and state == "PENDING" and job_field(c, job, "Reason") == "BeginTime":
            # Not at once: a relaunch in the second of the requeue finds its credential revoked and fails.
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3:
                c.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not end within {timeout}s (state {job_field(c, job, 'JobState')})")


STEPS = 24
NODES, TASKS = 4, 2
"""The training jobs' shape: more than two nodes and more than one task per node, so the rank mapping (rank = node
x tasks + local rank, the master on the first node) is tested, not assumed (issue 19)."""


def submit(
    c: LocalCluster, dataset_dir: Path, run: Path, *extra: str, nodes: int = NODES, tasks: int = TASKS
) -> str:
    proc = cloze(
        c,
        "submit",
        "configs/tiny-bert.yaml",
        f"data.path={dataset_dir}",
        f"run_dir={run}",
        f"trainer.max_steps={STEPS}",
        "trainer.micro_batch_size=2",  # global batch 16 over 8 ranks
        "trainer.eval_every=0",
        "logging.log_every=1",
        "--nodes",
        str(nodes),
        "--tasks-per-node",
        str(tasks),
        "--gpus-per-node",
        "0",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"tensorboard --logdir {run}/tensorboard" in proc.stdout
    return job_id(proc.stdout)


def rank_logs(run: Path, job: str, restart: int = 0) -> list[str]:
    d = run / "logs" / f"job-{job}-restart-{restart}"
    return [(d / f"rank-{r}.log").read_text() for r in range(NODES * TASKS)]


@pytest.fixture(scope="module")
def finished(cluster: LocalCluster, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("sjob") / "run"
    job = submit(cluster, dataset_dir, run)
    assert wait_job(cluster, job) == "COMPLETED", (run / "slurm" / f"job-{job}.log").read_text()
    return run, job


def test_dry_run_renders_everything_from_config_and_flags(tmp_path: Path, dataset_dir: Path) -> None:
    run = tmp_path / "run"
    proc = run_cloze(
        [
            "submit",
            "configs/tiny-bert.yaml",
            f"data.path={dataset_dir}",
            f"run_dir={run}",
            "slurm.account=proj42",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--partition",
            "gpu",
            "--time",
            "24:00:00",
            "--signal-seconds",
            "600",
            "--max-restarts",
            "3",
            "--setup",
            "module load cuda/12.4",
            "--container",
            "apptainer exec --nv cloze.sif",
            "--env",
            "NCCL_DEBUG=WARN",
            "--dry-run",
            "trainer.global_batch_size=32",
            "trainer.micro_batch_size=1",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "dry run: rendered, not submitted" in proc.stdout
    script = (run / "slurm" / "pretrain.sbatch").read_text()
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",  # one rank per GPU
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --time=24:00:00",
        "#SBATCH --signal=B:USR1@600",
        "#SBATCH --requeue",
        "MAX_RESTARTS=3",
        "module load cuda/12.4",
        "export NCCL_DEBUG=WARN",
        "apptainer exec --nv cloze.sif " + sys.executable,
        f"run_dir={run}",
        f"data.path={dataset_dir}",
        "trainer.global_batch_size=32",
        'scontrol requeue "$SLURM_JOB_ID"',
    ):
        assert line in script, line
    assert "{{" not in script
    assert "slurm.account" not in script.split("launch.cli train", 1)[1]  # the job's own overrides only
    assert subprocess.run(["bash", "-n", str(run / "slurm" / "pretrain.sbatch")]).returncode == 0


def test_submit_refuses_a_bad_run_before_submitting(tmp_path: Path, dataset_dir: Path) -> None:
    proc = run_cloze(["submit", "configs/tiny-bert.yaml", f"data.path={tmp_path / 'nope'}", "--dry-run"])
    assert proc.returncode == 2 and "has no manifest.json" in proc.stderr
    proc = run_cloze(
        ["submit", "configs/tiny-bert.yaml", f"data.path={dataset_dir}", "--nodes", "3", "--dry-run"]
    )
    assert (
        proc.returncode == 2 and "not a multiple of trainer.micro_batch_size=8 x world size 3" in proc.stderr
    )


def test_four_node_two_task_job_trains_and_checkpoints(finished: tuple[Path, str]) -> None:
    run, job = finished
    log = (run / "slurm" / f"job-{job}.log").read_text()
    assert "cloze: training finished" in log and "on node[1-4] (4 nodes x 2 tasks)" in log
    assert sorted(read_scalars(run / "tensorboard", "train/loss")) == list(range(1, STEPS + 1))
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step{STEPS:08d}"
    assert (run / "checkpoints" / f"step{STEPS:08d}" / "COMPLETE").is_file()
    seen = []
    for text in rank_logs(run, job):
        m = re.search(r"cloze: rank (\d)/8 local_rank (\d) SLURM_NODEID=(\d) via slurm; master (\S+)", text)
        assert m, text[:2000]
        seen.append(m.groups())
    # rank = node x 2 + local rank: node1 holds ranks 0-1, node4 ranks 6-7
    assert [(int(r), int(lr), int(n)) for r, lr, n, _ in seen] == [(r, r % 2, r // 2) for r in range(8)]
    assert {m for *_, m in seen} == {f"127.0.0.1:{20000 + int(job) % 10000}"}  # one master


def test_usr1_checkpoints_requeues_and_resumes_exactly(
    cluster: LocalCluster, dataset_dir: Path, tmp_path: Path, finished: tuple[Path, str]
) -> None:
    reference, _ = finished
    run = tmp_path / "run"
    job = submit(cluster, dataset_dir, run)
    rank0 = run / "logs" / f"job-{job}-restart-0" / "rank-0.log"
    deadline = time.monotonic() + 120
    while not (rank0.exists() and re.search(rf"step\s+3/{STEPS}", rank0.read_text())):
        assert time.monotonic() < deadline, "the job never reached step 3"
        time.sleep(0.1)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    assert wait_job(cluster, job, nudge=True) == "COMPLETED"
    assert job_field(cluster, job, "Restarts") == "1"
    log = (run / "slurm" / f"job-{job}.log").read_text()
    assert "requeueing (restart 1 of at most 10)" in log
    stopped = int((run / "logs" / f"job-{job}-restart-0" / "preempted").read_text())
    assert f"cloze: job {job} restart 1 on node[1-4]" in log  # SLURM_RESTART_COUNT=1 in the restarted job
    resumed = rank_logs(run, job, restart=1)[0]
    m = re.search(r"resumed from \S+ at step (\d+)", resumed)
    assert m and 3 <= int(m.group(1)) < STEPS and int(m.group(1)) == stopped, resumed[:3000]
    assert read_scalars(run / "tensorboard", "train/loss") == read_scalars(
        reference / "tensorboard", "train/loss"
    )


def test_a_failing_job_is_not_requeued_and_its_error_is_in_the_job_log(
    cluster: LocalCluster, dataset_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # A NaN loss on rank 0 from step 1 on: NonFiniteLossError after 2 steps, exit 1 (not a preemption).
    job = submit(
        cluster,
        dataset_dir,
        run,
        "trainer.max_nonfinite_steps=2",
        "--plugin",
        "tests.faults",
        "--env",
        "CLOZE_INJECT_NAN=0:1:99",
        nodes=2,
        tasks=1,
    )
    assert wait_job(cluster, job) == "FAILED"
    assert job_field(cluster, job, "Restarts") == "0"
    log = (run / "slurm" / f"job-{job}.log").read_text()
    assert re.search(r"training failed with exit code \d+ \(not a preemption\); not requeueing", log), log[
        -3000:
    ]
    assert "NonFiniteLossError: 2 steps in a row" in log
    assert "requeueing (restart" not in log


def test_preprocess_array_job_equals_a_local_run(
    cluster: LocalCluster, tokenizer_dir: Path, tmp_path: Path
) -> None:
    from data_pipeline.writer import write_shards

    out = tmp_path / "slurm-shards"
    proc = cloze(cluster, "submit-shards", "--slices", "2", "--", *shards_cli_args(tokenizer_dir, out))
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"submitted array job (\d+) \(2 slices\) and merge job (\d+) \(afterok:\1\)", proc.stdout)
    assert m, proc.stdout
    array, merge = m.groups()
    state = wait_job(cluster, merge)
    logs = {p.name: p.read_text()[-2000:] for p in (tmp_path / "slurm-shards-slurm").glob("*.log")}
    assert state == "COMPLETED", logs
    assert job_field(cluster, merge, "Dependency") in ("(null)", "")  # satisfied, then cleared
    assert {job_field(cluster, f"{array}_{i}", "JobState") for i in (0, 1)} == {"COMPLETED"}
    local = tmp_path / "local"
    write_shards(["builtin:stdlib-docs"], tokenizer_dir, local, OPTS, workers=2)
    assert fingerprint(out) == fingerprint(local)


TRAIN = ["-m", "launch.cli", "train", "configs/tiny-bert.yaml", "trainer.max_steps=6", "trainer.eval_every=0"]


def _train_via_mpi(launcher: list[str], c: LocalCluster, dataset_dir: Path, run: Path, nodes: bool) -> None:
    """Run 6 tiny-bert steps under `launcher`; both ranks must say they were discovered through MPI."""
    cmd = [*launcher, sys.executable, *TRAIN, f"data.path={dataset_dir}", f"run_dir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env(c), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # mpirun merges the ranks' output streams byte by byte: two lines can run together, so no \S+ at the end.
    ranks = re.findall(
        r"cloze: rank (\d)/2 local_rank \d( SLURM_NODEID=\d)? via mpi; master [^\s:]+:\d+", proc.stdout
    )
    assert sorted(r for r, _ in ranks) == ["0", "1"], proc.stdout[-3000:]
    if nodes:
        assert sorted(n for _, n in ranks) == [" SLURM_NODEID=0", " SLURM_NODEID=1"]
    assert sorted(read_scalars(run / "tensorboard", "train/loss")) == list(range(1, 7))


def test_mpirun_np_2_trains_with_ranks_from_mpi4py(
    cluster: LocalCluster, dataset_dir: Path, tmp_path: Path
) -> None:
    exported = [a for k in ("OMP_NUM_THREADS", "DS_ACCELERATOR", "OMPI_MCA_btl", "PATH") for a in ("-x", k)]
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", *exported]
    _train_via_mpi(mpirun, cluster, dataset_dir, tmp_path / "run", nodes=False)


def test_srun_mpi_pmix_on_two_nodes_trains_with_ranks_from_mpi4py(
    cluster: LocalCluster, dataset_dir: Path, tmp_path: Path
) -> None:
    _train_via_mpi(
        ["srun", "--mpi=pmix", "-N", "2", "-n", "2"], cluster, dataset_dir, tmp_path / "run", nodes=True
    )


def test_cluster_commands_are_installed() -> None:
    """What the SLURM tests need is installed by the project itself (make test -> launch.slurm.cluster install)."""
    if os.geteuid() != 0 and missing_commands():
        pytest.skip("not root: cannot install SLURM here")
    install()
    assert missing_commands() == []


def test_inconsistent_mpi_and_slurm_views_are_a_clear_error() -> None:
    """An MPI singleton (rank 0 of 1) in an environment that says SLURM task 1 of 2: refuse, naming both."""
    if os.geteuid() != 0 and missing_commands():
        pytest.skip("not root: cannot install Open MPI here")
    install()
    code = "from trainer.distributed import discover; discover()"
    env = cloze_env(PMIX_RANK="1", SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_STEP_ID="0")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert (
        "inconsistent launch: MPI says rank 0 of 1 but SLURM says SLURM_PROCID=1 of SLURM_NTASKS=2"
        in proc.stderr
    )
