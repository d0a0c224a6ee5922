"""Whether this process was started as one rank of a group by `mlx.launch`, read from its environment.

The CLI needs the answer before MLX is imported (a background start never imports it): only
rank 0 may claim the PID file and bind HTTP, and a follower writes its own log file.
"""

from __future__ import annotations

from collections.abc import Mapping

_LAUNCHED_BY = (("MLX_JACCL_COORDINATOR", "jaccl"), ("NCCL_HOST_IP", "nccl"), ("MLX_HOSTFILE", "ring"))
"""What `mlx.launch` sets for each backend (mlx/_distributed_utils/launch.py), most specific first."""


def launched_backend(env: Mapping[str, str]) -> str | None:
    """The backend `mlx.launch` (or `mpirun`) prepared this process for; None when started alone.

    A ring launch on one host writes an empty hostfile: that is a group of one, so alone too.
    """
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpi" if int(env["OMPI_COMM_WORLD_SIZE"]) > 1 else None
    if "MLX_RANK" not in env:
        return None
    for variable, backend in _LAUNCHED_BY:
        if env.get(variable):
            if backend == "ring" and not _has_content(env[variable]):
                return None
            return backend
    return None


def launched_rank(env: Mapping[str, str]) -> int | None:
    """This process's rank in the group `mlx.launch` started; None when started alone."""
    if launched_backend(env) is None:
        return None
    return int(env.get("MLX_RANK", env.get("OMPI_COMM_WORLD_RANK", "0")))


def _has_content(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as file:
            return bool(file.read().strip())
    except OSError:
        return False
