"""Faults that need a real `pensieve start` process: SIGTERM with requests in flight, a log
file on a full disk. (tests/cli/test_daemon.py drains one request through `pensieve stop`;
this drains several at once, on both APIs, with the signal sent directly, as systemd does.)
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.reliability.conftest import ANTHROPIC, OPENAI, Stream, chat, post_json
from tests.support import CliServer, health

QUIET = {"PENSIEVE_PERFORMANCE_WARMUP": "false", "PENSIEVE_PERFORMANCE_MAX_CONCURRENT_REQUESTS": "4"}


def test_sigterm_lets_every_request_in_flight_finish(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = CliServer(tmp_path / "home", "--model", str(tiny_model_dir), env=QUIET).start()
    try:
        streams = [
            Stream(server, ANTHROPIC, chat("first", max_tokens=120, temperature=0)),
            Stream(server, OPENAI, chat("second", max_tokens=120, temperature=0)),
            Stream(server, ANTHROPIC, chat("third", max_tokens=120, temperature=0)),
        ]
        for stream in streams:
            stream.read(2)  # each is under way
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            stream.read()
        assert all(s.complete() for s in streams)
        anthropic_end = [e for e in streams[0].events if e["type"] == "message_delta"][-1]
        assert anthropic_end["usage"]["output_tokens"] == 120  # the whole answer, not a cut one
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.stop()
    log = server.log.read_text()
    assert "draining: 3 request(s) in flight" in log and "drained: every in-flight request finished" in log


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), which fails every write with ENOSPC")
def test_a_full_log_disk_does_not_stop_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every log write fails with ENOSPC, as on a full disk; requests are served regardless."""
    server = CliServer(tmp_path / "home", "--model", str(tiny_model_dir), "--log-file", "/dev/full", env=QUIET).start()
    try:
        for path in (ANTHROPIC, OPENAI):
            assert post_json(server, path, chat(max_tokens=8))[0] == 200
            stream = Stream(server, path, chat(max_tokens=8))
            stream.read()
            assert stream.complete()
        assert health(server.base_url)["status"] == "ok"
        assert server.proc is not None and server.proc.poll() is None
    finally:
        assert server.stop() == 0
    assert "No space left on device" in server.log.read_text()  # the writes did fail
