"""Liveness and discovery: `/`, `/health`, and `/v1/models` in either API's shape.

/v1/models is shared by both APIs. The Anthropic SDK always sends `anthropic-version` (and
usually `x-api-key`); the OpenAI SDK sends neither. That is how the shape is chosen.
"""

from __future__ import annotations

import time

from aiohttp import web

from pensieve.metal import device_info
from pensieve.server.anthropic_routes import anthropic_model, anthropic_model_list
from pensieve.server.errors import is_openai_request
from pensieve.server.keys import PROVIDER, STARTED_AT
from pensieve.server.observe import OBSERVER
from pensieve.server.web_page import page, wants_page
from pensieve.utils import NotFoundError

routes = web.RouteTableDef()


@routes.get("/")  # aiohttp answers HEAD for every GET route; Claude Code probes HEAD /
async def root(request: web.Request) -> web.Response:
    """The web page for a browser (unless server.web_ui is off); JSON for every other client."""
    if wants_page(request):
        return page()
    body = {"name": "pensieve", "status": "ok", "docs": "/health, /v1/messages, /v1/chat/completions"}
    return web.json_response(body, headers={"Vary": "Accept"})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    models = provider.status()
    states = {m["state"] for m in models}
    status = "ok" if "loaded" in states else ("loading" if "loading" in states else "starting")
    if "error" in states and "loaded" not in states:
        status = "error"
    return web.json_response(
        {
            "status": status,
            "model": provider.default_name,
            "models": models,
            "memory": provider.memory(),
            "device": device_info().as_dict(),
            "uptime_s": round(time.time() - request.app[STARTED_AT], 3),
        }
    )


def _openai_model(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "pensieve"}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    if not is_openai_request(request):
        return anthropic_model_list(request)
    created = int(request.app[STARTED_AT])
    data = [_openai_model(m["name"], created) for m in request.app[PROVIDER].status()]
    return web.json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model_id:.+}")
async def get_model(request: web.Request) -> web.Response:
    if not is_openai_request(request):
        return anthropic_model(request)
    requested = request.match_info["model_id"]
    names = {m["name"] for m in request.app[PROVIDER].status()}
    if requested not in names:
        raise NotFoundError(f"model '{requested}' not found; GET /v1/models lists the served models", param="model")
    return web.json_response(_openai_model(requested, int(request.app[STARTED_AT])))


@routes.get("/v1/debug/requests")
async def recent_requests(request: web.Request) -> web.Response:
    """The last finished requests with their phase timings: why was that one slow?"""
    return web.json_response({"requests": [s.fields() for s in request.app[OBSERVER].recent]})
