"""Reading and validating request bodies into wire types, with errors that name the field.

Everything a client can put in a body must end as a 400 here or a valid wire object, never as
an exception further in: the JSON parser's own failures (bad syntax, numbers too long for
Python's int conversion limit, nesting past the recursion limit), JSON that parses but is not
text a tokenizer can take (lone UTF-16 surrogates such as `"\\ud800"`), and nesting deep enough
to exhaust the stack of some later recursive step (pydantic, the chat template, `json.dumps`
of a tool schema). So the parsed body is walked once, without recursion, before it goes on.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from pensieve.server.errors import validation_error
from pensieve.server.keys import BODY
from pensieve.utils import InvalidRequestError

T = TypeVar("T", bound=BaseModel)

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted. Real requests stay far below it (Claude
Code's tool schemas nest about a dozen levels); far deeper is an attack or a bug."""

_TOO_DEEP = f"request body is nested too deeply (more than {MAX_JSON_DEPTH} levels of arrays and objects); flatten it"


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    request[BODY] = raw
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
        raise InvalidRequestError(_TOO_DEEP) from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts (4300 digits)
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    check_structure(body)
    return body


def check_structure(body: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings that are not valid Unicode.

    Iterative, so the check itself cannot overflow the stack it protects.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequestError(_TOO_DEEP)
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidRequestError(
            f"request body holds a lone UTF-16 surrogate (\\u{code:04x}) in a string, which is not "
            "valid Unicode; send surrogate pairs whole or the character itself"
        ) from None


def parse(model: type[T], body: dict[str, Any]) -> T:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise InvalidRequestError(_TOO_DEEP) from None
