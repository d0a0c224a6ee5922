"""PID file probing (stale, zombie, reused PID) and what a SIGHUP reload applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pensieve.utils import load_settings
from pensieve.utils.pidfile import (
    PidInfo,
    is_pensieve_process,
    lock_server_slot,
    process_alive,
    read_pid_file,
    remove_pid_file,
    running_server,
    state_file_path,
    write_pid_file,
)
from pensieve.utils.reload import apply_reload


def test_one_process_at_a_time_holds_the_server_slot_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pensieve.pid"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from pensieve.utils.pidfile import lock_server_slot;"
         f"lock = lock_server_slot(Path({str(path)!r})); print(lock is not None, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert lock_server_slot(path) is None  # a second server, however quick, is refused
    finally:
        holder.kill()
        holder.wait()
    mine = lock_server_slot(path)  # no unlock ran: the OS released the lock with the process
    assert mine is not None
    mine.close()


def test_write_is_atomic_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pensieve.pid"
    info = PidInfo(pid=os.getpid(), host="0.0.0.0", port=8123, args=["--port", "8123"])
    write_pid_file(path, info)
    assert read_pid_file(path) == info
    assert path.read_text() == f"{os.getpid()}\n"  # the number alone, as `kill $(cat …)` reads it
    state = state_file_path(path)
    assert state.name == "pensieve.state.json" and json.loads(state.read_text())["port"] == 8123
    assert path.stat().st_mode & 0o777 == 0o644 and state.stat().st_mode & 0o777 == 0o600  # args are private
    assert sorted(p.name for p in path.parent.iterdir()) == ["pensieve.pid", "pensieve.state.json"]  # no temporaries
    assert info.url == "http://127.0.0.1:8123"
    assert PidInfo(pid=1, host="::", port=1).url == "http://[::1]:1"


def test_dead_and_zombie_processes_are_stale(tmp_path: Path) -> None:
    path = tmp_path / "pensieve.pid"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_pid = child.pid
    os.waitid(os.P_PID, child_pid, os.WEXITED | os.WNOWAIT)  # wait for the exit, do not reap
    # Not yet reaped: a zombie still answers kill(pid, 0) but is not running.
    assert not process_alive(child_pid)
    write_pid_file(path, PidInfo(pid=child_pid, host="127.0.0.1", port=1))
    live, stale = running_server(path)
    assert live is None and stale is not None and stale.pid == child_pid
    child.wait()
    assert not process_alive(child_pid)


def test_unreadable_file_is_stale_and_only_our_record_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "pensieve.pid"
    path.write_text("{not json")
    live, stale = running_server(path)
    assert live is None and stale is not None
    write_pid_file(path, PidInfo(pid=os.getpid(), host="127.0.0.1", port=1))
    assert not remove_pid_file(path, pid=os.getpid() + 1)  # a successor's file stays
    assert path.exists()
    assert remove_pid_file(path, pid=os.getpid())
    assert not path.exists() and not state_file_path(path).exists()


def test_a_pid_without_its_state_keeps_its_number(tmp_path: Path) -> None:
    """A PID file written by hand, or beside another server's state, still names a process to stop."""
    path = tmp_path / "pensieve.pid"
    path.write_text(f"{os.getpid()}\n")
    info = read_pid_file(path)
    assert info is not None and (info.pid, info.host, info.port) == (os.getpid(), "", 0)
    write_pid_file(path, PidInfo(pid=os.getpid() + 1, host="127.0.0.1", port=1))
    path.write_text(f"{os.getpid()}\n")
    info = read_pid_file(path)
    assert info is not None and (info.pid, info.port) == (os.getpid(), 0)


def test_a_reused_pid_is_not_taken_for_pensieve(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
        while cmdline.exists() and not cmdline.read_bytes().startswith(b"sleep"):
            pass  # between fork and exec the child still shows the parent's command line
        assert process_alive(sleeper.pid)
        assert is_pensieve_process(sleeper.pid) is False
        path = tmp_path / "pensieve.pid"
        write_pid_file(path, PidInfo(pid=sleeper.pid, host="127.0.0.1", port=1))
        live, stale = running_server(path)
        assert live is None and stale is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reload_applies_live_keys_in_place_and_lists_the_rest(tmp_path: Path) -> None:
    env = {"PENSIEVE_HOME": str(tmp_path)}
    current = load_settings(env=env)
    server_section = current.server
    path = tmp_path / "pensieve.toml"
    path.write_text(
        '[server]\napi_key = "k2"\nport = 9999\ncors_origins = ["http://x"]\n'
        '[model]\naliases = { "claude-*" = "tiny" }\nunknown = "error"\n'
        '[logging]\nlevel = "DEBUG"\n[performance]\nmax_concurrent_requests = 2\n'
    )
    result = apply_reload(current, load_settings(path, env=env))
    assert sorted(result.applied) == [
        "logging.level", "model.aliases", "model.unknown", "server.api_key", "server.cors_origins"
    ]
    assert sorted(result.restart_needed) == ["performance.max_concurrent_requests", "server.port"]
    assert result.logging_changed
    assert current.server is server_section  # mutated in place: holders of the object see it
    assert current.server.api_key == "k2" and current.model.aliases == {"claude-*": "tiny"}
    assert current.server.port == 8000 and current.performance.max_concurrent_requests == 5
    assert current.sources()["server.api_key"] == f"{path}:2"
    assert current.sources()["server.port"] == "default"
    assert current.config_file == path
