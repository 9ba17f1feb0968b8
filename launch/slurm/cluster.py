"""A real SLURM cluster on this machine, for tests and for trying `cloze submit` without a cluster: munge,
slurmctld and one slurmd daemon per emulated node (node1 ... node4 by default), everything under one directory.

    python -m launch.slurm.cluster install         # apt-get the Debian packages (root), if missing
    python -m launch.slurm.cluster up DIR          # start; prints `export SLURM_CONF=DIR/slurm.conf`
    python -m launch.slurm.cluster down DIR        # stop the daemons by their PID files

`make slurm-up` / `make slurm-down` wrap the last two (DIR = /tmp/cloze-slurm).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cloze_errors import ClozeError

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "openmpi-bin", "libopenmpi-dev"]
COMMANDS = ["slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "mpirun"]
NODES = 4
"""Emulated nodes by default: enough for a job of more than two nodes with several tasks on each (4 x 2 ranks)."""


class ClusterError(ClozeError, RuntimeError):
    """The local cluster could not be installed or started; the message says what to do."""


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def install() -> None:
    """apt-get the packages when a command is missing (needs root and Debian/Ubuntu)."""
    if not missing_commands():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterError(
            f"missing {', '.join(missing_commands())}; install the Debian packages {' '.join(PACKAGES)} "
            "(as root: apt-get install -y ...)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    """n consecutive free ports (slurmd's Port=P1-P2 range wants them consecutive)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + n))
    raise ClusterError("no free consecutive ports for slurmctld and slurmd")


class LocalCluster:
    """munged + slurmctld + one slurmd per node under `root`; `env()` is what client commands and jobs need."""

    def __init__(self, root: str | Path, cpus_per_node: int = 2, nodes: int = NODES) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus_per_node
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def start(self, timeout: float = 30) -> None:
        install()
        r = self.root
        for sub in (
            "munge",
            "state",
            "log",
            *(f"spool/{n}" for n in self.nodes),
            *(f"tmp/{n}" for n in self.nodes),
        ):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        os.chmod(r / "munge", 0o755)  # munged refuses a socket directory others can write to
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        sock = r / "munge" / "munge.socket"
        subprocess.run(
            [
                _sbin("munged"),
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--seed-file={r / 'munge' / 'munge.seed'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        ctld, *ports = _free_ports(1 + len(self.nodes))
        names = f"node[1-{len(self.nodes)}]"
        host = socket.gethostname()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=cloze-local",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={ctld}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={sock}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "JobRequeue=1",
                    "KillWait=5",
                    "MinJobAge=3600",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool' / '%n'}",
                    f"TmpFS={r / 'tmp' / '%n'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    f"NodeName={names} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[0]}-{ports[-1]} "
                    f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
                    f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = self.env()
        subprocess.run([_sbin("slurmctld"), "-i"], env=env, check=True, capture_output=True)
        for node in self.nodes:
            subprocess.run([_sbin("slurmd"), "-N", node], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if out.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes):
                return
            time.sleep(0.2)
        self.stop()
        log = (
            (r / "log" / "slurmctld.log").read_text()[-1500:]
            if (r / "log" / "slurmctld.log").exists()
            else ""
        )
        raise ClusterError(
            f"the local SLURM nodes did not become idle within {timeout:.0f}s; slurmctld log:\n{log}"
        )

    def pid_files(self) -> list[Path]:
        r = self.root
        return [*(r / f"slurmd-{n}.pid" for n in self.nodes), r / "slurmctld.pid", r / "munge" / "munged.pid"]

    def stop(self) -> None:
        """SIGTERM each daemon named by a PID file, then SIGKILL what is still running after 5 s."""
        pids = []
        for f in self.pid_files():
            try:
                pid = int(f.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; PID 1 may reap it late


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.slurm.cluster", description=__doc__)
    p.add_argument("action", choices=["install", "up", "down"])
    p.add_argument("dir", nargs="?", default="/tmp/cloze-slurm")
    p.add_argument("--nodes", type=int, default=NODES, help=f"emulated nodes (default {NODES})")
    args = p.parse_args(argv)
    try:
        if args.action == "install":
            install()
            print("SLURM, munge and Open MPI are installed")
        elif args.action == "up":
            cluster = LocalCluster(args.dir, nodes=args.nodes)
            cluster.start()
            print(
                f"local SLURM cluster up ({', '.join(cluster.nodes)}) under {cluster.root}\n"
                f"export SLURM_CONF={cluster.conf}"
            )
        else:
            LocalCluster(args.dir, nodes=args.nodes).stop()
            print(f"local SLURM cluster under {args.dir} stopped")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
