"""The application factory and the serve loop (binding, PID file, signals, draining).

Signals, as users of uvicorn and gunicorn expect them:
- SIGTERM (`pensieve stop`, systemd, launchd): drain. Stop accepting, let in-flight requests
  finish for up to server.drain_timeout_s, cancel what is left, unload, exit 0.
- SIGINT (Ctrl-C): stop now. Cancel in-flight requests, unload, exit 0. A SIGINT during a
  drain cuts the drain short.
- SIGHUP: reload the configuration file (see lifecycle.reload_config).
- SIGUSR1: write a diagnostic dump to the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from pensieve.server import (
    anthropic_routes,
    history,
    metrics,
    openai_routes,
    openapi,
    system_routes,
    web_page,
)
from pensieve.server.exposure import check_exposure
from pensieve.server.history import HISTORY, History, history_sampling
from pensieve.server.keys import PRELOAD, PROVIDER, SETTINGS, STARTED_AT
from pensieve.server.lifecycle import (
    SettingsLoader,
    claim_pid_file,
    log_diagnostic_dump,
    reload_config,
)
from pensieve.server.metrics import METRICS, Metrics
from pensieve.server.middleware import (
    QUIET_PATHS,
    auth_middleware,
    body_limit_middleware,
    cors_preflight_middleware,
    cors_response_headers,
    error_middleware,
    observe_middleware,
    request_id_middleware,
)
from pensieve.server.observe import OBSERVER, Observer
from pensieve.server.protocols import ModelProvider
from pensieve.utils import Settings
from pensieve.utils.logging import logger
from pensieve.utils.pidfile import remove_pid_file


def create_app(settings: Settings, provider: ModelProvider) -> web.Application:
    """Build the app over a model provider; starting it loads (preloads) models."""
    max_body = int(settings.server.max_body_mb * 1024 * 1024)
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            request_id_middleware,
            observe_middleware,
            error_middleware,
            body_limit_middleware(max_body),
            cors_preflight_middleware,
            auth_middleware(settings.server),
        ],
    )
    app[SETTINGS] = settings
    app[PROVIDER] = provider
    app[STARTED_AT] = time.time()
    app[OBSERVER] = Observer()
    app[METRICS] = Metrics(provider)
    app.on_response_prepare.append(cors_response_headers)
    app.add_routes(metrics.routes)
    app.add_routes(system_routes.routes)
    app.add_routes(anthropic_routes.routes)
    app.add_routes(openai_routes.routes)
    app.add_routes(openapi.routes)
    if settings.server.web_ui:
        app[HISTORY] = History(app[OBSERVER], provider, quiet_paths=QUIET_PATHS)
        app.add_routes(history.routes)
        app.add_routes(web_page.routes)
        app.cleanup_ctx.append(history_sampling)
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


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so a taken port fails fast, before a model loads."""
    if ":" in host:
        return socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=host == "::", backlog=128)
    return socket.create_server((host, port), backlog=128)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    pid_file: Path | None = None,
    reload: SettingsLoader | None = None,
    args: Sequence[str] = (),
) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or a failed preload of the default model (1).

    Raises PensieveError for a non-loopback `host` without a key of the operator's (see
    exposure.py), OSError if the port cannot be bound. `pid_file` is written once the port is bound
    and removed on exit; `reload` re-reads the settings on SIGHUP; `args` are recorded in the
    PID file for `pensieve restart`.
    """
    settings = app[SETTINGS]
    check_exposure(host, settings.server.api_key)
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    runner = web.AppRunner(app, shutdown_timeout=2.0, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    observer = app[OBSERVER]
    slot = None
    try:
        if pid_file is not None:
            slot = claim_pid_file(pid_file, host, bound_port, settings, list(args))
            observer.pid_file = str(pid_file)
    except BaseException:
        await runner.cleanup()
        raise
    logger.info("Pensieve listening on http://{}:{} (PID {})", host, bound_port, os.getpid())

    stop = asyncio.Event()
    how = "drain"

    def on_term() -> None:
        nonlocal how
        if stop.is_set():
            logger.info("SIGTERM again: already shutting down")
            return
        how = "drain"
        stop.set()

    def on_int() -> None:
        nonlocal how
        if stop.is_set():
            logger.info("SIGINT: cutting the drain short, cancelled {} requests", observer.cancel_all())
            return
        how = "now"
        stop.set()

    def on_hup() -> None:
        if reload is None:
            logger.warning("SIGHUP: this server has no configuration loader; restart it to change settings")
        else:
            reload_config(app, reload)

    handlers: dict[int, Callable[[], None]] = {signal.SIGTERM: on_term, signal.SIGINT: on_int}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hup
        handlers[signal.SIGUSR1] = lambda: log_diagnostic_dump(app)
    loop = asyncio.get_running_loop()
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
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
        observer.draining = True
        await site.stop()
        if how == "now":
            logger.info("SIGINT: stopping now, cancelled {} in-flight requests", observer.cancel_all())
        else:
            await _drain(observer, settings.server.drain_timeout_s)
        await runner.cleanup()
        for sig in handlers:
            loop.remove_signal_handler(sig)
        if pid_file is not None:
            remove_pid_file(pid_file, os.getpid())
        if slot is not None:
            slot.close()
        logger.info("Pensieve stopped")
    return code


async def _drain(observer: Observer, timeout: float) -> None:
    """Wait for in-flight API requests to finish, up to `timeout`; cancel the rest."""
    pending = observer.in_flight(exclude_open=QUIET_PATHS)
    logger.info("draining: {} request(s) in flight, waiting up to {:.0f}s for them to finish", len(pending), timeout)
    deadline = time.monotonic() + timeout
    while observer.in_flight(exclude_open=QUIET_PATHS) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = observer.in_flight(exclude_open=QUIET_PATHS)
    if left:
        logger.warning("drain timeout: cancelling {} request(s) still running", observer.cancel_all())
    else:
        logger.info("drained: every in-flight request finished")
