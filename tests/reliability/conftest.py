"""One real server for the reliability suites, and raw HTTP helpers that send exactly the bytes
a test means (invalid UTF-8, NaN literals, truncated bodies), which JSON-encoding clients cannot.

The server's context window is 256 tokens, so a `max_tokens` far over it ends in a second or
two, and the prompt-prefix cache is off, so MLX memory after a request is exactly what it was
before (a cancelled sequence's KV cache is freed, not kept for reuse).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.models import EngineLoad
from tests.support import API_KEY, CliServer, ServerThread, make_settings

CONTEXT = 256
Server = ServerThread | CliServer
"""What the HTTP helpers talk to: a server thread or a `pensieve start` process."""
ANTHROPIC = "/v1/messages"
OPENAI = "/v1/chat/completions"


@pytest.fixture(scope="package")
def rserver(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("reliability-home"),
        model__context_length=CONTEXT,
        performance__prefix_cache_mb=0,
    )
    with ServerThread(settings) as server:
        yield server


def headers_for(path: str, **extra: str) -> dict[str, str]:
    """The credential each API's clients send, plus a JSON content type."""
    auth = {"Authorization": f"Bearer {API_KEY}"} if path.startswith("/v1/chat/") else {"x-api-key": API_KEY}
    return {"content-type": "application/json", **auth, **extra}


def post_raw(server: Server, path: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """POST these exact bytes; (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("POST", path, data, headers if headers is not None else headers_for(path))
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


def post_json(server: Server, path: str, body: dict[str, Any], **extra: str) -> tuple[int, dict[str, Any]]:
    status, _, raw = post_raw(server, path, json.dumps(body).encode(), headers_for(path, **extra))
    return status, json.loads(raw)


def chat(content: Any = "hi", **fields: Any) -> dict[str, Any]:
    """A small request body both APIs accept."""
    return {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **fields}


def error_of(path: str, body: dict[str, Any]) -> tuple[str, str]:
    """(type, message) of an error body, asserting it has the shape of the API `path` speaks."""
    if path.startswith("/v1/chat/"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["code"], body["error"]["message"]
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"} and body["request_id"].startswith("req_"), body
    return body["error"]["type"], body["error"]["message"]


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll `predicate` (bounded in time) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def engine_load(server: ServerThread) -> EngineLoad:
    """The default model's engine load: sequences decoding, waiting, and requests holding a place."""
    (engine,) = server.pool.loaded_engines()
    return engine.load


def idle(server: ServerThread) -> bool:
    return not engine_load(server).busy


class Stream:
    """A streaming request read line by line, which a test can abandon at any point."""

    def __init__(self, server: Server, path: str, body: dict[str, Any], timeout: float = 60) -> None:
        self.path = path
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        self.connection.request("POST", path, json.dumps({**body, "stream": True}).encode(), headers_for(path))
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()[:500]
        self.request_id = self.response.headers["request-id"]
        self.events: list[Any] = []
        """Every `data:` payload read so far (parsed JSON, or the string `[DONE]`)."""

    def read(self, count: int | None = None) -> list[Any]:
        """Read `count` more data payloads (all, to the end, when None)."""
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                payload = line[6:]
                self.events.append(payload if payload == "[DONE]" else json.loads(payload))
                if count is not None:
                    count -= 1
                    if count <= 0:
                        break
        return self.events

    def abandon(self) -> None:
        """Hang up mid-stream, as a client that is killed or gives up does."""
        sock = self.connection.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.response.close()
        self.connection.close()

    def complete(self) -> bool:
        """Whether the stream ended the way its API ends a successful one."""
        if self.path.startswith("/v1/chat/"):
            chunks = [e for e in self.events if isinstance(e, dict)]
            return self.events[-1] == "[DONE]" and all("error" not in c for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] is not None
        types = [e["type"] for e in self.events]
        return types[0] == "message_start" and types[-1] == "message_stop" and "error" not in types


@contextlib.contextmanager
def store_server(model: Path, root: Path, entries: list[str], **overrides: Any) -> Iterator[tuple[ServerThread, Path]]:
    """A server over its own model store under `root`, holding a copy of `model` per entry;
    the first entry is the default model."""
    store = root / "models"
    for name in entries:
        shutil.copytree(model, store / name)
    settings = make_settings(entries[0], root, **overrides)
    with ServerThread(settings, ModelPool(settings, store=store)) as server:
        yield server, store
