"""The Anthropic Messages API: /v1/messages, /v1/messages/count_tokens, /v1/models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from pensieve.models import anthropic as wire
from pensieve.server.anthropic_in import count_request, to_chat_request
from pensieve.server.anthropic_out import AnthropicStream, collect_message
from pensieve.server.generation_response import respond
from pensieve.server.keys import PROVIDER, REQUEST_ID, STARTED_AT
from pensieve.server.requests import parse, read_json
from pensieve.utils import NotFoundError

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


def _created_at(request: web.Request) -> str:
    return datetime.fromtimestamp(request.app[STARTED_AT], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(request: web.Request, name: str) -> wire.ModelInfo:
    return wire.ModelInfo(id=name, display_name=name, created_at=_created_at(request))


def anthropic_model_list(request: web.Request) -> web.Response:
    names = [m["name"] for m in request.app[PROVIDER].status()]
    listing = wire.ModelList(
        data=[model_info(request, n) for n in names],
        first_id=names[0] if names else None,
        last_id=names[-1] if names else None,
    )
    return web.json_response(listing.model_dump())


def anthropic_model(request: web.Request) -> web.Response:
    requested = request.match_info["model_id"]
    provider = request.app[PROVIDER]
    try:
        name = provider.resolve_name(requested)
    except NotFoundError:
        raise NotFoundError(f"model '{requested}' not found; GET /v1/models lists the served models") from None
    return web.json_response(model_info(request, name).model_dump())
