"""`pensieve stop`, `status`, `restart` and `logs`: living with a server started earlier.

They find the server through the PID file only, never by process name, and check that the PID
is still a live Pensieve before signalling it, so a stale file (a crash, a reboot) is cleaned
up instead of hitting whatever process inherited the number.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import click

from pensieve.cli.common import (
    default_log_file,
    fetch_health,
    human_bytes,
    human_duration,
    log_file_for,
)
from pensieve.cli.daemon import stop_server
from pensieve.utils import PensieveError, load_settings
from pensieve.utils.pidfile import PidInfo, pid_file_path, remove_pid_file, running_server

NOT_RUNNING = 3
"""`status` exit code when no server runs (the LSB convention for init scripts)."""


def _live_or_clean() -> PidInfo | None:
    """The running server, cleaning up (and saying so) if the PID file is stale."""
    live, stale = running_server()
    if stale is not None and remove_pid_file(pid_file_path(), stale.pid):
        click.echo(f"Removed a stale PID file: PID {stale.pid} is no longer running.", err=True)
    return live


def _stop_timeout(timeout: float | None) -> float:
    """By default, the drain timeout plus time to unload: the server's own deadline, not ours."""
    if timeout is not None:
        return timeout
    try:
        return load_settings().server.drain_timeout_s + 15
    except PensieveError:
        return 60.0


_TIMEOUT_HELP = "Seconds to wait for in-flight requests to finish (default: server.drain_timeout_s + 15)."


@click.command()
@click.option("--timeout", type=float, default=None, help=_TIMEOUT_HELP)
@click.option("--force", is_flag=True, help="Kill (SIGKILL) the server if it is still running after --timeout.")
def stop(timeout: float | None, force: bool) -> None:
    """Stop the server: SIGTERM lets in-flight requests finish, then it exits."""
    live = _live_or_clean()
    if live is None:
        click.echo("Pensieve is not running.")
        return
    outcome = stop_server(live, _stop_timeout(timeout), force)
    click.echo(f"Pensieve (PID {live.pid}) {outcome}.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the PID file and /health as JSON.")
def status(as_json: bool) -> None:
    """Is the server running? Its PID, model, memory, uptime and requests served."""
    live = _live_or_clean()
    if live is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("Pensieve is not running.")
        sys.exit(NOT_RUNNING)
    health = fetch_health(live.url)
    if as_json:
        click.echo(json.dumps({"running": True, "pid": live.pid, "url": live.url, "log_file": live.log_file, "health": health}))
    else:
        _print_status(live, health)
    sys.exit(0 if health.get("status") == "ok" else 1)


def _print_status(live: PidInfo, health: dict[str, Any]) -> None:
    click.echo(f"Pensieve is running (PID {live.pid}) at {live.url}")
    if not health:
        click.echo("  health:   not answering (starting, or stuck: see `pensieve logs`)")
        return
    rows = [("status", health.get("status"))]
    for entry in health.get("models", []):
        detail = entry.get("state", "?")
        if entry.get("context_length"):
            detail += f", {entry['context_length']}-token context"
        if entry.get("error"):
            detail += f": {entry['error']}"
        rows.append(("model", f"{entry.get('name')} ({detail})"))
    rows += _group_rows(health.get("distributed"))
    memory = health.get("memory", {})
    rows.append(("memory", f"active {human_bytes(memory.get('active_bytes'))}, peak {human_bytes(memory.get('peak_bytes'))}, cache {human_bytes(memory.get('cache_bytes'))}"))
    disk = health.get("prefix_cache_disk")
    if disk:
        held = f"{human_bytes(disk.get('bytes'))} of prompt prefixes on disk in {disk.get('files', '?')} files"
        rows.append(("cache", f"{held}, up to {human_bytes(disk.get('max_bytes'))} ({disk.get('path')})"))
    rows.append(("uptime", human_duration(health.get("uptime_s"))))
    requests = health.get("requests", {})
    rows.append(("requests", f"{requests.get('served', '?')} served, {requests.get('in_flight', '?')} in flight"))
    config = health.get("config", {})
    if config:
        rows.append(("config", f"{config.get('file') or '(no file)'}, reloaded {config.get('reloads', 0)}x, log level {config.get('log_level')}"))
    if live.log_file:
        rows.append(("logs", live.log_file))
    for label, value in rows:
        click.echo(f"  {label + ':':<10}{value}")


def _group_rows(group: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The group serving the model, one row per rank (where it runs, its memory); none when alone."""
    if not group:
        return []
    state = "serving" if group.get("healthy", True) else f"BROKEN ({group.get('error')}), exiting"
    rows: list[tuple[str, Any]] = [
        ("group", f"{group.get('world_size')} ranks over {group.get('backend')}, {group.get('parallel')} parallel, {state}")
    ]
    for rank in group.get("ranks", []):
        rows.append((
            f"rank {rank.get('rank')}",
            f"{rank.get('host')}: active {human_bytes(rank.get('active_bytes'))}, weights "
            f"{human_bytes(rank.get('weight_bytes'))}, KV pool {human_bytes(rank.get('kv_pool_bytes'))} "
            f"of a {human_bytes(rank.get('budget_bytes'))} budget",
        ))  # fmt: skip
    return rows


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--timeout", type=float, default=None, help=_TIMEOUT_HELP)
@click.option("--force", is_flag=True, help="Kill the old server if it does not stop within --timeout.")
@click.argument("start_args", nargs=-1, type=click.UNPROCESSED)
def restart(timeout: float | None, force: bool, start_args: tuple[str, ...]) -> None:
    """Stop the server and start it again in the background.

    START_ARGS are `pensieve start` options; without any, the running server's are reused.
    """
    live = _live_or_clean()
    args = list(start_args) if start_args else (live.args if live else [])
    if live is not None:
        click.echo(f"Pensieve (PID {live.pid}) {stop_server(live, _stop_timeout(timeout), force)}.")
    code = subprocess.call([sys.executable, "-m", "pensieve.cli", "start", "--background", *args])
    sys.exit(code)


@click.command()
@click.option("-n", "--lines", "count", type=int, default=50, show_default=True, help="How many lines from the end.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("--json", "raw", is_flag=True, help="Print the JSON lines as written.")
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Log file (default: the running server's).")
def logs(count: int, follow: bool, raw: bool, file_: str | None) -> None:
    """Show the server's log file, readable (or raw JSON with --json)."""
    path = Path(file_) if file_ else _log_path()
    if not path.exists() and not follow:
        raise click.ClickException(f"no log file at {path}; a server started in the foreground logs to its terminal")
    position = 0
    if path.exists():
        with open(path, "rb") as handle:
            for line in deque(handle, maxlen=max(count, 0)):
                click.echo(_render(line, raw))
            position = handle.tell()
    if follow:
        _follow(path, position, raw)


def _log_path() -> Path:
    live, _ = running_server()
    if live is not None and live.log_file:
        return Path(live.log_file)
    try:
        return log_file_for(load_settings())
    except PensieveError:  # a broken config file must not hide the logs that explain it
        return default_log_file()


def _follow(path: Path, position: int, raw: bool) -> None:
    """`tail -F`: keeps up across rotation (a new, shorter file at the same path)."""
    inode = path.stat().st_ino if path.exists() else None
    try:
        while True:
            if path.exists():
                stat = path.stat()
                if stat.st_ino != inode or stat.st_size < position:
                    inode, position = stat.st_ino, 0
                if stat.st_size > position:
                    with open(path, "rb") as handle:
                        handle.seek(position)
                        for line in handle:
                            if not line.endswith(b"\n"):
                                break  # a line still being written; read it whole next time
                            click.echo(_render(line, raw))
                            position += len(line)
                    sys.stdout.flush()  # a pipe is block-buffered: show lines as they come
            time.sleep(0.25)
    except KeyboardInterrupt:
        pass


def _render(line: bytes, raw: bool) -> str:
    text = line.decode("utf-8", errors="replace").rstrip("\n")
    if raw:
        return text
    try:
        record = json.loads(text)
    except ValueError:
        return text
    if not isinstance(record, dict):
        return text
    stamp = str(record.get("timestamp", ""))[:23].replace("T", " ")
    request = f" [{record['request_id']}]" if record.get("request_id") else ""
    out = f"{stamp} {record.get('level', ''):<7} {record.get('component', ''):<8}{request} {record.get('message', '')}"
    if record.get("exception"):
        out += "\n" + str(record["exception"]).rstrip()
    return out
