"""The Messages API over raw HTTP: malformed input, the raw SSE stream, headers on every answer.

An SDK validates and reshapes what it sends and receives; these tests send bytes and read bytes,
so they see exactly what a hand-written or non-Python client would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.test_anthropic_sdk import always, forced_output
from tests.support import API_KEY, ServerThread

HEADERS = {"x-api-key": API_KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"}


def call(
    server: ServerThread, method: str, path: str, body: bytes | dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"{server.base_url}{path}", data=data, method=method, headers=headers if headers is not None else HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


BASIC = {"model": "claude-opus-4-8", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


def test_raw_stream_is_anthropics_event_sequence_with_ping(tiny_server: ServerThread) -> None:
    with forced_output(tiny_server, always("Hi there")):
        status, headers, raw = call(tiny_server, "POST", "/v1/messages", {**BASIC, "max_tokens": 20, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * (len(names) - 6)
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)  # `event:` and data.type agree
    start = events[0][1]["message"]
    assert {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"} <= set(start)
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert set(events[-2][1]["usage"]) >= {"output_tokens", "input_tokens", "cache_read_input_tokens"}


def test_every_top_level_field_beta_query_and_headers_are_accepted(tiny_server: ServerThread) -> None:
    body = {
        **BASIC,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=1234;"},
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "metadata": {"user_id": "someone"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "thinking": {"type": "adaptive"},
        "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
        "service_tier": "auto", "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}, "container": "container_123", "cache_control": {"type": "ephemeral"},
        "mcp_servers": [{"type": "url", "url": "https://example.invalid/mcp", "name": "x"}],
        "speed": "fast", "inference_geo": "us", "diagnostics": {}, "user_profile_id": "u", "workspace_id": "w",
        "some_field_from_the_future": {"nested": [1, 2]},
    }  # fmt: skip
    beta = {**HEADERS, "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14", "x-app": "cli",
            "x-stainless-lang": "js", "anthropic-dangerous-direct-browser-access": "true"}  # fmt: skip
    status, headers, raw = call(tiny_server, "POST", "/v1/messages?beta=true", body, beta)
    assert status == 200, raw
    assert json.loads(raw)["type"] == "message" and headers["request-id"]
    status, _, raw = call(tiny_server, "POST", "/v1/messages/count_tokens?beta=true", {k: v for k, v in body.items() if k != "max_tokens"}, beta)
    assert status == 200 and json.loads(raw)["input_tokens"] > 0


def test_authorization_bearer_is_accepted_like_x_api_key(tiny_server: ServerThread) -> None:
    status, _, _ = call(tiny_server, "POST", "/v1/messages", BASIC, {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert status == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
        ({**BASIC, "max_tokens": "ten"}, "max_tokens"),
        ({**BASIC, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages: Field required"),
        ({**BASIC, "messages": []}, "messages"),
        ({**BASIC, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({**BASIC, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
        ({**BASIC, "messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
        ({**BASIC, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
        ({**BASIC, "temperature": 1.5}, "temperature"),
        ({**BASIC, "top_p": -1}, "top_p"),
        ({**BASIC, "stop_sequences": "END"}, "stop_sequences"),
        ({**BASIC, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({**BASIC, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({**BASIC, "tools": [{"name": "a", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "b"}}, "tool_choice.name"),
        ({**BASIC, "thinking": {"type": "sometimes"}}, "thinking"),
        ({**BASIC, "system": 5}, "system"),
        ({**BASIC, "stream": "yes please"}, "stream"),
    ],
)
def test_malformed_input_is_a_400_naming_the_problem(tiny_server: ServerThread, body: bytes | dict[str, Any], needle: str) -> None:
    status, headers, raw = call(tiny_server, "POST", "/v1/messages", body)
    payload = json.loads(raw)
    assert status == 400, payload
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"]
    assert payload["request_id"] == headers["request-id"]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found_error"),
        ("POST", "/v1/messages/batches", 404, "not_found_error"),
        ("GET", "/v1/messages", 400, "invalid_request_error"),  # wrong method: says which to use
    ],
)
def test_unknown_routes_and_methods_answer_in_anthropic_shape(tiny_server: ServerThread, method: str, path: str, status: int, kind: str) -> None:
    got, headers, raw = call(tiny_server, method, path, {} if method == "POST" else None)
    payload = json.loads(raw)
    assert got == status and payload["error"]["type"] == kind and headers["request-id"]


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}])
def test_missing_or_wrong_key_is_401(tiny_server: ServerThread, headers: dict[str, str]) -> None:
    status, got, raw = call(tiny_server, "POST", "/v1/messages", BASIC, {"content-type": "application/json", **headers})
    payload = json.loads(raw)
    assert status == 401 and payload["error"]["type"] == "authentication_error" and got["request-id"]
    assert API_KEY not in raw.decode()


def test_root_answers_head_and_get_without_a_key(tiny_server: ServerThread) -> None:
    status, headers, body = call(tiny_server, "HEAD", "/", headers={})
    assert status == 200 and body == b"" and headers["request-id"]
    status, headers, body = call(tiny_server, "GET", "/", headers={})
    assert status == 200 and headers["request-id"]


def test_every_response_kind_carries_a_distinct_request_id(tiny_server: ServerThread) -> None:
    ids = set()
    for method, path, body in [
        ("POST", "/v1/messages", BASIC),
        ("POST", "/v1/messages", {**BASIC, "stream": True}),
        ("POST", "/v1/messages/count_tokens", {"model": "m", "messages": BASIC["messages"]}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/claude-opus-4-8", None),
        ("POST", "/v1/messages", b"{"),
        ("GET", "/nope", None),
    ]:
        _, headers, _ = call(tiny_server, method, path, body)
        ids.add(headers["request-id"])
    assert len(ids) == 7 and all(i.startswith("req_") for i in ids)
