"""Cross-cutting concerns: request ids, observation, body limits, CORS, auth, error rendering.

Order matters: the request id comes first so every error carries it; observation (the request
log line, metrics, the in-flight registry) wraps everything else so it sees the final status;
errors wrap the rest so nothing escapes unrendered; the body limit runs before authentication so
a huge unauthenticated upload is refused without being read; CORS preflights are answered
before authentication because browsers send them without credentials.

Settings that SIGHUP can change (API key, CORS origins, metrics auth, content logging) are read
from the shared settings object on every request rather than captured when the app is built.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from pensieve.server.errors import error_response
from pensieve.server.history import HISTORY_PATH
from pensieve.server.keys import BODY, FINISHED, PROVIDER, REQUEST_ID, SETTINGS
from pensieve.server.metrics import METRICS
from pensieve.server.observe import OBSERVER, requested_model, summarize
from pensieve.server.streaming import ClientGone
from pensieve.server.web_page import ASSETS
from pensieve.utils import (
    ApiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PensieveError,
    RequestTooLargeError,
)
from pensieve.utils.logging import logger
from pensieve.utils.settings import ServerSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", *ASSETS})
"""Answered without a key: liveness, status (no secrets in it), the public API description and
the web page's scripts and styles."""
QUIET_PATHS = OPEN_PATHS | {"/metrics", HISTORY_PATH}
"""Polled by monitors: logged at DEBUG and not counted as requests served."""
CONTENT_LOG_LIMIT = 20_000


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    response = await handler(request)
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PensieveError as exc:
        return error_response(request, exc)
    except ClientGone:
        return web.Response(status=499)  # nobody is listening; nginx's "client closed request"
    except web.HTTPRequestEntityTooLarge as exc:
        detail = (exc.text or "").rstrip(".")  # a chunked body has no length to check up front
        return error_response(request, RequestTooLargeError(f"request body too large ({detail}); send less, or raise server.max_body_mb"))
    except web.HTTPNotFound:
        return error_response(request, NotFoundError(f"no route for {request.method} {request.path}; see docs/api.md for the endpoints"))
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            request,
            InvalidRequestError(f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(exc.allowed_methods))}"),
        )
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("unhandled error on {} {}", request.method, request.path)
        return error_response(request, ApiError("internal server error; the server log has details. Retry the request"))


def body_limit_middleware(max_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > max_bytes:
            raise RequestTooLargeError(
                f"request body is {length} bytes, over the {max_bytes}-byte limit; "
                "send less (or raise server.max_body_mb)"
            )
        return await handler(request)

    return middleware


def _presented_key(request: web.Request) -> str | None:
    if key := request.headers.get("x-api-key"):
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def auth_middleware(server: ServerSettings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Check the API key; `server` is the live settings section, so SIGHUP can change the key."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = (server.api_key or "").encode()
        metrics_open = not server.metrics_require_auth
        if not expected or request.path in OPEN_PATHS or (metrics_open and request.path == "/metrics"):
            return await handler(request)
        presented = _presented_key(request)
        if presented is None:
            raise AuthenticationError("missing API key: send it as `x-api-key` or `Authorization: Bearer`")
        if not hmac.compare_digest(presented.encode(), expected):
            raise AuthenticationError("invalid API key: use the key the server was started with (server.api_key)")
        return await handler(request)

    return middleware


# -- observation ------------------------------------------------------------------------------


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Register the request while it runs; when it ends, log one line and update the metrics.

    While the server drains (SIGTERM) new API requests are refused with a retryable error;
    in-flight ones carry on.
    """
    app = request.app
    observer = app[OBSERVER]
    if observer.draining and request.path not in QUIET_PATHS:
        return error_response(
            request,
            OverloadedError("Pensieve is shutting down; retry in a few seconds", headers={"retry-after": "5"}),
        )
    with logger.contextualize(request_id=request.get(REQUEST_ID)):
        observer.begin(request)
        app[METRICS].in_progress.inc()
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            app[METRICS].in_progress.dec()
            _record(request, status, time.perf_counter() - started)


def _record(request: web.Request, status: int, duration_s: float) -> None:
    app = request.app
    finished = request.get(FINISHED) is not None
    requested = requested_model(request) if finished else None
    served = None
    if finished:
        try:
            served = app[PROVIDER].resolve_name(requested)
        except Exception:  # the name resolved when the request ran; a log line is no place to fail
            served = requested
    summary = summarize(request, status, duration_s, served, requested)
    quiet = request.path in QUIET_PATHS
    app[OBSERVER].end(summary, counted=not quiet)
    app[METRICS].observe(summary)
    extra = summary.fields()
    if finished and app[SETTINGS].logging.log_content:
        raw = request.get(BODY, b"")
        extra["request_body"] = raw[:CONTENT_LOG_LIMIT].decode("utf-8", errors="replace")
    level = "DEBUG" if quiet else ("WARNING" if status >= 500 else "INFO")
    logger.bind(component="http", **extra).log(level, summary.line())


# -- CORS -------------------------------------------------------------------------------------


def _allowed_origin(request: web.Request) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when CORS does not apply."""
    origin = request.headers.get("Origin")
    origins = request.app[SETTINGS].server.cors_origins
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for configured origins; with no origins configured, CORS is off."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        allowed = _allowed_origin(request)
        if allowed is not None:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": allowed,
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
    return await handler(request)


async def cors_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: streamed responses get their CORS headers before the first byte."""
    allowed = _allowed_origin(request)
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = "request-id"
        response.headers.add("Vary", "Origin")
