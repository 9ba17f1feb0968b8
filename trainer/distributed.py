"""Rank / world / master discovery and the few collectives the loop needs.

Discovery order: torchrun (RANK + WORLD_SIZE + MASTER_ADDR/PORT); MPI when an MPI launcher started the
processes (mpirun, or srun --mpi=pmix: OMPI_COMM_WORLD_SIZE / PMIX_RANK / PMI_SIZE; ranks from mpi4py, master
broadcast from rank 0, and under SLURM checked against SLURM_PROCID / SLURM_NTASKS); SLURM (plain srun tasks:
SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, master = the first node of the allocation at its NodeAddr, port from
the job id, or MASTER_ADDR / MASTER_PORT when the batch script exported them); else a single process here. The result is exported as the env:// variables
torch.distributed reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cloze_errors import ClozeError

MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE")
"""Variables an MPI launcher sets (Open MPI's mpirun, SLURM's pmix plugin, PMI-1/2)."""


class DistributedError(ClozeError, RuntimeError):
    """An inconsistent launch environment, named."""


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str
    """'torchrun', 'slurm', 'mpi' or 'single'."""

    def describe(self) -> str:
        node = os.environ.get("SLURM_NODEID")
        where = f" SLURM_NODEID={node}" if node is not None else ""
        return (
            f"rank {self.rank}/{self.world_size} local_rank {self.local_rank}{where} via {self.source}; "
            f"master {self.master_addr}:{self.master_port}"
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def _int_env(name: str, env: dict[str, str]) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_master(env: dict[str, str]) -> str:
    """The address of the allocation's first node: MASTER_ADDR if the batch script set it, else that node's
    NodeAddr as SLURM knows it (a node name need not resolve in DNS), else its name."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if not nodelist:
        raise DistributedError(
            "SLURM_PROCID is set but SLURM_JOB_NODELIST is not; launch the tasks with srun"
        )
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
        first = out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # A plain host name (no brackets) needs no expansion.
        if "[" not in nodelist:
            return nodelist.split(",")[0]
        raise DistributedError(
            f"cannot expand SLURM_JOB_NODELIST={nodelist!r}: is scontrol on PATH?"
        ) from None
    try:
        node = subprocess.run(
            ["scontrol", "show", "node", first, "-o"], capture_output=True, text=True, check=True
        ).stdout
        for field in node.split():
            if field.startswith("NodeAddr="):
                return field.split("=", 1)[1]
    except (OSError, subprocess.CalledProcessError):
        pass
    return first


def slurm_port(env: dict[str, str]) -> int:
    """MASTER_PORT if set, else a port derived from the job id, the same on every task, in 20000-29999."""
    if env.get("MASTER_PORT"):
        return _int_env("MASTER_PORT", env)
    return 20000 + _int_env("SLURM_JOB_ID", env) % 10000 if env.get("SLURM_JOB_ID") else 29500


def discover(env: dict[str, str] | None = None) -> DistInfo:
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or a launcher that set env:// variables
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise DistributedError(
                f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun"
            )
        info = DistInfo(
            rank=_int_env("RANK", env),
            world_size=_int_env("WORLD_SIZE", env),
            local_rank=_int_env("LOCAL_RANK", env) if "LOCAL_RANK" in env else 0,
            master_addr=env["MASTER_ADDR"],
            master_port=_int_env("MASTER_PORT", env),
            source="torchrun",
        )
    elif any(k in env for k in MPI_MARKERS):
        info = _discover_mpi(env)
    elif "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and _int_env("SLURM_NTASKS", env) > 1:
        info = DistInfo(
            rank=_int_env("SLURM_PROCID", env),
            world_size=_int_env("SLURM_NTASKS", env),
            local_rank=_int_env("SLURM_LOCALID", env),
            master_addr=slurm_master(env),
            master_port=slurm_port(env),
            source="slurm",
        )
    else:
        port = _int_env("MASTER_PORT", env) if "MASTER_PORT" in env else free_port()
        info = DistInfo(0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"), port, "single")
    if not 0 <= info.rank < info.world_size:
        raise DistributedError(
            f"rank {info.rank} is outside world size {info.world_size} ({info.source} environment)"
        )
    return info


def _discover_mpi(env: dict[str, str]) -> DistInfo:
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the MPI install
        raise DistributedError(
            f"launched under MPI but mpi4py cannot load MPI ({e}); install Open MPI"
        ) from None
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:  # srun --mpi=pmix: both views must agree
        slurm = (_int_env("SLURM_PROCID", env), _int_env("SLURM_NTASKS", env))
        if slurm != (rank, size):
            raise DistributedError(
                f"inconsistent launch: MPI says rank {rank} of {size} but SLURM says SLURM_PROCID={slurm[0]} of "
                f"SLURM_NTASKS={slurm[1]}; launch with `srun --mpi=pmix` (one MPI process per task) or plain srun"
            )
    master = comm.bcast((_host_address(), free_port()) if rank == 0 else None, root=0)
    addr = env.get("MASTER_ADDR") or master[0]
    port = int(env.get("MASTER_PORT") or master[1])
    return DistInfo(rank, size, local.Get_rank(), addr, port, "mpi")


def _host_address() -> str:
    """This host's address for the rendezvous: its name if it resolves, else loopback (a one-host MPI run)."""
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
        return name
    except OSError:
        return "127.0.0.1"


# ---- collectives used by the loop (torch.distributed, initialised by the engine) ----------------------------


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def barrier() -> None:
    if initialized():
        dist.barrier()


def shutdown(barrier: bool = True) -> None:
    """Leave the process group on a clean exit: every rank reaches this, then the group is destroyed.

    Exiting with a live gloo group lets its threads be torn down by static destructors in a random order, which
    aborts a rank now and then ("terminate called without an active exception", SIGABRT) after all work is done.
    Only for a process about to exit: DeepSpeed caches its groups per process, so no engine can be built after.
    `barrier=False` on an error path, where the other ranks may never reach it."""
    if initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (no collective on one rank). NCCL reduces only CUDA tensors: the values travel on
    this rank's GPU there."""
    t = torch.tensor(values, dtype=torch.float64)
    if initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: object, src: int = 0) -> object:
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank ([obj] without a process group)."""
    if not initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1
