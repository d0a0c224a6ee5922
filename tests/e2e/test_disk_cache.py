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
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import pytest
from mlx_lm.models.cache import KVCache

from pensieve.engine import disk_files
from pensieve.modelmgr.synthetic import make_random_model
from tests.support import API_KEY, CliServer, ServerThread, make_settings

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


def checks_out(path: Path) -> None:
    """The file passes every check for the tiny llama (two plain KV layers); BadFile if not."""
    disk_files.read(disk_files.read_header(path), [KVCache(), KVCache()])


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
    checks_out(path)  # written again, whole, by the second server


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


def session(server: CliServer, topic: int, question: str) -> anthropic.types.Message:
    """A request whose system prompt (about 2k tokens) is `topic`'s own."""
    client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    system = " ".join(f"Topic {topic}, rule {i}: keep part {i % 89} small." for i in range(150))
    return client.messages.create(
        model="claude-opus-4-8", max_tokens=4, system=system, messages=[{"role": "user", "content": question}]
    )


def pensieve_cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "pensieve.cli", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode in (0, 1), result.stderr
    return result.stdout


def test_two_servers_share_one_folder_without_harming_each_others_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared-prefixes"
    bound_gb = 3.5 * 1024**2 / 1024**3  # about three 2k-token prefixes of the tiny model
    env = {"PENSIEVE_PERFORMANCE_PREFIX_CACHE_DIR": str(shared), "PENSIEVE_PERFORMANCE_PREFIX_CACHE_DISK_GB": str(bound_gb),
           "PENSIEVE_PERFORMANCE_WARMUP": "false"}  # fmt: skip
    a = CliServer(tmp_path / "a", "--model", str(tiny_model_dir), env=env).start()
    b = CliServer(tmp_path / "b", "--model", str(tiny_model_dir), env=env).start()
    try:
        first = session(a, 1, "Where do I start?")
        wait_for(lambda: len(list(shared.glob("*.safetensors"))) == 1)
        # B never saw topic 1: its memory misses and A's file serves it.
        other = session(b, 1, "What comes after that?")
        assert other.usage.cache_read_input_tokens >= 0.9 * first.usage.input_tokens
        assert 'pensieve_prefix_cache_hits_total{model="tiny-llama",tier="disk"} 1.0' in metrics(b)

        # Both write at once, the same prefix among others, past the bound: evictions race.
        jobs = [(a, 2), (a, 3), (a, 6), (b, 4), (b, 5), (b, 6)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(lambda job: session(job[0], job[1], "Go on."), jobs))
        assert all(m.usage.output_tokens > 0 for m in answers)
        time.sleep(0.5)  # each writer finishes its file after the response
        wait_for(lambda: not list(shared.glob(".*.tmp")))
        files = list(shared.glob("*.safetensors"))
        assert sum(p.stat().st_size for p in files) <= bound_gb * 1024**3
        for path in files:  # whatever is left is whole and checks out
            checks_out(path)
        assert not list(shared.glob(".*.tmp"))

        status = pensieve_cli("status", env={"PENSIEVE_HOME": str(a.home)})
        assert re.search(rf"cache: .* of prompt prefixes on disk in {len(files)} files", status), status
        assert f"{shared}: {len(files)} prefix files" in pensieve_cli("cache", "show", env={"PENSIEVE_HOME": str(a.home), **env})
        cleared = pensieve_cli("cache", "clear", env={"PENSIEVE_HOME": str(a.home), **env})
        assert f"Removed {len(files)} prefix files" in cleared and not list(shared.glob("*.safetensors"))
        # B never held topic 2 in memory, and the files its index knew are gone: a miss, not an error.
        assert session(b, 2, "Still there?").usage.cache_read_input_tokens == 0
    finally:
        a.stop()
        b.stop()


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metrics(server: CliServer) -> str:
    request = urllib.request.Request(f"{server.base_url}/metrics", headers={"x-api-key": API_KEY})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def test_a_quantized_kv_cache_survives_a_restart_and_never_meets_a_plain_one(tmp_path: Path) -> None:
    """`performance.kv_cache_bits = 8` on a model whose heads hold whole quantization groups."""
    model = make_random_model(tmp_path / "long-llama", "long-llama", seed=0)
    quantized = make_settings(model, tmp_path, performance__kv_cache_bits=8)
    question = [{"role": "user", "content": "Which module first?"}]
    with ServerThread(quantized) as server:
        first = session_on(server, question)
    with ServerThread(quantized) as server:
        again = session_on(server, [{"role": "user", "content": "And which tests?"}])
        assert server.call(server.pool.engine(None)).kv_status().kv_cache_bits == 8
    assert again.usage.cache_read_input_tokens >= 0.9 * first.usage.input_tokens
    with ServerThread(make_settings(model, tmp_path)) as server:  # the same weights, unquantized KV
        plain = session_on(server, question)
    assert plain.usage.cache_read_input_tokens == 0


def session_on(server: ServerThread, messages: list[dict[str, Any]]) -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    system = " ".join(f"Rule {i}: keep module {i % 31} small." for i in range(120))
    return client.messages.create(model="claude-opus-4-8", max_tokens=4, system=system, messages=messages)
