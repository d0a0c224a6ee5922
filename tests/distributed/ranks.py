"""A group of `pensieve start` ranks on loopback: under `mlx.launch`, or started the way it starts them.

`mlx.launch --backend ring` writes a hostfile (one `ip:port` list per rank) to a temporary file,
exports `MLX_HOSTFILE` and `MLX_RANK`, and runs the command once per rank
(mlx/_distributed_utils/launch.py). Starting the ranks directly with those two variables is
the same thing minus the launcher, which lets a test signal one rank and watch the others
react by themselves (the launcher would stop the whole group as soon as one rank exits).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port, health

PENSIEVE = str(Path(sys.executable).parent / "pensieve")
MLX_LAUNCH = str(Path(sys.executable).parent / "mlx.launch")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cpu_seconds(pid: int) -> float:
    """User and system CPU time `pid` has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Ranks:
    """`size` ranks serving `model`; rank 0's HTTP port is `port`."""

    def __init__(
        self,
        home: Path,
        model: Path,
        *,
        size: int = 2,
        launcher: bool = True,
        env: dict[str, str] | None = None,
        rank_env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        """`rank_env`: more environment for one rank (started without the launcher only)."""
        self.home = home
        self.size = size
        self.launcher = launcher
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = ["start", "--model", str(model), "--port", str(self.port)]
        self.env = {**os.environ, "PENSIEVE_HOME": str(home), **(env or {})}
        for name in ("MLX_RANK", "MLX_HOSTFILE"):
            self.env.pop(name, None)
        self.rank_env = rank_env or {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, timeout: float = 120) -> Ranks:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.launcher:
            self._launch()
        else:
            self._start_each()
        deadline = time.monotonic() + timeout
        while health(self.base_url).get("status") != "ok":
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                for proc in self.procs:  # a group that fails to start stops as a whole, by itself
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)
                self.stop()
                raise RuntimeError(f"the group did not become healthy:\n{self.log_text()}")
            time.sleep(0.3)
        return self

    def _launch(self) -> None:
        log = self.home / "launch.log"
        self.logs = [log]
        command = [MLX_LAUNCH, "-n", str(self.size), "--backend", "ring", "--starting-port", str(free_port()), PENSIEVE, *self.args]
        with open(log, "wb") as out:
            # A pipe for stdin: mlx.launch forwards its stdin to the ranks and, given /dev/null,
            # polls the end of file in a loop, a core's worth of CPU.
            self.procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=self.env)]

    def _start_each(self) -> None:
        hostfile = self.home / "hostfile.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(self.size)]))
        for rank in range(self.size):
            log = self.home / f"rank{rank}.log"
            self.logs.append(log)
            env = {**self.env, **self.rank_env.get(rank, {}), "MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(rank)}
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen([PENSIEVE, *self.args], stdout=out, stderr=subprocess.STDOUT, env=env))

    def rank_pids(self) -> list[int]:
        """Each rank's process id, by rank (under the launcher: its children, by their MLX_RANK)."""
        if not self.launcher:
            return [p.pid for p in self.procs]
        launcher = self.procs[0].pid
        # It starts each rank from a thread of its own: every thread's children.
        children = [c for task in Path(f"/proc/{launcher}/task").iterdir() for c in (task / "children").read_text().split()]
        by_rank = {}
        for pid in map(int, children):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = next(int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"MLX_RANK="))
            by_rank[rank] = pid
        return [by_rank[r] for r in range(self.size)]

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def stop(self) -> list[int | None]:
        """Ctrl-C on rank 0 (the group stops with it); each process's exit code (the launcher's alone under it)."""
        if self.procs and self.procs[0].poll() is None:
            with contextlib.suppress(OSError, KeyError, StopIteration):
                os.kill(self.rank_pids()[0], signal.SIGINT)
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes
