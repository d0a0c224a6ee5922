"""One generation as an HTTP response, whichever wire API it speaks.

Every generating route does the same thing once its body is translated: open the generation
(admission and prompt errors happen here, before any byte is sent), watch the client, then
either collect the events into one JSON body or hand them to a stream writer that frames them
as server-sent events. Only the collecting and the framing differ per API, so they are passed
in; the rest lives here once (the Anthropic route can use it as is: `collect_message` and
`AnthropicStream` already have these shapes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from pensieve.models import ChatRequest, GenerationEvent
from pensieve.server.keys import REQUEST_ID
from pensieve.server.protocols import EngineLike
from pensieve.server.streaming import ClientGone, SSEWriter, watched
from pensieve.utils.logging import logger


class EventWriter(Protocol):
    """Frames one generation's events as SSE; `send(None)` is a keep-alive tick."""

    async def begin(self) -> None: ...

    async def send(self, event: GenerationEvent | None) -> None: ...

    async def fail(self, error_type: str, message: str) -> None: ...


Collect = Callable[[AsyncIterator[GenerationEvent | None], str], Awaitable[dict[str, Any]]]
"""(events, model name) -> the whole response body."""
OpenWriter = Callable[[SSEWriter, str, int], EventWriter]
"""(SSE writer, model name, prompt tokens) -> the stream's event writer."""


async def respond(
    request: web.Request, engine: EngineLike, chat: ChatRequest, *, stream: bool, collect: Collect, open_writer: OpenWriter
) -> web.StreamResponse:
    """Run `chat` on `engine`; the response's model is the name the client asked for."""
    model = chat.model or engine.name
    async with engine.open(chat) as generation:
        events = watched(request, generation)
        if not stream:
            return web.json_response(await collect(events, model))
        sse = SSEWriter(request)
        await sse.start()
        writer = open_writer(sse, model, generation.input_tokens)
        try:
            await writer.begin()
            async for event in events:
                await writer.send(event)
        except ClientGone:
            pass
        except Exception:
            # The status line is gone already: report in the stream, as both APIs do.
            logger.exception("stream failed for {}", request.get(REQUEST_ID))
            await _fail_quietly(writer, "internal server error; the server log has details. Retry the request")
        await sse.close()
        return sse.response


async def _fail_quietly(writer: EventWriter, message: str) -> None:
    try:
        await writer.fail("api_error", message)
    except ClientGone:
        pass
