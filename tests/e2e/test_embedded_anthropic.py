"""The embedded model end to end: `pensieve start`, then the official Anthropic SDK and raw HTTP."""

from __future__ import annotations

import json
import urllib.request

import anthropic
import pytest

from tests.support import API_KEY, CliServer, health

pytestmark = pytest.mark.slow


def test_capital_of_france_via_sdk(embedded_server: CliServer) -> None:
    client = anthropic.Anthropic(base_url=embedded_server.base_url, api_key=API_KEY)
    message = client.messages.create(
        model="claude-opus-4-8",
        max_tokens=40,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        extra_body={"temperature": 0},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "text"
    assert "Paris" in message.content[0].text
    assert message.stop_reason == "end_turn"
    # Anthropic counts prefix-cache reads apart from input_tokens; together they are the prompt.
    prompt_tokens = message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert prompt_tokens > 10 and 0 < message.usage.output_tokens <= 40


def test_max_tokens_stop_reason(embedded_server: CliServer) -> None:
    client = anthropic.Anthropic(base_url=embedded_server.base_url, api_key=API_KEY)
    message = client.messages.create(
        model="pensieve", max_tokens=3, messages=[{"role": "user", "content": "Tell me a long story."}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_wrong_key_is_401_in_anthropic_shape(embedded_server: CliServer) -> None:
    client = anthropic.Anthropic(base_url=embedded_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"


def _post(base_url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base_url}/v1/messages",
        data=body,
        headers={"x-api-key": API_KEY, "content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).encode(), "max_tokens"),
        (json.dumps({"model": "x", "max_tokens": 5}).encode(), "messages"),
        (json.dumps({"model": "x", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}).encode(), "role"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(embedded_server: CliServer, body: bytes, needle: str) -> None:
    status, payload = _post(embedded_server.base_url, body)
    assert status == 400
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"]
    assert health(embedded_server.base_url)["status"] == "ok"


def test_health_reports_model_memory_uptime(embedded_server: CliServer) -> None:
    report = health(embedded_server.base_url)
    assert report["status"] == "ok"
    assert report["model"] == "smollm2-135m-instruct"
    assert report["memory"]["active_bytes"] > 50_000_000
    assert report["uptime_s"] > 0
    assert "pensieve-local-key" not in json.dumps(report)
