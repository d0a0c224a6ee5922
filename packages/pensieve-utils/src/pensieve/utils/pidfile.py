"""The PID file: how `pensieve stop/status/restart/logs` find the running server.

`pensieve.pid` holds the number and a newline, nothing else, as gunicorn and nginx write theirs,
so `kill $(cat pensieve.pid)`, `pkill -F pensieve.pid` and systemd's `PIDFile=` read it. What
the number does not say (host, port, start arguments, log and config files) is in
`pensieve.state.json` beside it. The server writes both atomically (temporary file, then
rename) right after it binds, the state first: a reader never sees half a file, finds the state
of the PID it read, and knows from the PID file's presence that the port is really open. Both
are removed on exit; a PID file left by a crash is recognised as stale by probing the PID. The
probe checks that the process is alive, not a zombie, and (where the OS says) really a Pensieve
process, so a PID reused by another program is never signalled. Nothing here looks processes
up by name.

Reading the file is a check, not a claim: two servers started at the same instant on different
ports would both find it free. The claim is an exclusive `flock` on a lock file beside it, held
for the server's lifetime; the OS drops it when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from pensieve.utils.paths import state_dir

PID_FILE_NAME = "pensieve.pid"


def pid_file_path() -> Path:
    return state_dir() / PID_FILE_NAME


@dataclass(slots=True)
class PidInfo:
    pid: int
    host: str
    port: int
    started_at: float = field(default_factory=time.time)
    log_file: str | None = None
    config_file: str | None = None
    args: list[str] = field(default_factory=list)
    """`pensieve start` arguments of the running server, reused by `pensieve restart`."""

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server (wildcard binds -> loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def lock_server_slot(path: Path) -> IO[bytes] | None:
    """Take the one-server-per-user lock beside PID file `path`; None if another process has it.

    Keep the returned file open for as long as the server runs; closing it releases the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "ab")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def state_file_path(pid_file: Path) -> Path:
    """`pensieve.state.json` beside `pensieve.pid`."""
    return pid_file.with_name(f"{pid_file.stem}.state.json")


def write_pid_file(path: Path, info: PidInfo) -> None:
    """Write the state (readable only by the user: it holds the start arguments), then the PID."""
    _write_atomically(state_file_path(path), json.dumps(asdict(info)), 0o600)
    _write_atomically(path, f"{info.pid}\n", 0o644)


def _write_atomically(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_pid_file(path: Path) -> PidInfo | None:
    """The recorded server, or None if there is no PID file.

    An unreadable PID file reads as PID -1 (stale); a PID whose state file is missing or belongs
    to another PID keeps its number with no address, so it can still be stopped.
    """
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return PidInfo(pid=-1, host="", port=0)
    try:
        info = PidInfo(**json.loads(state_file_path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return PidInfo(pid=pid, host="", port=0)
    return info if info.pid == pid else PidInfo(pid=pid, host="", port=0)


def remove_pid_file(path: Path, pid: int | None = None) -> bool:
    """Remove the PID and state files; with `pid`, only if they still name that process."""
    if pid is not None:
        info = read_pid_file(path)
        if info is None or info.pid != pid:
            return False
    with contextlib.suppress(FileNotFoundError):
        state_file_path(path).unlink()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False


def process_alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie, exited but not yet reaped, counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def is_pensieve_process(pid: int) -> bool | None:
    """Whether `pid` runs Pensieve, from its command line; None if the OS will not say.

    A Pensieve server runs as `python -m pensieve.cli start …` or `…/bin/pensieve start …`;
    one of its arguments is then `pensieve.cli` or a path whose last part is `pensieve`.
    """
    args: list[str] | None = None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except OSError:
        if sys.platform != "win32":
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5
                )
                args = out.stdout.split() if out.returncode == 0 else None
    if not args:
        return None
    return any(arg == "pensieve.cli" or os.path.basename(arg) == "pensieve" for arg in args)


def running_server(path: Path | None = None) -> tuple[PidInfo | None, PidInfo | None]:
    """(live server, stale record): at most one is set; both None if there is no PID file."""
    path = path or pid_file_path()
    info = read_pid_file(path)
    if info is None:
        return None, None
    if process_alive(info.pid) and is_pensieve_process(info.pid) is not False:
        return info, None
    return None, info
