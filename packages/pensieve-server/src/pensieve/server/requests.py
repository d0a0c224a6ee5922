"""Reading and validating request bodies into wire types, with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from pensieve.server.errors import validation_error
from pensieve.utils import InvalidRequestError

T = TypeVar("T", bound=BaseModel)


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded JSON") from None
    if not text.strip():
        raise InvalidRequestError("request body is empty; send a JSON object")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidRequestError("request body is nested too deeply; flatten it") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return body


def parse(model: type[T], body: dict[str, Any]) -> T:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise InvalidRequestError("request body is nested too deeply; flatten it") from None
