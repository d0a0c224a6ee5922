"""Starting badly, stale PID files, stopping at once (SIGINT) and by force."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection, IncompleteRead

from pensieve.utils.pidfile import PidInfo, write_pid_file
from tests.cli.conftest import Pensieve, wait_gone
from tests.support import free_port, health


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_background_start_failures_exit_nonzero_with_the_reason(pensieve_home: Pensieve) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = pensieve_home.run("start", "--background", "--model", str(pensieve_home.model), "--port", str(port))
    assert busy.returncode != 0
    assert f"port {port} on 127.0.0.1 is not available (Address already in use)" in busy.stderr
    assert not pensieve_home.pid_file.exists()

    missing = pensieve_home.run("start", "--background", "--model", "/no/such/model", "--port", str(free_port()))
    assert missing.returncode != 0
    assert "Pensieve failed to start" in missing.stderr and "'/no/such/model' was not found" in missing.stderr

    # Too big for the memory budget: the port opens, the preload fails, the server exits 1.
    pensieve_home.env["PENSIEVE_MODEL_MEMORY_BUDGET_GB"] = "0.01"
    too_big = pensieve_home.run("start", "--background", "--model", str(pensieve_home.model), "--port", str(free_port()))
    del pensieve_home.env["PENSIEVE_MODEL_MEMORY_BUDGET_GB"]
    assert too_big.returncode == 1
    assert "could not load the default model" in too_big.stderr and "memory budget" in too_big.stderr
    assert not pensieve_home.pid_file.exists()

    bad = pensieve_home.home / "bad.toml"
    bad.write_text("[server]\nport = 99999\n")
    invalid = pensieve_home.run("start", "--background", "--config", str(bad))
    assert invalid.returncode != 0 and f"server.port (from {bad}:2)" in invalid.stderr


def test_status_and_stop_clean_a_stale_pid_file(pensieve_home: Pensieve) -> None:
    write_pid_file(pensieve_home.pid_file, PidInfo(pid=_dead_pid(), host="127.0.0.1", port=1))
    status = pensieve_home.run("status")
    assert status.returncode == 3
    assert "stale PID file" in status.stderr and "not running" in status.stdout
    assert not pensieve_home.pid_file.exists()
    write_pid_file(pensieve_home.pid_file, PidInfo(pid=_dead_pid(), host="127.0.0.1", port=1))
    stop = pensieve_home.run("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    assert not pensieve_home.pid_file.exists()


def test_foreground_start_over_a_stale_pid_file_then_sigint_stops_at_once(pensieve_home: Pensieve) -> None:
    stale_pid = _dead_pid()
    write_pid_file(pensieve_home.pid_file, PidInfo(pid=stale_pid, host="127.0.0.1", port=1))
    port = free_port()
    server = pensieve_home.popen("start", "--model", str(pensieve_home.model), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while health(url).get("status") != "ok":
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert pensieve_home.info().pid == server.pid  # the stale record was replaced

    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "m", "max_tokens": 5000, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    connection.request("POST", "/v1/messages", json.dumps(body), {"x-api-key": "pensieve-local-key", "content-type": "application/json"})
    response = connection.getresponse()
    while b"content_block_delta" not in response.readline():
        pass
    server.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        rest = response.read().decode(errors="replace")
    except IncompleteRead as cut:  # the server dropped the stream mid-chunk: expected
        rest = cut.partial.decode(errors="replace")
    connection.close()
    assert server.wait(timeout=60) == 0
    output = server.stdout.read() if server.stdout else ""
    assert f"Removed a stale PID file: PID {stale_pid}" in output
    assert "SIGINT: stopping now, cancelled 1 in-flight requests" in output
    assert "message_stop" not in rest  # cut short, not drained
    assert not pensieve_home.pid_file.exists()


def test_stop_escalates_to_sigkill_only_with_force(pensieve_home: Pensieve) -> None:
    # A hung server: a process with Pensieve's command line that ignores SIGTERM.
    hung = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)", "pensieve.cli", "start"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hung.stdout is not None and hung.stdout.readline() == "ready\n"
        write_pid_file(pensieve_home.pid_file, PidInfo(pid=hung.pid, host="127.0.0.1", port=1))
        polite = pensieve_home.run("stop", "--timeout", "1")
        assert polite.returncode == 1 and "still running after 1s" in polite.stderr and "--force" in polite.stderr
        assert hung.poll() is None
        forced = pensieve_home.run("stop", "--timeout", "1", "--force")
        assert forced.returncode == 0 and f"(PID {hung.pid}) killed" in forced.stdout
        assert hung.wait(timeout=30) == -signal.SIGKILL
        assert not pensieve_home.pid_file.exists()
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()
    wait_gone(hung.pid)


def test_kill_with_the_pid_file_stops_the_server_and_removes_its_files(pensieve_home: Pensieve) -> None:
    """`kill $(cat pensieve.pid)`, as a user, a script or a service manager's PIDFile= does it."""
    port = free_port()
    started = pensieve_home.run("start", "--background", "--model", str(pensieve_home.model), "--port", str(port))
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(pensieve_home.pid_file.read_text())
    assert f"(PID {pid})" in started.stdout
    state = pensieve_home.pid_file.with_name("pensieve.state.json")
    assert json.loads(state.read_text())["port"] == port and health(f"http://127.0.0.1:{port}")["pid"] == pid
    subprocess.run(["sh", "-c", f"kill $(cat '{pensieve_home.pid_file}')"], check=True)
    wait_gone(pid)
    assert health(f"http://127.0.0.1:{port}") == {}
    assert not pensieve_home.pid_file.exists() and not state.exists()
    assert pensieve_home.wait_for_record(lambda r: r["message"] == "Pensieve stopped")
    status = pensieve_home.run("status")
    assert status.returncode == 3 and "not running" in status.stdout
