"""Cross-cutting concerns: request ids, body limits, authentication, error rendering.

Order matters: the request id comes first so every error carries it, errors wrap everything
else so nothing escapes unrendered, and the body limit runs before authentication so a huge
unauthenticated upload is refused without being read.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from pensieve.server.errors import error_response
from pensieve.server.streaming import ClientGone
from pensieve.utils import (
    ApiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PensieveError,
    RequestTooLargeError,
)
from pensieve.utils.logging import logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/", "/health"})


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request["request_id"] = request_id
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
        return error_response(request, RequestTooLargeError(f"request body too large: {exc.text}. Send a smaller request or raise server.max_body_mb"))
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


def auth_middleware(api_key: str | None, *, metrics_open: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = (api_key or "").encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not expected or request.path in OPEN_PATHS or (metrics_open and request.path == "/metrics"):
            return await handler(request)
        presented = _presented_key(request)
        if presented is None:
            raise AuthenticationError("missing API key: send it as `x-api-key` or `Authorization: Bearer`")
        if not hmac.compare_digest(presented.encode(), expected):
            raise AuthenticationError("invalid API key: use the key the server was started with (server.api_key)")
        return await handler(request)

    return middleware
