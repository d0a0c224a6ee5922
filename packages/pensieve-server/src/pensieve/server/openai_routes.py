"""OpenAI's API: /v1/chat/completions and /v1/completions (/v1/models lives in system_routes).

Both endpoints run the same path: validate the body, refuse what cannot be honoured before a
model is loaded, translate to a neutral ChatRequest, then either collect the events into one
response or stream them as chunks. Auth, body limits, model aliases and error shapes come from
the middlewares and the model pool, exactly as for the Anthropic routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from pensieve.models import ChatRequest
from pensieve.models import openai as wire
from pensieve.server.keys import PROVIDER
from pensieve.server.openai_in import (
    check_chat,
    check_completion,
    to_chat_request,
    to_completion_request,
)
from pensieve.server.openai_out import (
    ChatStream,
    ChunkStream,
    CompletionStream,
    Outcome,
    chat_completion,
    text_completion,
)
from pensieve.server.requests import parse, read_json
from pensieve.server.streaming import ClientGone, SSEWriter, watched

routes = web.RouteTableDef()

Render = Callable[[Outcome, str], dict[str, Any]]
OpenStream = Callable[[SSEWriter, str], ChunkStream]


async def _respond(
    request: web.Request, engine: Any, chat: ChatRequest, stream: bool, render: Render, open_stream: OpenStream
) -> web.StreamResponse:
    """Run one generation; the response's `model` echoes the name the client asked for.

    `engine` is the pool's engine (typed loosely: the EngineLike protocol has no `open` yet).
    """
    model = chat.model or engine.name
    async with engine.open(chat) as generation:
        events = watched(request, generation.events())
        if not stream:
            return web.json_response(render(await Outcome.collect(events), model))
        sse = SSEWriter(request)
        await sse.start()
        chunks = open_stream(sse, model)
        try:
            await chunks.begin()
            async for event in events:
                await chunks.send(event)
        except ClientGone:
            pass
        await sse.close()
        return sse.response


def _include_usage(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse(wire.ChatCompletionRequest, await read_json(request))
    check_chat(body)
    engine = await request.app[PROVIDER].engine(body.model)
    chat = to_chat_request(body, request["request_id"], engine.context_length)
    usage = _include_usage(body)
    return await _respond(
        request, engine, chat, bool(body.stream), chat_completion, lambda sse, model: ChatStream(sse, model, usage)
    )


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    body = parse(wire.CompletionRequest, await read_json(request))
    check_completion(body)
    chat = to_completion_request(body, request["request_id"])
    echo = (chat.raw_prompt or "") if body.echo else ""
    engine = await request.app[PROVIDER].engine(body.model)
    usage = _include_usage(body)
    return await _respond(
        request,
        engine,
        chat,
        bool(body.stream),
        lambda outcome, model: text_completion(outcome, model, echo),
        lambda sse, model: CompletionStream(sse, model, usage, echo),
    )
