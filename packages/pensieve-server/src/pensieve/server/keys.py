"""Typed keys for what the application shares between handlers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pensieve.server.protocols import ModelProvider
from pensieve.utils import Settings

PROVIDER = web.AppKey("provider", ModelProvider)
SETTINGS = web.AppKey("settings", Settings)
STARTED_AT = web.AppKey("started_at", float)
PRELOAD = web.AppKey("preload", asyncio.Task)
