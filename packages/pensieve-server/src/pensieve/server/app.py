"""The application factory and the serve loop."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

from aiohttp import web

from pensieve.server import anthropic_routes, openai_routes, system_routes
from pensieve.server.keys import PRELOAD, PROVIDER, SETTINGS, STARTED_AT
from pensieve.server.middleware import (
    auth_middleware,
    body_limit_middleware,
    error_middleware,
    request_id_middleware,
)
from pensieve.server.protocols import ModelProvider
from pensieve.utils import Settings
from pensieve.utils.logging import logger


def create_app(settings: Settings, provider: ModelProvider) -> web.Application:
    """Build the app over a model provider; starting it loads (preloads) models."""
    max_body = int(settings.server.max_body_mb * 1024 * 1024)
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            request_id_middleware,
            error_middleware,
            body_limit_middleware(max_body),
            auth_middleware(settings.server.api_key, metrics_open=not settings.server.metrics_require_auth),
        ],
    )
    app[SETTINGS] = settings
    app[PROVIDER] = provider
    app[STARTED_AT] = time.time()
    app.add_routes(system_routes.routes)
    app.add_routes(anthropic_routes.routes)
    app.add_routes(openai_routes.routes)
    app.cleanup_ctx.append(_provider_lifecycle)
    return app


async def _provider_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Preload in the background, so the port answers /health ("loading") while weights load."""
    provider = app[PROVIDER]
    app[PRELOAD] = asyncio.create_task(provider.start())
    yield
    app[PRELOAD].cancel()
    await asyncio.gather(app[PRELOAD], return_exceptions=True)
    await provider.close()


async def serve(app: web.Application, host: str, port: int) -> int:
    """Run until SIGINT/SIGTERM (exit code 0) or a failed preload of the default model (1).

    In-flight requests get the drain timeout to finish.
    """
    settings = app[SETTINGS]
    runner = web.AppRunner(app, shutdown_timeout=settings.server.drain_timeout_s, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    logger.info("Pensieve listening on http://{}:{}", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0

    def preload_done(task: asyncio.Task[None]) -> None:
        nonlocal code
        if not task.cancelled() and task.exception() is not None:
            logger.error("could not load the default model: {}", task.exception())
            code = 1
            stop.set()

    app[PRELOAD].add_done_callback(preload_done)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await runner.cleanup()
    return code
