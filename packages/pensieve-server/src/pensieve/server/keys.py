"""Typed keys for what the application shares between handlers, and a request between middlewares."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pensieve.models import Finished
from pensieve.server.protocols import ModelProvider
from pensieve.utils import Settings

PROVIDER = web.AppKey("provider", ModelProvider)
SETTINGS = web.AppKey("settings", Settings)
STARTED_AT = web.AppKey("started_at", float)
PRELOAD = web.AppKey("preload", asyncio.Task)

REQUEST_ID = web.RequestKey("request_id", str)
"""Set first by the request-id middleware; echoed in the `request-id` header and error bodies."""
BODY = web.RequestKey("body", bytes)
"""The raw body, kept by `requests.read_json` for the request log when content logging is on."""
FINISHED = web.RequestKey("finished", Finished)
"""The generation's last event, kept by `streaming.watched()` for the observing middleware."""
