"""The prefix cache's disk tier through real servers: a restart, bad files, a full disk.

Claude Code's pattern in small: a long system prompt (about 4k tokens) with tools, a first
question, then, after the server restarted, a new session with another question and a
continuation of the first. The tiny random-weight llama (2 layers, 32k window) serves; its
answers mean nothing, but every prefill, cache file and SSE event is the real one. Times are
read from each request's own phase timings (`/v1/debug/requests`), on the same machine in the
same run: a behaviour check, not a benchmark.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from pensieve.engine import disk_files
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.utils.logging import logger
from tests.support import API_KEY, ServerThread, make_settings

pytestmark = pytest.mark.slow

SYSTEM = " ".join(f"Rule {i}: keep module {i % 97} tidy and tested." for i in range(270))
TOOLS = [
    {"name": "read_file", "description": "Read a file.", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
    {"name": "run", "description": "Run a command.", "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
]


def billing(n: int) -> dict[str, str]:
    """Claude Code's first system block: different in every request, never part of the prompt."""
    return {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.0.{n}; cch={n:05x};"}


def ask(server: ServerThread, messages: list[dict[str, Any]], n: int = 0, **extra: Any) -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    return client.messages.create(
        model="claude-opus-4-8", max_tokens=6, extra_body={"temperature": 0}, system=[billing(n), {"type": "text", "text": SYSTEM}],
        tools=TOOLS, messages=messages, **extra,
    )  # fmt: skip


def get(server: ServerThread, path: str) -> Any:
    request = urllib.request.Request(f"{server.base_url}{path}", headers={"x-api-key": API_KEY})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def prefill_seconds(server: ServerThread) -> float:
    """The compute thread's time from admission to the first token of the last /v1/messages."""
    recent = get(server, "/v1/debug/requests")["requests"]
    return next(r for r in reversed(recent) if r["path"] == "/v1/messages")["profile"]["prefill_s"]


def prefix_files(home: Path) -> list[Path]:
    return sorted((home / "state" / "prefix-cache").glob("*.safetensors"))


FIRST = [{"role": "user", "content": "Which module should I tidy first?"}]


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


def test_after_a_restart_the_shared_prefix_comes_from_disk(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_model_dir, tmp_path, performance__warmup=True)
    with ServerThread(settings) as server:
        first = ask(server, FIRST, n=1)
        cold = prefill_seconds(server)
    assert first.usage.cache_read_input_tokens == 0
    prefix = first.usage.input_tokens
    assert 3500 < prefix < 5000 and len(prefix_files(tmp_path)) == 1

    with ServerThread(settings) as server:
        # A new session: same system prompt and tools, another question, another billing line.
        client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY)
        other = [{"role": "user", "content": "Is module 12 tested?"}]
        with client.messages.stream(
            model="claude-opus-4-8", max_tokens=6, extra_body={"temperature": 0}, system=[billing(2), {"type": "text", "text": SYSTEM}],
            tools=TOOLS, messages=other,
        ) as stream:  # fmt: skip
            events = list(stream)
            final = stream.get_final_message()
        warm = prefill_seconds(server)
        start = next(e for e in events if e.type == "message_start").message.usage
        # message_start already carries the split that message_delta confirms.
        assert start.cache_read_input_tokens == final.usage.cache_read_input_tokens >= 0.9 * prefix
        assert start.input_tokens == final.usage.input_tokens < 0.1 * prefix
        assert warm <= 0.2 * cold, f"prefill {warm:.3f}s after the restart against {cold:.3f}s cold"

        # The first session goes on: its prefix is found as well.
        more = [*FIRST, {"role": "assistant", "content": first.content[0].text or "Module 0."}, {"role": "user", "content": "And then?"}]  # type: ignore[union-attr]
        follow = ask(server, more, n=3)
        assert follow.usage.cache_read_input_tokens >= 0.9 * prefix

        health = get(server, "/health")
        assert health["prefix_cache_disk"]["files"] >= 1 and health["prefix_cache_disk"]["bytes"] > 0
        assert health["models"][0]["prefix_cache"]["disk"]["entries"] >= 1


def _break(path: Path, how: str) -> None:
    if how == "corrupted":
        data = bytearray(path.read_bytes())
        data[-5000] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 4096)


@pytest.mark.parametrize("how", ["corrupted", "truncated"])
def test_a_damaged_file_costs_a_prefill_and_a_warning_never_a_wrong_answer(
    how: str, tiny_model_dir: Path, tmp_path: Path, warnings_logged: list[str]
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path)
    with ServerThread(settings) as server:
        cold = ask(server, FIRST)
    (path,) = prefix_files(tmp_path)
    _break(path, how)
    with ServerThread(settings) as server:
        again = ask(server, FIRST)
    assert again.usage.cache_read_input_tokens == 0  # prefilled as if nothing were kept
    assert again.content == cold.content  # the same answer, token for token
    assert any("prefix cache: discarding" in w for w in warnings_logged), warnings_logged
    disk_files.read(disk_files.read_header(path))  # written again, whole, by the second server


def test_files_of_other_weights_are_never_used(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same path and name, other weights (a re-conversion): the old prefixes do not match."""
    model = make_random_model(tmp_path / "model", "tiny-llama", seed=0)
    settings = make_settings(model, tmp_path)
    with ServerThread(settings) as server:
        ask(server, FIRST)
    make_random_model(model, "tiny-llama", seed=1)
    with ServerThread(settings) as server:
        fresh = ask(server, FIRST)
    assert fresh.usage.cache_read_input_tokens == 0
    assert len(prefix_files(tmp_path)) == 2  # each model's own file; neither is the other's


def test_a_full_disk_is_a_warning_and_the_request_succeeds(tiny_model_dir: Path, tmp_path: Path, warnings_logged: list[str]) -> None:
    settings = make_settings(tiny_model_dir, tmp_path)
    with ServerThread(settings) as server:
        folder = settings.performance.prefix_cache_path
        for n in range(1024):  # every temporary file the writer opens next is /dev/full
            link = folder / f".{os.getpid()}-{n}.tmp"
            if not link.exists():
                link.symlink_to("/dev/full")
        answer = ask(server, FIRST)
        engine = server.call(server.pool.engine(None))
        engine.disk.flush()
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.usage.output_tokens > 0
    assert any("prefix cache: could not write" in w and "No space left on device" in w for w in warnings_logged), warnings_logged
    assert not prefix_files(tmp_path)
