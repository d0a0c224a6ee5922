"""The Anthropic Messages API: /v1/messages and /v1/messages/count_tokens (/v1/models, shared
with the OpenAI API, is in system_routes.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pensieve.models import anthropic as wire
from pensieve.server.anthropic_in import count_request, to_chat_request
from pensieve.server.anthropic_out import AnthropicStream, collect_message
from pensieve.server.generation_response import respond
from pensieve.server.keys import PROVIDER, REQUEST_ID
from pensieve.server.requests import parse, read_json

routes = web.RouteTableDef()


@routes.post("/v1/messages")
async def create_message(request: web.Request) -> web.StreamResponse:
    body = parse(wire.MessagesRequest, await read_json(request))
    chat = to_chat_request(body, request[REQUEST_ID])
    engine = await request.app[PROVIDER].engine(chat.model)
    return await respond(request, engine, chat, stream=body.stream, collect=collect_message, open_writer=AnthropicStream)


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    body = parse(wire.CountTokensRequest, await read_json(request))
    chat = count_request(body)
    engine = await request.app[PROVIDER].engine(chat.model)
    # Rendering a long conversation takes milliseconds: keep it off the event loop.
    return web.json_response({"input_tokens": await asyncio.to_thread(engine.count_tokens, chat)})
