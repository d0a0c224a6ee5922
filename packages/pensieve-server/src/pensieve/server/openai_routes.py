"""OpenAI's API: /v1/chat/completions and /v1/completions (/v1/models lives in system_routes).

Both endpoints validate the body, refuse what cannot be honoured before a model is loaded,
translate to a neutral ChatRequest and hand it to the shared `respond`, saying only how to
build the whole response and how to frame the stream. Auth, body limits, model aliases and
error shapes come from the middlewares and the model pool, exactly as for the Anthropic routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pensieve.models import GenerationEvent
from pensieve.models import openai as wire
from pensieve.server.generation_response import respond
from pensieve.server.keys import PROVIDER, REQUEST_ID
from pensieve.server.openai_in import (
    check_chat,
    check_completion,
    to_chat_request,
    to_completion_request,
)
from pensieve.server.openai_out import (
    ChatStream,
    CompletionStream,
    Outcome,
    chat_completion,
    text_completion,
)
from pensieve.server.requests import parse, read_json

routes = web.RouteTableDef()

Events = AsyncIterator[GenerationEvent | None]


def _include_usage(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse(wire.ChatCompletionRequest, await read_json(request))
    check_chat(body)
    engine = await request.app[PROVIDER].engine(body.model)
    chat = to_chat_request(body, request[REQUEST_ID], engine.context_length)
    usage = _include_usage(body)

    async def collect(events: Events, model: str) -> dict[str, Any]:
        return chat_completion(await Outcome.collect(events), model)

    return await respond(
        request, engine, chat, stream=bool(body.stream), collect=collect,
        open_writer=lambda sse, model, _: ChatStream(sse, model, usage),
    )


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    body = parse(wire.CompletionRequest, await read_json(request))
    check_completion(body)
    chat = to_completion_request(body, request[REQUEST_ID])
    echo = (chat.raw_prompt or "") if body.echo else ""
    engine = await request.app[PROVIDER].engine(body.model)
    usage = _include_usage(body)

    async def collect(events: Events, model: str) -> dict[str, Any]:
        return text_completion(await Outcome.collect(events), model, echo)

    return await respond(
        request, engine, chat, stream=bool(body.stream), collect=collect,
        open_writer=lambda sse, model, _: CompletionStream(sse, model, usage, echo),
    )
