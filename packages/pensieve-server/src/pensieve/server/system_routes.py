"""Liveness, readiness and discovery: `/`, `/health`, and `/v1/models` in either API's shape.

`/` is the liveness probe: it answers as soon as the port is bound. `/health` is readiness: 503
with the same body until the default model can serve (as llama.cpp's server does), so a script,
a load balancer or `curl -f` does not send work to a server still loading weights.

/v1/models is shared by both APIs. The Anthropic SDK always sends `anthropic-version` (and
usually `x-api-key`); the OpenAI SDK sends neither. That is how the shape is chosen.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from aiohttp import web

from pensieve.metal import device_info
from pensieve.models import DistributedStatus, ModelStatus
from pensieve.models import anthropic as wire
from pensieve.server.errors import is_openai_request
from pensieve.server.keys import PROVIDER, SETTINGS, STARTED_AT
from pensieve.server.middleware import QUIET_PATHS
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


def readiness(models: list[ModelStatus], default: str, preload: bool, group: DistributedStatus | None = None) -> str:
    """`ok` once a model serves (or, without preloading, while the default can load on demand);
    else the default model's `loading` or `error`, or `starting` before its load begins; `error`
    too once the group of processes serving the model has broken (it is about to exit)."""
    if group is not None and not group.healthy:
        return "error"
    if any(m.state == "loaded" for m in models):
        return "ok"
    state = next((m.state for m in models if m.name == default), "available")
    if state in ("loading", "error"):
        return state
    return "starting" if preload else "ok"


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    app = request.app
    provider, observer, settings = app[PROVIDER], app[OBSERVER], app[SETTINGS]
    models = provider.status()
    group = provider.distributed()
    status = readiness(models, provider.default_name, settings.model.preload or group is not None, group)
    body = {
        "status": status,
        "model": provider.default_name,
        "models": [m.as_dict() for m in models],
        "memory": provider.memory().as_dict(),
        "prefix_cache_disk": disk.as_dict() if (disk := provider.disk_cache()) is not None else None,
        "device": device_info().as_dict(),
        "distributed": group.as_dict() if group is not None else None,
        "uptime_s": round(time.time() - app[STARTED_AT], 3),
        "pid": os.getpid(),
        "requests": {"served": observer.served, "in_flight": len(observer.in_flight(exclude_open=QUIET_PATHS))},
        "draining": observer.draining,
        "config": {
            "file": str(settings.config_file) if settings.config_file else None,
            "reloads": observer.reloads,
            "reloaded_at": observer.reloaded_at,
            "log_level": settings.logging.level,
        },
    }
    return web.json_response(body, status=200 if status == "ok" else 503)


# -- /v1/models -------------------------------------------------------------------------------


def _openai_model(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "pensieve"}


def _anthropic_model(request: web.Request, name: str) -> wire.ModelInfo:
    created = datetime.fromtimestamp(request.app[STARTED_AT], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return wire.ModelInfo(id=name, display_name=name, created_at=created)


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    names = [m.name for m in request.app[PROVIDER].status()]
    if is_openai_request(request):
        created = int(request.app[STARTED_AT])
        return web.json_response({"object": "list", "data": [_openai_model(n, created) for n in names]})
    listing = wire.ModelList(
        data=[_anthropic_model(request, n) for n in names],
        first_id=names[0] if names else None,
        last_id=names[-1] if names else None,
    )
    return web.json_response(listing.model_dump())


@routes.get("/v1/models/{model_id:.+}")
async def get_model(request: web.Request) -> web.Response:
    """OpenAI clients get only listed names; Anthropic clients may ask by alias (`claude-*`)."""
    requested = request.match_info["model_id"]
    provider = request.app[PROVIDER]
    missing = NotFoundError(f"model '{requested}' not found; GET /v1/models lists the served models", param="model")
    if is_openai_request(request):
        if requested not in {m.name for m in provider.status()}:
            raise missing
        return web.json_response(_openai_model(requested, int(request.app[STARTED_AT])))
    try:
        name = provider.resolve_name(requested)
    except NotFoundError:
        raise missing from None
    return web.json_response(_anthropic_model(request, name).model_dump())


@routes.get("/v1/debug/requests")
async def recent_requests(request: web.Request) -> web.Response:
    """The last finished requests with their phase timings: why was that one slow?"""
    return web.json_response({"requests": [s.fields() for s in request.app[OBSERVER].recent]})
