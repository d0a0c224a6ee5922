"""Faults while serving, in process: clients that hang up or stop reading, and a forward pass
that raises on the compute thread. Each costs only the request it hits (a failed batched step
costs the batch, see below); the slot is freed and the server goes on serving.

Faults that need a real process (SIGTERM, a full log disk) are in test_process_faults.py;
model files that vanish or are corrupt at load are in test_model_files.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from pensieve.server.observe import OBSERVER
from tests.reliability.conftest import (
    ANTHROPIC,
    OPENAI,
    Stream,
    chat,
    error_of,
    headers_for,
    idle,
    post_json,
    wait_until,
)
from tests.support import ServerThread

BOTH = pytest.mark.parametrize("path", [ANTHROPIC, OPENAI])


def _summary(server: ServerThread, request_id: str) -> Any:
    """The server's record of a finished request (what its log line says)."""
    observer = server._runner.app[OBSERVER]  # type: ignore[union-attr]
    wait_until(lambda: any(s.request_id == request_id for s in observer.recent), what=f"{request_id} to finish")
    return next(s for s in observer.recent if s.request_id == request_id)


def _mlx_active(server: ServerThread) -> int:
    return server.pool.memory().active_bytes


@BOTH
def test_a_client_that_hangs_up_mid_stream_frees_its_slot_and_memory(rserver: ServerThread, path: str) -> None:
    def hang_up_beside_a_bystander() -> tuple[Stream, Stream]:
        bystander = Stream(rserver, ANTHROPIC, chat("keep going", max_tokens=100, temperature=0))
        leaver = Stream(rserver, path, chat("then leave", max_tokens=200, temperature=0))
        leaver.read(4)  # generation is under way
        leaver.abandon()
        bystander.read()
        wait_until(lambda: idle(rserver), what="every slot to be free")
        return bystander, leaver

    hang_up_beside_a_bystander()  # the same shapes once first, so MLX's buffers are warm
    before = _mlx_active(rserver)
    bystander, leaver = hang_up_beside_a_bystander()
    assert bystander.complete()  # the other client never noticed
    assert _summary(rserver, leaver.request_id).output_tokens is None  # cancelled, never finished
    # No KV cache or buffer of the cancelled sequence is left (the prefix cache is off here,
    # so nothing is kept on purpose either; a leaked 200-token cache would be 128 KiB).
    assert _mlx_active(rserver) <= before + 64 * 1024


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(rserver: ServerThread, warnings_logged: list[str]) -> None:
    """Backpressure pauses the handler once the socket buffers fill; after
    server.write_timeout_s of no progress the client is dropped and its sequence cancelled."""
    rserver.settings.server.write_timeout_s = 1.0  # live, as a SIGHUP would set it
    try:
        with socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
            stalled.connect(("127.0.0.1", rserver.port))
            # Every OpenAI chunk echoes the model name: 16 KB a token fills the buffers quickly.
            body = json.dumps(chat("never read", model="x" * 16_000, max_tokens=200, stream=True)).encode()
            head = "".join(f"{k}: {v}\r\n" for k, v in {**headers_for(OPENAI), "Content-Length": str(len(body))}.items())
            stalled.sendall(f"POST {OPENAI} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)

            bystander = Stream(rserver, ANTHROPIC, chat("meanwhile", max_tokens=60))
            bystander.read()
            assert bystander.complete()  # served while the other client stalls
            wait_until(lambda: any("dropped a client" in m for m in warnings_logged), what="the drop")
            wait_until(lambda: idle(rserver), what="the stalled client's slot to be free")
            received = _drain(stalled)
        assert received < 200 * 16_000  # it never got the whole answer: the connection was cut
    finally:
        rserver.settings.server.write_timeout_s = 60.0


def _drain(sock: socket.socket) -> int:
    """Read what the kernel buffered until the server's abort shows (EOF or reset)."""
    sock.settimeout(10)
    total = 0
    try:
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


@pytest.fixture
def fail_forward_pass(rserver: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """`fail(n)`: the model's n-th forward pass from now raises, on the compute thread."""
    (engine,) = rserver.pool.loaded_engines()
    cls = type(engine.model)
    forward = cls.__call__
    state = {"calls": 0, "fail_at": -1}

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:
            raise RuntimeError("injected fault in the forward pass")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", flaky)

    def fail(n: int) -> None:
        state["fail_at"] = state["calls"] + n

    return fail


@BOTH
def test_a_forward_pass_that_raises_is_a_500_and_the_server_goes_on(rserver: ServerThread, fail_forward_pass: Callable[[int], None], path: str) -> None:
    fail_forward_pass(5)  # a few tokens in
    status, body = post_json(rserver, path, chat(max_tokens=50))
    kind, message = error_of(path, body)
    assert status == 500 and kind == "api_error" and "injected fault" in message
    wait_until(lambda: idle(rserver))
    assert post_json(rserver, path, chat())[0] == 200


@BOTH
def test_a_forward_pass_that_raises_mid_stream_is_an_error_event(rserver: ServerThread, fail_forward_pass: Callable[[int], None], path: str) -> None:
    fail_forward_pass(6)
    stream = Stream(rserver, path, chat(max_tokens=50))
    events = stream.read()
    if path == ANTHROPIC:
        assert events[0]["type"] == "message_start"  # the stream had begun: the status was 200
        assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    else:
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "api_error"
    wait_until(lambda: idle(rserver))
    again = Stream(rserver, path, chat(max_tokens=20))
    again.read()
    assert again.complete()


def test_a_failed_batched_step_resumes_each_sequence_alone_and_the_next_batch_runs(
    rserver: ServerThread, fail_forward_pass: Callable[[int], None], warnings_logged: list[str]
) -> None:
    """One forward pass serves every sequence in the batch, and a batch can fail for being a
    batch (memory for all at once): each sequence resumes alone from the tokens it has, and
    both streams end normally. The next requests batch again."""
    first = Stream(rserver, ANTHROPIC, chat("one", max_tokens=200))
    first.read(3)
    second = Stream(rserver, OPENAI, chat("two", max_tokens=200))
    second.read(3)  # both are decoding, together
    fail_forward_pass(1)
    first.read()
    second.read()
    assert first.complete() and second.complete()
    assert any("resuming each alone" in m for m in warnings_logged)
    wait_until(lambda: idle(rserver))
    pair = [Stream(rserver, ANTHROPIC, chat("three", max_tokens=40)), Stream(rserver, OPENAI, chat("four", max_tokens=40))]
    for stream in pair:
        stream.read()
    assert all(s.complete() for s in pair)
