"""Running the server in the background and stopping it again.

`start --background` does not fork: forking a process that has imported MLX (Metal) aborts on
macOS. It re-executes `python -m pensieve.cli start …` as a new session leader with its output
in the log file, then watches: the child writes the PID file once it has bound the port, and
/health says "loading" until the model is in memory and "ok" after. If the child exits first,
the reason is read back from the JSON log (its ERROR lines) or, for a crash before logging was
set up, from its captured stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import click

from pensieve.cli.common import fetch_health
from pensieve.utils import Settings
from pensieve.utils.paths import state_dir
from pensieve.utils.pidfile import (
    PidInfo,
    pid_file_path,
    process_alive,
    read_pid_file,
    remove_pid_file,
)

POLL_S = 0.2
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress:
    """A spinner on a terminal; on anything else, one line per phase (readable in CI logs)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.phase = ""
        self.ticks = 0

    def update(self, phase: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.ticks += 1
            frame = SPINNER[self.ticks % len(SPINNER)]
            click.echo(f"\r\033[K{frame} {phase} ({elapsed:.0f}s)", nl=False, err=True)
        elif phase != self.phase:
            click.echo(f"… {phase}", err=True)
        self.phase = phase

    def done(self) -> None:
        if self.tty:
            click.echo("\r\033[K", nl=False, err=True)


def stderr_capture_path() -> Path:
    return state_dir() / "pensieve.stderr"


def launch_background(settings: Settings, args: list[str], log_file: Path, wait_timeout: float) -> int:
    """Start the server detached and wait until it is ready; returns the exit code for `start`."""
    state_dir().mkdir(parents=True, exist_ok=True)
    offset = log_file.stat().st_size if log_file.exists() else 0
    capture = stderr_capture_path()
    with open(capture, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pensieve.cli", "start", "--daemon-child", *args],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    return _wait_until_ready(proc, settings, log_file, offset, wait_timeout)


def _wait_until_ready(
    proc: subprocess.Popen[bytes], settings: Settings, log_file: Path, offset: int, wait_timeout: float
) -> int:
    progress = Progress()
    deadline = time.monotonic() + wait_timeout
    while True:
        code = proc.poll()
        if code is not None:
            progress.done()
            reason = failure_reason(log_file, offset, stderr_capture_path()) or f"it exited with code {code}"
            click.echo(f"Pensieve failed to start: {reason}", err=True)
            click.echo(f"Log: {log_file}", err=True)
            return code or 1
        info = read_pid_file(pid_file_path())
        if info is not None and info.pid == proc.pid:
            health = fetch_health(info.url, timeout=2)
            status = health.get("status")
            if status == "ok" or (status == "starting" and not settings.model.preload):
                progress.done()
                _announce(info, health, log_file)
                return 0
            model = health.get("model", settings.model.default)
            progress.update(f"loading model {model}" if status in ("loading", "starting") else "waiting for /health")
        else:
            progress.update("starting the server")
        if time.monotonic() > deadline:
            progress.done()
            click.echo(
                f"Pensieve is still not ready after {wait_timeout:.0f}s; it keeps starting in the background "
                f"(PID {proc.pid}). Follow it with `pensieve logs -f`, check `pensieve status`.",
                err=True,
            )
            return 1
        time.sleep(POLL_S)


def _announce(info: PidInfo, health: dict[str, object], log_file: Path) -> None:
    click.echo(f"Pensieve is running at {info.url} (PID {info.pid}), serving {health.get('model')}")
    click.echo(f"Logs: {log_file}  ·  stop with `pensieve stop`")


def failure_reason(log_file: Path, offset: int, capture: Path) -> str | None:
    """Why a background start failed: ERROR lines logged since `offset`, else stderr's tail."""
    errors: list[str] = []
    try:
        with open(log_file, "rb") as handle:
            if handle.seek(0, os.SEEK_END) < offset:
                offset = 0  # rotated meanwhile
            handle.seek(offset)
            for raw in handle:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if record.get("level") in ("ERROR", "CRITICAL") and record.get("message") not in errors:
                    errors.append(record["message"])
    except OSError:
        pass
    if errors:
        return "; ".join(errors[-3:])
    try:
        lines = [ln.strip() for ln in capture.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    explicit = [ln.removeprefix("Error: ") for ln in lines if ln.startswith("Error: ")]
    if explicit:
        return explicit[-1]
    return " | ".join(deque(lines, maxlen=3)) or None


def stop_server(info: PidInfo, timeout: float, force: bool) -> str:
    """SIGTERM (drain), wait; with `force`, SIGKILL if still running. Returns what happened.

    Raises click.ClickException if the server is still running and `force` was not given.
    """
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        remove_pid_file(pid_file_path(), info.pid)
        return "already gone"
    progress = Progress()
    if _wait_gone(info.pid, timeout, progress, "finishing in-flight requests"):
        progress.done()
        return "stopped"
    if not force:
        progress.done()
        raise click.ClickException(
            f"Pensieve (PID {info.pid}) is still running after {timeout:.0f}s, finishing in-flight requests; "
            "wait, or run `pensieve stop --force` to kill it"
        )
    os.kill(info.pid, signal.SIGKILL)
    _wait_gone(info.pid, 10, progress, "killing")
    progress.done()
    remove_pid_file(pid_file_path(), info.pid)  # a killed server cannot remove its own
    return "killed"


def _wait_gone(pid: int, timeout: float, progress: Progress, phase: str) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        progress.update(f"stopping PID {pid}: {phase}")
        time.sleep(POLL_S)
    return True
