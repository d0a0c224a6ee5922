"""Render errors once, at the edge, in the shape of the API the client is speaking."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from pensieve.server.keys import REQUEST_ID
from pensieve.utils import InvalidRequestError, PensieveError

_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


def is_openai_request(request: web.Request) -> bool:
    """OpenAI-only routes, and /v1/models when the client does not speak Anthropic."""
    path = request.path
    if path.startswith(("/v1/chat/", "/v1/completions", "/v1/embeddings")):
        return True
    if path.startswith("/v1/models"):
        return "anthropic-version" not in request.headers and "x-api-key" not in request.headers
    return False


def anthropic_error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def openai_error_body(error_type: str, message: str, param: str | None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(error_type, error_type),
            "param": param,
            "code": error_type,
        }
    }


def error_response(request: web.Request, error: PensieveError) -> web.Response:
    request_id = request.get(REQUEST_ID)
    if is_openai_request(request):
        body = openai_error_body(error.error_type, error.message, error.param)
    else:
        body = anthropic_error_body(error.error_type, error.message, request_id)
    return web.json_response(body, status=error.status, headers=error.headers)


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """Name the field and what is wrong with it, picking pydantic's most specific complaint."""
    errors = exc.errors(include_url=False)
    best = max(errors, key=lambda e: len(e["loc"]))
    loc = ".".join(str(p) for p in best["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-"))))
    if best["type"] == "missing":
        message = f"{loc}: Field required"
    else:
        message = f"{loc}: {best['msg']}"
        if "input" in best and best["type"] not in ("missing",):
            shown = json.dumps(best["input"], default=str)
            if len(shown) <= 80:
                message += f" (got {shown})"
    return InvalidRequestError(message, param=loc or None)
