"""Plumbing shared by every streaming and non-streaming generation route.

aiohttp does not cancel a handler when its client goes away, and during a long prefill nothing
is written that would fail. So the event stream is watched: if the connection closes, the
engine's iterator is closed, which cancels the sequence and frees its batch slot. While nothing
arrives for a while, a keep-alive tick lets SSE routes send a ping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pensieve.models import Finished, GenerationEvent

KEEPALIVE_S = 10.0
_TICK = object()


class ClientGone(Exception):
    """The client closed the connection; stop generating for it."""


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def watched(
    request: web.Request, events: AsyncIterator[GenerationEvent], keepalive: float = KEEPALIVE_S
) -> AsyncIterator[GenerationEvent | None]:
    """Yield engine events, or None as a keep-alive tick; stop if the client disconnects.

    The final `Finished` event (usage and timings) is also kept as `request["finished"]`, where
    the observing middleware reads it for the request log line and the metrics, for both APIs.
    """
    poll = 0.25
    idle = 0.0
    iterator = aiter(events)
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator, _TICK))
            done, _ = await asyncio.wait({pending}, timeout=poll)
            if not done:
                if client_gone(request):
                    raise ClientGone()
                idle += poll
                if idle >= keepalive:
                    idle = 0.0
                    yield None
                continue
            result, pending, idle = pending.result(), None, 0.0
            if result is _TICK:
                return
            if isinstance(result, Finished):
                request["finished"] = result
            yield result
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await iterator.aclose()


class SSEWriter:
    """Server-sent events on an aiohttp StreamResponse."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "request-id": request.get("request_id", ""),
            }
        )

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def event(self, name: str | None, data: dict[str, Any] | str) -> None:
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        head = f"event: {name}\n" if name else ""
        try:
            await self.response.write(f"{head}data: {payload}\n\n".encode())
        except (ConnectionResetError, ConnectionError) as exc:
            raise ClientGone() from exc

    async def close(self) -> None:
        try:
            await self.response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
