"""Plumbing shared by every streaming and non-streaming generation route.

aiohttp does not cancel a handler when its client goes away, and during a long prefill nothing
is written that would fail. So the event stream is watched: if the connection closes, the
engine's iterator is closed, which cancels the sequence and frees its batch slot. While nothing
arrives for a while, a keep-alive tick lets SSE routes send a ping.

A client that stays connected but stops reading is the other way to hold a slot forever: once
the socket buffers fill, aiohttp's write drain pauses the handler (backpressure), and the
sequence would wait with it. So each SSE write may block at most `server.write_timeout_s`;
past that the client is dropped (connection aborted, sequence cancelled) and logged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pensieve.engine import Generation
from pensieve.models import Finished, GenerationEvent
from pensieve.server.keys import FINISHED, REQUEST_ID, SETTINGS
from pensieve.server.observe import OBSERVER
from pensieve.utils.logging import logger

KEEPALIVE_S = 10.0


class ClientGone(Exception):
    """The client closed the connection; stop generating for it."""


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def watched(
    request: web.Request, generation: Generation, keepalive: float = KEEPALIVE_S
) -> AsyncIterator[GenerationEvent | None]:
    """Yield the generation's events, or None as a keep-alive tick; ClientGone if it hangs up.

    A watcher task checks the connection a few times a second, so the token path itself stays a
    plain `async for` (no task per token). The final `Finished` event (usage and timings) is
    also kept as `request[FINISHED]`, where the observing middleware reads it for the
    request log line and the metrics, for both APIs; the generation itself goes to the
    observer, whose live view (the web page's requests in flight) counts its tokens.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()
    gone = False
    request.app[OBSERVER].attach(request.get(REQUEST_ID, ""), generation)

    async def watch() -> None:
        nonlocal gone
        while True:
            await asyncio.sleep(0.25)
            if client_gone(request):
                gone = True
                generation.interrupt()
                return
            if loop.time() - last >= keepalive:
                generation.nudge()

    watcher = asyncio.create_task(watch())
    events = generation.events()
    try:
        async for event in events:
            last = loop.time()
            if isinstance(event, Finished):
                request[FINISHED] = event
            yield event
        if gone:
            raise ClientGone()
    finally:
        watcher.cancel()
        await events.aclose()  # cancels the sequence now if it did not finish


class SSEWriter:
    """Server-sent events on an aiohttp StreamResponse."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.dropped = False
        """Set when the client was dropped for not reading (see the module docstring)."""
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "request-id": request.get(REQUEST_ID, ""),
            }
        )

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def event(self, name: str | None, data: dict[str, Any] | str) -> None:
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        head = f"event: {name}\n" if name else ""
        await self._write(f"{head}data: {payload}\n\n".encode())

    async def comment(self, text: str) -> None:
        """An SSE comment line: clients skip it; proxies see a live connection."""
        await self._write(f": {text}\n\n".encode())

    async def _write(self, data: bytes) -> None:
        timeout = self.request.app[SETTINGS].server.write_timeout_s
        try:
            # asyncio.timeout arms a timer, not a task: cheap enough for every token.
            async with asyncio.timeout(timeout):
                await self.response.write(data)
        except TimeoutError:
            self._drop(timeout)
            raise ClientGone() from None
        except (ConnectionResetError, ConnectionError) as exc:
            raise ClientGone() from exc

    def _drop(self, timeout: float) -> None:
        self.dropped = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()  # close() would wait to flush to a client that does not read
        logger.warning(
            "dropped a client that read nothing for {:g}s (server.write_timeout_s); its generation is cancelled",
            timeout,
        )

    async def close(self) -> None:
        if self.dropped:
            return
        try:
            await self.response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
