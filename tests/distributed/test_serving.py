"""Two ranks under `mlx.launch` (ring backend, loopback) serve a tensor-parallel model as one
machine does: the same greedy tokens, concurrent streams, cancellation, the prefix cache,
count_tokens and errors; /health and `pensieve status` describe the group."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.conftest import client
from tests.distributed.ranks import Ranks, alive
from tests.reliability.conftest import (
    ANTHROPIC,
    OPENAI,
    Stream,
    chat,
    error_of,
    post_json,
    wait_until,
)
from tests.support import ServerThread, health

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the rank helpers read /proc (Linux)")

PROMPTS = ["Hello there, how are you today?", "Write a poem about the sea and the sky."]


@pytest.fixture(scope="module")
def group(varied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ranks]:
    quick = {"PENSIEVE_PERFORMANCE_WARMUP": "false"}  # the fault tests' groups warm up (through the lockstep too)
    ranks = Ranks(tmp_path_factory.mktemp("group-home"), varied_model_dir, env=quick).start()
    try:
        pids = ranks.rank_pids()
        yield ranks
        # `pensieve stop` on rank 0's machine (SIGTERM: drain) stops the whole group, every rank with 0.
        stop = subprocess.run([sys.executable, "-m", "pensieve.cli", "stop"], env=_cli_env(ranks), capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert ranks.procs[0].wait(timeout=60) == 0, ranks.log_text()[-3000:]  # the launcher: every rank exited 0
        assert not any(alive(pid) for pid in pids)
        assert "rank 0 stopped the group" in ranks.log_text()
    finally:
        ranks.stop()  # whatever failed above, nothing is left running


def greedy(base_url: str, prompt: str, max_tokens: int = 32) -> tuple[str, int]:
    message = client(base_url).messages.create(
        model="m", max_tokens=max_tokens, extra_body={"temperature": 0}, messages=[{"role": "user", "content": prompt}]
    )
    return "".join(b.text for b in message.content if b.type == "text"), message.usage.output_tokens


def test_greedy_answers_are_the_single_process_ones_token_for_token(group: Ranks, alone: ServerThread) -> None:
    for prompt in PROMPTS:
        ours, n = greedy(group.base_url, prompt)
        assert (ours, n) == greedy(alone.base_url, prompt)
        assert n == 32 and len(set(ours.split())) > 8  # a varied answer, not one repeated token


def test_five_concurrent_streams_all_finish(group: Ranks) -> None:
    results: dict[int, Any] = {}

    def stream(i: int) -> None:
        with client(group.base_url).messages.stream(
            model="m", max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": f"story number {i}"}]
        ) as events:
            text = "".join(events.text_stream)
            results[i] = (text, events.get_final_message())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(5))
    for text, final in results.values():
        assert text and final.usage.output_tokens == 24 and final.stop_reason == "max_tokens"
    wait_until(lambda: not _model(health(group.base_url))["load"]["active"], timeout=30, what="the batch to empty")


def test_a_cancelled_stream_leaves_the_ranks_in_step(group: Ranks, alone: ServerThread) -> None:
    """Rank 0 cancels on every rank at the same turn; had they drifted, the next answer would not match."""
    stream = Stream(group, ANTHROPIC, chat("a long story please", max_tokens=2000, temperature=0))
    stream.read(8)
    stream.abandon()
    wait_until(lambda: _model(health(group.base_url))["load"]["active"] == 0, timeout=30, what="the cancelled sequence to go")
    assert greedy(group.base_url, PROMPTS[0]) == greedy(alone.base_url, PROMPTS[0])


def test_sampled_answers_with_a_seed_repeat_and_without_one_still_serve(group: Ranks) -> None:
    body = chat("tell me something", max_tokens=12, temperature=0.9, top_p=0.95)
    status, first = post_json(group, ANTHROPIC, body)  # rank 0 draws the seed every rank samples with
    assert status == 200 and first["usage"]["output_tokens"] > 0
    seeded = {**chat("tell me something", max_tokens=12, temperature=0.9), "seed": 7}
    answers = [post_json(group, OPENAI, seeded)[1]["choices"][0]["message"]["content"] for _ in range(2)]
    assert answers[0] == answers[1]


def test_structured_output_is_constrained_alike_on_every_rank(group: Ranks, alone: ServerThread) -> None:
    """The grammar travels with the admission; a rank that sampled without it would feed the
    model other tokens than rank 0, and the answer would not be the single process's."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
    body = {**chat("A person, please", max_tokens=24, temperature=0),
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}}}  # fmt: skip
    ours = post_json(group, OPENAI, body)[1]["choices"][0]["message"]["content"]
    assert ours.startswith('{"name"') and ours == post_json(alone, OPENAI, body)[1]["choices"][0]["message"]["content"]


def test_the_prefix_cache_serves_a_conversations_next_turn(group: Ranks) -> None:
    turn = [{"role": "user", "content": "Remember the number 41. " * 30}]
    first = client(group.base_url).messages.create(model="m", max_tokens=8, extra_body={"temperature": 0}, messages=turn)
    reply = "".join(b.text for b in first.content if b.type == "text")
    follow = [*turn, {"role": "assistant", "content": reply}, {"role": "user", "content": "And now?"}]
    second = client(group.base_url).messages.create(model="m", max_tokens=8, extra_body={"temperature": 0}, messages=follow)
    assert second.usage.cache_read_input_tokens and second.usage.cache_read_input_tokens > 100


def test_count_tokens_and_errors_are_a_single_servers(group: Ranks, alone: ServerThread) -> None:
    messages = [{"role": "user", "content": "How many tokens is this?"}]
    counted = client(group.base_url).messages.count_tokens(model="m", messages=messages).input_tokens
    assert counted == client(alone.base_url).messages.count_tokens(model="m", messages=messages).input_tokens
    for path in (ANTHROPIC, OPENAI):
        status, body = post_json(group, path, {"model": "m", "max_tokens": -1, "messages": []})
        assert status == 400 and error_of(path, body)[0] == "invalid_request_error"
    status, body = post_json(group, ANTHROPIC, chat("x" * 10, max_tokens=4, model="/etc/passwd"))
    assert status == 200  # unknown names get the default model, as alone


def test_health_and_status_describe_the_group(group: Ranks) -> None:
    body = health(group.base_url)
    assert body["status"] == "ok"
    dist = body["distributed"]
    assert dist["backend"] == "ring" and dist["world_size"] == 2 and dist["parallel"] == "tensor" and dist["healthy"]
    assert [r["rank"] for r in dist["ranks"]] == [0, 1]
    for rank in dist["ranks"]:
        assert rank["host"] and rank["active_bytes"] > 0 and rank["weight_bytes"] > 0 and rank["kv_pool_bytes"] > 0
    model = _model(body)
    assert model["layout"] == "tensor parallel, 1 of 2 shares"
    time.sleep(0.5)
    out = subprocess.run(
        [sys.executable, "-m", "pensieve.cli", "status", "--json"], env=_cli_env(group), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["health"]["distributed"]["world_size"] == 2
    text = subprocess.run([sys.executable, "-m", "pensieve.cli", "status"], env=_cli_env(group), capture_output=True, text=True, timeout=60).stdout
    assert "2 ranks over ring, tensor parallel, serving" in text and "rank 1:" in text


def _model(body: dict[str, Any]) -> dict[str, Any]:
    (model,) = body["models"]
    return model


def _cli_env(group: Ranks) -> dict[str, str]:
    return {k: v for k, v in group.env.items() if not k.startswith("MLX_")}
