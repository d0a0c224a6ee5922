"""A rank that dies or stalls: requests in flight fail within the group's deadline with an
`api_error` that says why, /health turns unhealthy, and every rank exits with code 75 (nothing
left waiting on a collective, nothing left spinning).

The ranks are started as `mlx.launch` starts them, without the launcher: it would stop the
whole group itself as soon as one rank exits, and these tests are about the group doing so.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pensieve.engine.group import EXIT_BROKEN
from tests.distributed.ranks import Ranks, alive, cpu_seconds
from tests.reliability.conftest import ANTHROPIC, OPENAI, Stream, chat, post_json
from tests.support import ServerThread, health, make_settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the rank helpers read /proc (Linux)")


def _failed_clearly(stream: Stream) -> str:
    """The error message a stream ended with, asserting it ended with an api_error."""
    errors = [e["error"] for e in stream.events if isinstance(e, dict) and "error" in e]
    assert errors, stream.events[-3:]
    assert errors[-1].get("code", errors[-1].get("type")) == "api_error", errors[-1]  # OpenAI's code, Anthropic's type
    return str(errors[-1]["message"])


def test_killing_rank_1_mid_stream_fails_the_requests_and_stops_the_group(layered_model_dir: Path, tmp_path: Path) -> None:
    """On a pipeline-parallel group, which first answers as one process does."""
    with ServerThread(make_settings(layered_model_dir, tmp_path / "alone")) as alone:
        expected = post_json(alone, ANTHROPIC, chat("Tell me a story", max_tokens=40, temperature=0))[1]["content"]
    env = {"PENSIEVE_DISTRIBUTED_PARALLEL": "pipeline"}
    ranks = Ranks(tmp_path / "home", layered_model_dir, launcher=False, env=env).start()
    leader, follower = ranks.procs
    try:
        assert health(ranks.base_url)["distributed"]["parallel"] == "pipeline"
        assert post_json(ranks, ANTHROPIC, chat("Tell me a story", max_tokens=40, temperature=0))[1]["content"] == expected
        # Idle first: MLX's ring backend polls while a collective waits, so an idle follower
        # sleeps through rank 0's heartbeat instead of waiting in one (a core's worth of CPU).
        before = cpu_seconds(follower.pid)
        time.sleep(2)
        assert cpu_seconds(follower.pid) - before < 0.6
        streams = [
            Stream(ranks, ANTHROPIC, chat("a long story", max_tokens=4000, temperature=0)),
            Stream(ranks, OPENAI, chat("another long story", max_tokens=4000, temperature=0)),
        ]
        for stream in streams:
            stream.read(4)  # both under way
        follower.kill()
        killed = time.monotonic()
        streams[0].read()
        message = _failed_clearly(streams[0])
        assert time.monotonic() - killed < 30
        assert "group of machines serving this model broke" in message and "Retry" in message
        state = health(ranks.base_url)  # answered in the moment before rank 0 exits
        assert state["status"] == "error" and not state["distributed"]["healthy"], state
        streams[1].read()
        _failed_clearly(streams[1])
        assert leader.wait(timeout=30) == EXIT_BROKEN
        assert not alive(follower.pid) and not alive(leader.pid)
    finally:
        ranks.stop()
    log = ranks.log_text()
    assert "the distributed group is broken on rank 0" in log and f"exits with code {EXIT_BROKEN}" in log


def test_a_stalled_rank_breaks_the_group_within_its_deadline(varied_model_dir: Path, tmp_path: Path) -> None:
    """SIGSTOP: rank 1's sockets stay open, so only rank 0's watchdog can tell (after timeout_s)."""
    env = {"PENSIEVE_DISTRIBUTED_TIMEOUT_S": "3"}
    ranks = Ranks(tmp_path / "home", varied_model_dir, launcher=False, env=env).start()
    leader, follower = ranks.procs
    try:
        stream = Stream(ranks, ANTHROPIC, chat("a long story", max_tokens=4000, temperature=0))
        stream.read(4)
        follower.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        stream.read()
        assert "waited too long" in _failed_clearly(stream)
        assert 3 <= time.monotonic() - stopped < 30
        assert leader.wait(timeout=30) == EXIT_BROKEN
        # Woken, rank 1 finds its peer gone (or its own deadline passed) and leaves too.
        follower.send_signal(signal.SIGCONT)
        assert follower.wait(timeout=30) == EXIT_BROKEN
    finally:
        follower.send_signal(signal.SIGCONT)
        ranks.stop()


def test_ranks_configured_differently_refuse_to_start_and_say_which_setting(varied_model_dir: Path, tmp_path: Path) -> None:
    """Every rank runs the scheduler on its own settings: a batch size of 5 on one and 2 on the
    other would run different forward passes, so the group refuses before serving anything."""
    other = {1: {"PENSIEVE_PERFORMANCE_MAX_CONCURRENT_REQUESTS": "2"}}
    ranks = Ranks(tmp_path / "home", varied_model_dir, launcher=False, rank_env=other)
    with pytest.raises(RuntimeError, match=r"performance.max_concurrent_requests differs between rank 0 and rank 1"):
        ranks.start()
    assert ranks.stop() == [1, 1]
