"""The PID file: how `pensieve stop/status/restart` find the running server.

The server writes it atomically (temporary file, then rename) right after it binds, so a reader
never sees half a file and a file's presence means the port is really open. It is removed on
exit; a file left by a crash is recognised as stale by probing the PID. The probe checks that
the process is alive, not a zombie, and (where the OS says) really a Pensieve process, so a PID
reused by another program is never signalled. Nothing here looks processes up by name.

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


def write_pid_file(path: Path, info: PidInfo) -> None:
    """Write atomically, readable only by the user (it holds the start arguments)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(info), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_pid_file(path: Path) -> PidInfo | None:
    """The recorded server, or None if there is no file or it is unreadable (treated as stale)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PidInfo(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return PidInfo(pid=-1, host="", port=0)


def remove_pid_file(path: Path, pid: int | None = None) -> bool:
    """Remove the file; with `pid`, only if it still names that process (not a successor's)."""
    if pid is not None:
        info = read_pid_file(path)
        if info is None or info.pid != pid:
            return False
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
