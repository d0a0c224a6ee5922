"""Each Anthropic error type, raised by a real condition on a real server, seen through the SDK.

A strict server over the tiny model makes the conditions cheap to reach: unknown model names
are an error (only `claude-haiku-*` has an alias), one request at a time with no queue, a 50 KB
body limit and a 512-token context.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import mlx.core as mx
import pytest

from pensieve.models import ChatRequest
from tests.e2e.test_anthropic_http import call, sse_events
from tests.e2e.test_anthropic_sdk import USER, always, client_for, forced_output
from tests.support import API_KEY, ServerThread, make_settings

CONTEXT = 512


@pytest.fixture(scope="module")
def strict(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("strict-home"),
        model__unknown="error",
        model__aliases={"claude-haiku-*": str(tiny_model_dir)},
        model__context_length=CONTEXT,
        performance__max_concurrent_requests=1,
        performance__max_queued_requests=0,
        server__max_body_mb=0.05,
    )
    with ServerThread(settings) as server:
        yield server


@pytest.fixture
def client(strict: ServerThread) -> anthropic.Anthropic:
    return client_for(strict)


def served(server: ServerThread) -> str:
    return server.pool.default_name


def test_unknown_model_is_404_when_configured(strict: ServerThread, client: anthropic.Anthropic) -> None:
    for attempt in (
        lambda: client.messages.create(model="claude-opus-4-8", max_tokens=5, messages=USER),
        lambda: client.messages.count_tokens(model="claude-opus-4-8", messages=USER),
        lambda: client.models.retrieve("claude-opus-4-8"),
    ):
        with pytest.raises(anthropic.NotFoundError) as info:
            attempt()
        assert info.value.status_code == 404 and info.value.body["error"]["type"] == "not_found_error"
        assert "claude-opus-4-8" in info.value.message and info.value.request_id
    assert client.messages.create(model=served(strict), max_tokens=2, messages=USER).usage.output_tokens >= 1


def test_an_alias_pattern_maps_claude_names_to_a_served_model(strict: ServerThread, client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=USER)
    assert message.model == "claude-haiku-4-5" and message.usage.output_tokens >= 1
    assert client.models.retrieve("claude-haiku-4-5").id == served(strict)
    assert client.messages.count_tokens(model="claude-haiku-4-5-20251001", messages=USER).input_tokens > 0


def test_body_over_the_limit_is_413(strict: ServerThread, client: anthropic.Anthropic) -> None:
    big = [{"role": "user", "content": "x" * 60_000}]
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=served(strict), max_tokens=5, messages=big)
    assert info.value.status_code == 413 and info.value.body["error"]["type"] == "request_too_large"
    # Without a Content-Length (chunked upload) the limit holds too.
    connection = http.client.HTTPConnection("127.0.0.1", strict.port, timeout=60)
    body = json.dumps({"model": served(strict), "max_tokens": 5, "messages": big}).encode()
    connection.request(
        "POST", "/v1/messages", body=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"x-api-key": API_KEY, "content-type": "application/json"}, encode_chunked=True,
    )  # fmt: skip
    response = connection.getresponse()
    payload = json.loads(response.read())
    assert response.status == 413 and payload["error"]["type"] == "request_too_large"
    assert response.getheader("request-id")


def test_a_full_queue_is_429_with_retry_after(strict: ServerThread, client: anthropic.Anthropic) -> None:
    engine = strict.call(strict.pool.engine(None))
    release = threading.Event()
    original = engine.sampler_for

    def held(request: ChatRequest) -> Any:
        def sample(logprobs: mx.array) -> mx.array:
            release.wait(60)  # keeps the first request running until the second was refused
            return mx.argmax(logprobs, axis=-1)

        return sample

    engine.sampler_for = held
    try:
        first = client.messages.create(model=served(strict), max_tokens=50, messages=USER, stream=True)
        assert next(iter(first)).type == "message_start"
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model=served(strict), max_tokens=5, messages=USER)
        assert info.value.status_code == 429 and info.value.body["error"]["type"] == "rate_limit_error"
        assert int(info.value.response.headers["retry-after"]) > 0
    finally:
        engine.sampler_for = original
        release.set()
    assert [e.type for e in first][-1] == "message_stop"  # the first request is unharmed
    assert client.messages.create(model=served(strict), max_tokens=2, messages=USER).stop_reason


def failing(request: ChatRequest) -> Any:
    def sample(logprobs: mx.array) -> mx.array:
        raise RuntimeError("sampler exploded")

    return sample


def test_generation_failure_is_500_api_error_then_the_server_recovers(strict: ServerThread, client: anthropic.Anthropic) -> None:
    engine = strict.call(strict.pool.engine(None))
    original, engine.sampler_for = engine.sampler_for, failing
    try:
        with pytest.raises(anthropic.InternalServerError) as info:
            client.messages.create(model=served(strict), max_tokens=5, messages=USER)
        status, headers, raw = call(strict, "POST", "/v1/messages", {"model": served(strict), "max_tokens": 5, "messages": USER, "stream": True})
    finally:
        engine.sampler_for = original
    assert info.value.status_code == 500 and info.value.body["error"]["type"] == "api_error"
    assert "generation failed" in info.value.message and "sampler exploded" in info.value.message
    # Streaming: the 200 is already sent, so the failure is an `error` event, and no message_stop.
    events = sse_events(raw)
    assert status == 200 and events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert events[-1][1]["request_id"] == headers["request-id"]
    assert "message_stop" not in [name for name, _ in events]
    assert client.messages.create(model=served(strict), max_tokens=2, messages=USER).stop_reason


def test_prompt_over_the_context_is_400_in_the_wording_claude_code_parses(strict: ServerThread, client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "word " * 600}]
    counted = client.messages.count_tokens(model=served(strict), messages=long).input_tokens
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=served(strict), max_tokens=5, messages=long)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", info.value.body["error"]["message"])
    assert match and int(match[1]) == counted > CONTEXT and int(match[2]) == CONTEXT


def test_max_tokens_is_capped_by_the_context_window(strict: ServerThread, client: anthropic.Anthropic) -> None:
    with forced_output(strict, always("a, " * 2000)):
        message = client.messages.create(model=served(strict), max_tokens=20_000, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens + message.usage.input_tokens + message.usage.cache_read_input_tokens == CONTEXT


def test_an_unexpected_failure_after_the_stream_began_is_an_error_event(strict: ServerThread) -> None:
    engine = strict.call(strict.pool.engine(None))

    def broken(request: ChatRequest) -> Any:
        raise RuntimeError("sampler factory broke")

    original, engine.sampler_for = engine.sampler_for, broken
    try:
        status, headers, raw = call(strict, "POST", "/v1/messages", {"model": served(strict), "max_tokens": 5, "messages": USER, "stream": True})
        whole, _, body = call(strict, "POST", "/v1/messages", {"model": served(strict), "max_tokens": 5, "messages": USER})
    finally:
        engine.sampler_for = original
    events = sse_events(raw)
    assert status == 200 and [name for name, _ in events] == ["message_start", "error"]
    assert events[-1][1]["error"] == {"type": "api_error", "message": "internal server error; the server log has details. Retry the request"}
    assert events[-1][1]["request_id"] == headers["request-id"]
    assert whole == 500 and json.loads(body)["error"]["type"] == "api_error"
