"""Real answers: the embedded SmolLM2-135M under `pensieve start`, through the official SDK and raw HTTP.

Greedy decoding (temperature 0) makes each answer reproducible, so these tests can assert on
what the model says, not only on the shape of the response. Prompts stay short: on a CPU the
135M model prefills only tens of tokens per second, so the protocol-heavy cases (tools, many fields)
run on the tiny model instead (test_anthropic_sdk.py).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import anthropic
import pytest

from tests.support import API_KEY, CliServer, health

pytestmark = pytest.mark.slow
GREEDY = {"temperature": 0}


@pytest.fixture
def client(embedded_server: CliServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=embedded_server.base_url, api_key=API_KEY, max_retries=0)


def text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_streamed_answer(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    with client.messages.stream(model="claude-opus-4-8", max_tokens=40, messages=question, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 2 and "Paris" in "".join(pieces)
    assert final.stop_reason == "end_turn" and text(final) == "".join(pieces)
    whole = client.messages.create(model="claude-opus-4-8", max_tokens=40, messages=question, extra_body=GREEDY)
    assert text(whole) == text(final)  # streaming or not, greedy gives the same answer
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.content[0].type == "text" and whole.stop_reason == "end_turn"
    # Anthropic counts prefix-cache reads apart from input_tokens; together they are the prompt.
    prompt_tokens = whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert prompt_tokens > 10 and 0 < whole.usage.output_tokens <= 40


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="pensieve", max_tokens=3, messages=[{"role": "user", "content": "Tell me a long story."}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stop_sequence_on_a_real_answer(client: anthropic.Anthropic) -> None:
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = client.messages.create(model="m", max_tokens=16, messages=count, extra_body=GREEDY)
    assert text(free).startswith("1, 2, 3, 4, 5")
    stopped = client.messages.create(model="m", max_tokens=16, messages=count, stop_sequences=[", 5"], extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == ", 5"
    assert text(stopped) == "1, 2, 3, 4"
    assert stopped.usage.output_tokens < free.usage.output_tokens


def test_assistant_prefill_is_continued(client: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    message = client.messages.create(model="m", max_tokens=10, messages=messages, extra_body=GREEDY)
    assert "Paris" in text(message)


def test_prompt_too_long_for_the_8k_context(client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "Summarize: " + "the quick brown fox jumps over the lazy dog. " * 1000}]
    counted = client.messages.count_tokens(model="claude-opus-4-8", messages=long).input_tokens
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=long)
    assert info.value.status_code == 400 and info.value.body["error"]["type"] == "invalid_request_error"
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", info.value.body["error"]["message"])
    assert match and int(match[1]) == counted > 8192 and int(match[2]) == 8192


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
