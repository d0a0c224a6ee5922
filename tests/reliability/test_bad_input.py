"""Hand-written bad input on both APIs: each is a 4xx in the right API's shape, never a 5xx.

The fuzz suite (test_fuzz.py) covers what a schema can generate; these are the cases it
cannot (bytes that are not JSON or not UTF-8, NaN literals, 100k-deep nesting, bodies larger
than the limit sent as Content-Length or chunked) and the decisions worth stating once:
max_tokens over the context window is capped, not refused; a tool schema that is not valid JSON
Schema is accepted (it is shown to the model, never executed).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.reliability.conftest import (
    ANTHROPIC,
    CONTEXT,
    OPENAI,
    chat,
    error_of,
    headers_for,
    idle,
    post_json,
    post_raw,
)
from tests.support import ServerThread, health

BOTH = pytest.mark.parametrize("path", [ANTHROPIC, OPENAI])


def _refused(server: ServerThread, path: str, data: bytes, status: int = 400) -> str:
    got, _, raw = post_raw(server, path, data)
    assert got == status, raw[:500]
    return error_of(path, json.loads(raw))[1]


@BOTH
@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{nope", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "\xff\xfe"}]}', "not valid UTF-8"),
        (b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800 alone"}]}', "lone UTF-16 surrogate"),
        (b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b', "messages": []}', "not valid JSON"),
        (b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "nested too deeply"),
        (b'{"model": "m", "max_tokens": 4, "metadata": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b', "messages": []}', "nested too deeply"),
    ],
    ids=["syntax", "empty", "array", "invalid-utf8", "lone-surrogate", "5000-digit-number", "100k-nested-arrays", "70-nested-objects"],
)
def test_unparseable_bodies_are_400s(rserver: ServerThread, path: str, data: bytes, says: str) -> None:
    assert says in _refused(rserver, path, data)


def test_nesting_within_the_limit_is_served(rserver: ServerThread) -> None:
    nested = json.loads('{"a": ' * 60 + "1" + "}" * 60)
    assert post_json(rserver, ANTHROPIC, chat(metadata=nested))[0] == 200


@pytest.mark.parametrize(
    ("path", "fields", "names"),
    [
        (ANTHROPIC, {"model": 7}, "model"),
        (ANTHROPIC, {"max_tokens": "many"}, "max_tokens"),
        (ANTHROPIC, {"max_tokens": 4.5}, "max_tokens"),
        (ANTHROPIC, {"max_tokens": 0}, "max_tokens"),
        (ANTHROPIC, {"messages": "hi"}, "messages"),
        (ANTHROPIC, {"stream": "maybe"}, "stream"),
        (ANTHROPIC, {"temperature": -0.5}, "temperature"),
        (ANTHROPIC, {"temperature": 1.5}, "temperature"),
        (ANTHROPIC, {"top_p": -1}, "top_p"),
        (ANTHROPIC, {"top_k": -3}, "top_k"),
        (ANTHROPIC, {"messages": []}, "messages"),
        (ANTHROPIC, {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        (ANTHROPIC, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
        (ANTHROPIC, {"tools": [{"name": "t", "input_schema": [1, 2]}]}, "tools.0.input_schema"),
        (OPENAI, {"model": ["m"]}, "model"),
        (OPENAI, {"max_tokens": -1}, "max_tokens"),
        (OPENAI, {"temperature": 2.5}, "temperature"),
        (OPENAI, {"temperature": -1}, "temperature"),
        (OPENAI, {"top_p": 1.01}, "top_p"),
        (OPENAI, {"seed": 2**70}, "seed"),
        (OPENAI, {"messages": []}, "messages"),
        (OPENAI, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (OPENAI, {"tools": [{"type": "function", "function": {"name": "t", "parameters": "x"}}]}, "tools.0.function.parameters"),
    ],
)
def test_wrong_types_and_values_are_400s_naming_the_field(rserver: ServerThread, path: str, fields: dict, names: str) -> None:
    status, body = post_json(rserver, path, {**chat(), **fields})
    kind, message = error_of(path, body)
    assert status == 400 and kind == "invalid_request_error" and message.startswith(names), message


@BOTH
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_nan_and_infinite_sampling_values_are_400s(rserver: ServerThread, path: str, literal: str, field: str) -> None:
    data = json.dumps(chat()).replace('"max_tokens": 4', f'"max_tokens": 4, "{field}": {literal}').encode()
    assert _refused(rserver, path, data).startswith(field)


def test_nan_max_tokens_is_a_400(rserver: ServerThread) -> None:
    data = json.dumps(chat()).replace('"max_tokens": 4', '"max_tokens": NaN').encode()
    assert _refused(rserver, ANTHROPIC, data).startswith("max_tokens")


@BOTH
def test_huge_max_tokens_is_capped_by_the_context_window(rserver: ServerThread, path: str) -> None:
    status, body = post_json(rserver, path, chat(max_tokens=10**12, temperature=0))
    assert status == 200, body
    if path == ANTHROPIC:
        used, stop = body["usage"]["input_tokens"] + body["usage"]["output_tokens"], body["stop_reason"]
        assert stop == "max_tokens"
    else:
        used, stop = body["usage"]["total_tokens"], body["choices"][0]["finish_reason"]
        assert stop == "length"
    assert used == CONTEXT


@BOTH
def test_a_prompt_over_the_context_window_is_a_400_with_anthropics_wording(rserver: ServerThread, path: str) -> None:
    status, body = post_json(rserver, path, chat("word " * 600))
    kind, message = error_of(path, body)
    assert status == 400 and kind == "invalid_request_error"
    assert message.startswith("prompt is too long: ") and message.endswith(f" > {CONTEXT} maximum")


@BOTH
@pytest.mark.parametrize("name", ["no-such-model", "m" * 300, "x" * 16_000], ids=["plain", "300-chars", "16k-chars"])
def test_an_unknown_model_is_the_default_or_a_404_when_configured(rserver: ServerThread, path: str, name: str) -> None:
    """Names longer than a file name can be are simply unknown (they once reached the file
    system and came back as a 500)."""
    status, body = post_json(rserver, path, chat(model=name))
    assert status == 200 and body["model"] == name  # echoed, served by the default
    rserver.settings.model.unknown = "error"  # a live setting, as SIGHUP applies it
    try:
        status, body = post_json(rserver, path, chat(model=name))
    finally:
        rserver.settings.model.unknown = "default"
    kind, message = error_of(path, body)
    assert status == 404 and kind == "not_found_error" and name[:100] in message


@pytest.mark.parametrize(
    ("path", "tool"),
    [
        (ANTHROPIC, {"name": "lookup", "input_schema": {"type": 12, "properties": "none", "required": 5}}),
        (OPENAI, {"type": "function", "function": {"name": "lookup", "parameters": {"type": "nope", "items": []}}}),
    ],
)
def test_a_tool_schema_that_is_not_json_schema_is_accepted(rserver: ServerThread, path: str, tool: dict) -> None:
    """Decision: accepted. The schema only describes the arguments to the model (it is rendered
    into the prompt); nothing validates against it, so nothing can fail on it."""
    status, body = post_json(rserver, path, chat(tools=[tool]))
    assert status == 200, body


def _response_head(sock: socket.socket) -> bytes:
    """Read until a whole response (headers and its Content-Length body) has arrived."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _request_head(path: str, framing: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers_for(path).items()), framing]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@BOTH
def test_a_100mb_content_length_is_refused_before_the_body_is_read(rserver: ServerThread, path: str) -> None:
    with socket.create_connection(("127.0.0.1", rserver.port), timeout=30) as sock:
        sock.sendall(_request_head(path, "Content-Length: 100000000") + b'{"messages": "' + b"a" * 1_000_000)
        response = _response_head(sock)  # 99 MB were never sent: the answer cannot have waited for them
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    kind, message = error_of(path, json.loads(body))
    assert kind == "request_too_large" and "100000000 bytes" in message


@BOTH
def test_a_chunked_body_is_cut_off_at_the_limit(rserver: ServerThread, path: str) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", rserver.port), timeout=30) as sock:
        sock.sendall(_request_head(path, "Transfer-Encoding: chunked"))

        def send() -> None:
            nonlocal sent
            frame = b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
            try:
                while sent < 100 * 2**20:
                    sock.sendall(frame)
                    sent += 0x100000
            except OSError:  # the socket closed under us once the answer arrived
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        response = _response_head(sock)
        sock.shutdown(socket.SHUT_RDWR)
    sender.join(timeout=30)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert error_of(path, json.loads(body))[0] == "request_too_large"
    assert sent < 100 * 2**20  # the server stopped reading soon after the 32 MB limit


def test_the_server_is_healthy_after_all_of_it(rserver: ServerThread) -> None:
    time.sleep(0.1)
    assert health(rserver.base_url)["status"] == "ok" and idle(rserver)
    assert post_json(rserver, ANTHROPIC, chat())[0] == 200
