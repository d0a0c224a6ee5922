"""One background daemon's life, driven through the real CLI and signals, in order.

start --background -> second start refused -> requests (both APIs) -> status, logs, metrics ->
SIGHUP reload -> SIGUSR1 dump -> restart -> SIGTERM drain with a request in flight.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import Pensieve, http, wait_gone
from tests.support import free_port

KEY = "pensieve-local-key"
NEW_KEY = "reloaded-key-7f3a"
CANARY = "zebra-canary-4471"


class Daemon:
    def __init__(self, cli: Pensieve, start_output: str, port: int) -> None:
        self.cli = cli
        self.start_output = start_output
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.key = KEY


@pytest.fixture(scope="module")
def daemon(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cli = Pensieve(tmp_path_factory.mktemp("daemon") / "home", tiny_model_dir)
    assert cli.run("config", "init").returncode == 0
    port = free_port()
    started = cli.run("start", "--background", "--model", str(tiny_model_dir), "--port", str(port))
    assert started.returncode == 0, started.stdout + started.stderr
    yield Daemon(cli, started.stdout, port)
    if cli.pid_file.exists():
        cli.run("stop", "--force", "--timeout", "30")


def _message(url: str, key: str, text: str = "hello", max_tokens: int = 8, model: str = "claude-sonnet-4-5") -> tuple[int, dict, dict]:
    status, headers, body = http(
        "POST",
        f"{url}/v1/messages",
        {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]},
        key=key,
    )
    return status, headers, json.loads(body)


def test_background_start_prints_url_and_pid_and_detaches(daemon: Daemon) -> None:
    info = daemon.cli.info()
    assert f"running at {daemon.url} (PID {info.pid})" in daemon.start_output
    assert info.port == daemon.port and info.log_file == str(daemon.cli.log_file)
    assert os.getsid(info.pid) == info.pid  # its own session: the terminal closing does not reach it
    health = json.loads(http("GET", f"{daemon.url}/health")[2])
    assert health["status"] == "ok" and health["pid"] == info.pid
    first = daemon.cli.records()[0]
    assert {"timestamp", "level", "component", "message", "request_id"} <= set(first)


def test_second_start_is_refused(daemon: Daemon) -> None:
    again = daemon.cli.run("start", "--background", "--model", str(daemon.cli.model), "--port", str(free_port()))
    assert again.returncode != 0
    assert f"already running (PID {daemon.cli.info().pid})" in again.stderr


def test_requests_on_both_apis_are_logged_once_without_key_or_content(daemon: Daemon) -> None:
    status, headers, body = _message(daemon.url, daemon.key, text=f"remember {CANARY}")
    assert status == 200 and body["usage"]["output_tokens"] > 0
    request_id = headers["request-id"]
    record = daemon.cli.wait_for_record(lambda r: r["request_id"] == request_id and r["component"] == "http")
    meta = record["metadata"]
    assert meta["status"] == 200 and meta["path"] == "/v1/messages"
    assert meta["model"] == daemon.cli.model.name and meta["requested_model"] == "claude-sonnet-4-5"
    assert meta["input_tokens"] == body["usage"]["input_tokens"]
    assert meta["output_tokens"] == body["usage"]["output_tokens"]
    assert meta["ttft_s"] > 0 and meta["tokens_per_s"] > 0 and meta["stop_reason"] == body["stop_reason"]
    assert "tok/s" in record["message"]

    chat = {"model": "gpt-4o", "max_tokens": 6, "stream": True, "messages": [{"role": "user", "content": CANARY}]}
    status, headers, raw = http("POST", f"{daemon.url}/v1/chat/completions", chat, key=daemon.key)
    assert status == 200 and b"[DONE]" in raw
    chat_record = daemon.cli.wait_for_record(
        lambda r: r["component"] == "http" and r.get("metadata", {}).get("path") == "/v1/chat/completions"
    )
    assert chat_record["metadata"]["output_tokens"] > 0 and chat_record["metadata"]["requested_model"] == "gpt-4o"
    assert sum(1 for r in daemon.cli.records() if r["request_id"] == request_id and r["component"] == "http") == 1
    text = daemon.cli.log_file.read_text()
    assert KEY not in text and CANARY not in text


def test_status_shows_pid_model_memory_and_requests(daemon: Daemon) -> None:
    result = daemon.cli.run("status")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"PID {daemon.cli.info().pid}" in out and daemon.url in out
    assert f"{daemon.cli.model.name} (loaded" in out
    assert "memory:" in out and "uptime:" in out
    served = int(re.search(r"requests: (\d+) served", out).group(1))
    assert served >= 2
    as_json = json.loads(daemon.cli.run("status", "--json").stdout)
    assert as_json["running"] and as_json["health"]["requests"]["served"] >= served


def test_metrics_need_the_key_and_count_requests_and_tokens(daemon: Daemon) -> None:
    assert http("GET", f"{daemon.url}/metrics")[0] == 401
    status, headers, raw = http("GET", f"{daemon.url}/metrics", key=daemon.key)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }
    model = daemon.cli.model.name
    assert samples[("pensieve_requests_total", (("method", "POST"), ("route", "/v1/messages"), ("status", "200")))] >= 1
    assert samples[("pensieve_tokens_total", (("direction", "out"), ("model", model)))] > 0
    assert samples[("pensieve_time_to_first_token_seconds_count", (("model", model),))] >= 2
    assert samples[("pensieve_time_per_output_token_seconds_count", (("model", model),))] >= 1
    assert samples[("pensieve_mlx_memory_bytes", (("kind", "active"),))] > 0
    assert samples[("pensieve_model_load_seconds", (("model", model),))] > 0
    assert ("pensieve_queue_depth", (("model", model),)) in samples
    assert ("pensieve_active_sequences", (("model", model),)) in samples


def test_sighup_reloads_live_settings_and_names_the_rest(daemon: Daemon) -> None:
    config = daemon.cli.config_file
    text = config.read_text()
    for old, new in [
        ('# api_key = "pensieve-local-key"', f'api_key = "{NEW_KEY}"'),
        ('# level = "INFO"', 'level = "DEBUG"'),
        ('# unknown = "default"', 'unknown = "error"'),
        ("# aliases = {}", f'aliases = {{"claude-*" = "{daemon.cli.model.name}"}}'),
        ("# max_concurrent_requests = 5", "max_concurrent_requests = 2"),
    ]:
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    os.kill(daemon.cli.info().pid, signal.SIGHUP)
    daemon.cli.wait_for_record(lambda r: "restart needed" in r["message"])

    health = json.loads(http("GET", f"{daemon.url}/health")[2])
    assert health["config"]["reloads"] == 1 and health["config"]["log_level"] == "DEBUG"
    assert health["config"]["file"] == str(config)
    assert _message(daemon.url, KEY)[0] == 401
    daemon.key = NEW_KEY
    assert _message(daemon.url, NEW_KEY)[0] == 200  # claude-sonnet-4-5 through the new alias
    status, _, body = _message(daemon.url, NEW_KEY, model="no-such-model")  # unknown = "error" now
    assert status == 404 and body["error"]["type"] == "not_found_error"
    restart = daemon.cli.wait_for_record(lambda r: "restart needed" in r["message"])
    assert "performance.max_concurrent_requests" in restart["message"]
    assert daemon.cli.wait_for_record(lambda r: r["level"] == "DEBUG")  # the new level took effect

    shown = daemon.cli.run("config", "show")
    assert re.search(rf'api_key = "\*\*\*"\s+# {re.escape(str(config))}:\d+', shown.stdout)
    assert re.search(rf'level = "DEBUG"\s+# {re.escape(str(config))}:\d+', shown.stdout)
    assert NEW_KEY not in shown.stdout and NEW_KEY not in daemon.cli.log_file.read_text()


def test_a_broken_file_on_sighup_keeps_the_running_settings(daemon: Daemon) -> None:
    config = daemon.cli.config_file
    good = config.read_text()
    config.write_text(good + "\n[server]\nport = 1\n")  # a second [server] table: invalid TOML
    try:
        os.kill(daemon.cli.info().pid, signal.SIGHUP)
        failed = daemon.cli.wait_for_record(lambda r: r["message"].startswith("configuration reload failed"))
        assert f"{config}:" in failed["message"] and failed["level"] == "ERROR"
    finally:
        config.write_text(good)
    health = json.loads(http("GET", f"{daemon.url}/health")[2])
    assert health["status"] == "ok" and health["config"]["reloads"] == 1
    assert _message(daemon.url, NEW_KEY)[0] == 200


def test_sigusr1_writes_a_diagnostic_dump(daemon: Daemon) -> None:
    os.kill(daemon.cli.info().pid, signal.SIGUSR1)
    record = daemon.cli.wait_for_record(lambda r: r["message"].startswith("diagnostic dump"))
    dump = json.loads(record["message"].split(": ", 1)[1])
    assert dump["pid"] == daemon.cli.info().pid
    assert dump["settings"]["server.api_key"] == "***"
    assert any(m["name"] == daemon.cli.model.name and m["state"] == "loaded" for m in dump["models"])
    assert dump["memory"]["active_bytes"] > 0
    assert dump["active_requests"] == []
    assert any(r["path"] == "/v1/messages" and r["ttft_s"] is not None for r in dump["recent_requests"])


def test_logs_prints_the_last_lines(daemon: Daemon) -> None:
    readable = daemon.cli.run("logs", "-n", "3")
    assert readable.returncode == 0 and len(readable.stdout.splitlines()) >= 3
    assert "diagnostic dump" in readable.stdout or "GET /health" in readable.stdout
    raw = daemon.cli.run("logs", "-n", "2", "--json").stdout.splitlines()
    assert len(raw) == 2 and all(json.loads(line)["timestamp"] for line in raw)

    _, before, _ = _message(daemon.url, daemon.key)
    follower = daemon.cli.popen("logs", "-f", "-n", "50")
    try:
        assert follower.stdout is not None
        while before["request-id"] not in follower.stdout.readline():
            pass  # the tail printed first: the follower is now at the end of the file
        _, after, _ = _message(daemon.url, daemon.key)
        while after["request-id"] not in (line := follower.stdout.readline()):
            assert line, "logs -f ended"
        assert "POST /v1/messages 200" in line
    finally:
        follower.terminate()
        follower.wait(timeout=30)


def test_restart_reuses_the_options_and_the_reloaded_file(daemon: Daemon) -> None:
    old_pid = daemon.cli.info().pid
    result = daemon.cli.run("restart")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PID {old_pid}) stopped" in result.stdout
    new = daemon.cli.info()
    assert new.pid != old_pid and new.port == daemon.port
    wait_gone(old_pid)
    assert _message(daemon.url, NEW_KEY)[0] == 200


def test_sigterm_drains_the_request_in_flight_then_exits(daemon: Daemon) -> None:
    pid = daemon.cli.info().pid
    connection = HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    body = {"model": "claude-x", "max_tokens": 400, "stream": True, "messages": [{"role": "user", "content": "go on"}]}
    connection.request(
        "POST", "/v1/messages", json.dumps(body), {"x-api-key": NEW_KEY, "content-type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200
    while b"content_block_delta" not in response.readline():
        pass  # generation is under way
    stopper = daemon.cli.popen("stop", "--timeout", "120")  # SIGTERM, as a user stops it
    rest = response.read().decode()  # the stream goes on to its end
    connection.close()
    assert stopper.wait(timeout=150) == 0, stopper.stdout.read() if stopper.stdout else ""
    assert "message_stop" in rest
    final = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: ") and "message_delta" in line]
    assert final[-1]["delta"]["stop_reason"] == "max_tokens" and final[-1]["usage"]["output_tokens"] == 400
    wait_gone(pid)
    assert not daemon.cli.pid_file.exists()
    draining = daemon.cli.wait_for_record(lambda r: r["pid"] == pid and r["message"].startswith("draining:"))
    assert draining["message"].startswith("draining: 1 request(s) in flight")
    daemon.cli.wait_for_record(lambda r: r["pid"] == pid and r["message"].startswith("drained"))
    assert daemon.cli.run("status").returncode == 3
