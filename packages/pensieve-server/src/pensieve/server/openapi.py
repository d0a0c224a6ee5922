"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.

Request bodies (and the Anthropic response bodies) are generated from the very pydantic wire
types the routes validate with, so the document cannot drift from what the server accepts;
only the paths, the OpenAI response objects and the two error shapes are written here. The
fuzz tests (tests/reliability/test_fuzz.py) generate requests from this document and check
every answer against it, so a wrong line here fails the suite.

The wire types are lenient on purpose (unknown fields are accepted and ignored), and a few
OpenAI fields also take one string where the type says a list (`stop`, `prompt`, a message's
`content`): the document says so, because clients send both.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pensieve.models import anthropic, openai
from pensieve.server.history import HISTORY_PATH
from pensieve.server.web_page import ASSETS

routes = web.RouteTableDef()

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _generated(prefix: str, models: list[tuple[type[BaseModel], str]]) -> tuple[dict[str, Schema], Schema]:
    """Schemas of `models` (with everything they use) named `<prefix><Class>`."""
    _, top = models_json_schema(models, ref_template=f"#/components/schemas/{prefix}{{model}}")  # type: ignore[arg-type]
    return {f"{prefix}{name}": schema for name, schema in top.get("$defs", {}).items()}, top


def _string_or(schema: Schema, item: Schema) -> Schema:
    """Widen a generated `array` (or `array | null`) schema to accept one `item` as well."""
    alternatives = schema.get("anyOf", [{k: schema[k] for k in ("type", "items") if k in schema}])
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "type", "items")}
    return {**rest, "anyOf": [item, *alternatives]}


def _openai_one_string(schemas: dict[str, Schema]) -> None:
    """`stop`, `prompt` and a message's `content` take one string too (pydantic BeforeValidators
    turn it into a one-item list, so the generated schema shows only the list)."""
    text = {"type": "string"}
    for model, field in (
        ("OpenAIChatCompletionRequest", "stop"),
        ("OpenAICompletionRequest", "stop"),
        ("OpenAICompletionRequest", "prompt"),
        ("OpenAIMessage", "content"),
    ):
        props = schemas[model]["properties"]
        props[field] = _string_or(props[field], text)


def _objects(**fields: Schema) -> Schema:
    return {"type": "object", "properties": fields, "required": list(fields)}


_INT, _STR, _NULL_STR = {"type": "integer"}, {"type": "string"}, {"type": ["string", "null"]}

ANTHROPIC_EVENTS = ("message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop", "message_delta", "message_stop")


def _json_text(schema: Schema) -> Schema:
    """A string holding JSON that matches `schema` (how an SSE `data` line is described)."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


_HAND_WRITTEN: dict[str, Schema] = {
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": _objects(type=_STR, message=_STR),
            "request_id": _STR,
        },
    },
    "OpenAIError": _objects(error=_objects(message=_STR, type=_STR, param=_NULL_STR, code=_NULL_STR)),
    "AnthropicTokenCount": _objects(input_tokens=_INT),
    "OpenAIUsage": {
        **_objects(prompt_tokens=_INT, completion_tokens=_INT, total_tokens=_INT),
        "additionalProperties": True,
    },
    "OpenAIChatCompletion": _objects(
        id=_STR,
        object={"const": "chat.completion"},
        created=_INT,
        model=_STR,
        choices={"type": "array", "items": _objects(index=_INT, message={"type": "object"}, finish_reason=_STR)},
        usage=_ref("OpenAIUsage"),
    ),
    "OpenAITextCompletion": _objects(
        id=_STR,
        object={"const": "text_completion"},
        created=_INT,
        model=_STR,
        choices={"type": "array", "items": _objects(index=_INT, text=_STR, finish_reason=_STR)},
        usage=_ref("OpenAIUsage"),
    ),
    "OpenAIModel": _objects(id=_STR, object={"const": "model"}, created=_INT, owned_by=_STR),
    "OpenAIModelList": _objects(object={"const": "list"}, data={"type": "array", "items": _ref("OpenAIModel")}),
    "AnthropicStreamEvent": {
        "description": "One server-sent event: `event: NAME` and a JSON `data` line whose `type` is NAME",
        "anyOf": [
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": name},
                    "data": _json_text({"type": "object", "required": ["type"], "properties": {"type": {"const": name}}}),
                },
            }
            for name in (*ANTHROPIC_EVENTS, "error")
        ],
    },
    "OpenAIStreamEvent": {
        "description": "One `data:` line: a chunk, an error, or the closing `[DONE]`",
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    _json_text({"anyOf": [_ref("OpenAIStreamChunk"), _ref("OpenAIError")]}),
                ]
            }
        },
    },
    "OpenAIStreamChunk": _objects(
        id=_STR,
        object={"enum": ["chat.completion.chunk", "text_completion"]},
        created=_INT,
        model=_STR,
        choices={"type": "array"},
    ),
    "Health": {
        "type": "object",
        "required": ["status", "model", "models", "memory"],
        "properties": {
            "status": {"enum": ["ok", "loading", "starting", "error"]},
            "model": _STR,
            "models": {"type": "array", "items": {"type": "object"}},
            "memory": {"type": "object"},
        },
    },
}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _errors(error: Schema, *statuses: int) -> dict[str, Schema]:
    reasons = {
        400: "invalid request (malformed JSON, a bad field, a prompt over the context window)",
        401: "missing or wrong API key",
        404: "unknown model (with model.unknown = \"error\") or route",
        413: "request body over server.max_body_mb",
        429: "too many requests running or waiting for the model",
        500: "unexpected failure, or a model that cannot be loaded",
        529: "overloaded: shutting down, or the memory budget is held by busy models",
    }
    return {str(s): {"description": reasons[s], "content": _json(error)} for s in statuses}


_GENERATION_ERRORS = (400, 401, 404, 413, 429, 500, 529)


def _generation(request: str, body: str, event: str, error: str, summary: str) -> Schema:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": _json(_ref(request))},
            "responses": {
                "200": {
                    "description": "the whole response, or server-sent events when `stream` is true",
                    "content": {**_json(_ref(body)), "text/event-stream": {"schema": _ref(event)}},
                },
                **_errors(_ref(error), *_GENERATION_ERRORS),
            },
        }
    }


def _get(summary: str, body: Schema, *, errors: Schema | None = None, statuses: tuple[int, ...] = (401, 500), content: str = "application/json") -> Schema:
    responses: dict[str, Schema] = {"200": {"description": summary, "content": {content: {"schema": body}}}}
    if errors is not None:
        responses.update(_errors(errors, *statuses))
    return {"get": {"summary": summary, "responses": responses}}


def _paths() -> dict[str, Schema]:
    either_error = {"anyOf": [_ref("AnthropicError"), _ref("OpenAIError")]}
    open_access: list[Schema] = []
    paths: dict[str, Schema] = {
        "/v1/messages": _generation("AnthropicMessagesRequest", "AnthropicMessagesResponse", "AnthropicStreamEvent", "AnthropicError", "Create a message (Anthropic Messages API)"),
        "/v1/messages/count_tokens": {
            "post": {
                "summary": "Count a request's input tokens",
                "requestBody": {"required": True, "content": _json(_ref("AnthropicCountTokensRequest"))},
                "responses": {
                    "200": {"description": "the count", "content": _json(_ref("AnthropicTokenCount"))},
                    **_errors(_ref("AnthropicError"), *_GENERATION_ERRORS),
                },
            }
        },
        "/v1/chat/completions": _generation("OpenAIChatCompletionRequest", "OpenAIChatCompletion", "OpenAIStreamEvent", "OpenAIError", "Create a chat completion (OpenAI)"),
        "/v1/completions": _generation("OpenAICompletionRequest", "OpenAITextCompletion", "OpenAIStreamEvent", "OpenAIError", "Create a text completion (OpenAI, legacy)"),
        "/v1/models": _get(
            "The served models: Anthropic's shape when the request carries `anthropic-version` or `x-api-key`, else OpenAI's",
            {"anyOf": [_ref("AnthropicModelList"), _ref("OpenAIModelList")]},
            errors=either_error,
        ),
        "/v1/models/{model_id}": _get(
            "One served model, in the same shape as the list",
            {"anyOf": [_ref("AnthropicModelInfo"), _ref("OpenAIModel")]},
            errors=either_error,
            statuses=(401, 404, 500),
        ),
        "/v1/debug/requests": _get("The last finished requests with their phase timings", _objects(requests={"type": "array"}), errors=_ref("AnthropicError")),
        "/metrics": _get("Prometheus metrics (behind the key unless server.metrics_require_auth is false)", _STR, errors=_ref("AnthropicError"), content="text/plain"),
        "/health": _get("Status, models, memory, device, uptime; no key needed", _ref("Health")),
        "/": _get("Liveness (Claude Code probes HEAD /); no key needed", {"type": "object"}),
        HISTORY_PATH: _get(
            "The last minutes of tokens/s, requests and memory, one sample a second, and the requests in flight (with server.web_ui on)",
            _objects(interval_s={"type": "number"}, window_s={"type": "number"}, samples={"type": "array"}, in_flight={"type": "array"}, totals={"type": "object"}),
            errors=_ref("AnthropicError"),
            statuses=(400, 401, 500),
        ),
        **{path: _get("A script or style of the web page (with server.web_ui on); no key needed", _STR, content=kind) for path, kind in ASSETS.items()},
        "/openapi.json": _get("This document; no key needed", {"type": "object"}),
    }
    paths["/v1/models/{model_id}"]["parameters"] = [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    ]
    paths["/v1/messages"]["post"]["parameters"] = [
        {"name": "beta", "in": "query", "required": False, "schema": {"type": "string"}, "description": "sent by the SDKs' beta clients; ignored"}
    ]
    paths["/"]["get"]["responses"]["200"]["content"]["text/html"] = {"schema": _STR}  # a browser gets the web page
    paths[HISTORY_PATH]["get"]["parameters"] = [
        {"name": "since", "in": "query", "required": False, "schema": {"type": "number"}, "description": "only the samples after this Unix time"}
    ]
    for path in ("/", "/health", "/openapi.json", *ASSETS):
        paths[path]["get"]["security"] = open_access
    return paths


@functools.cache
def openapi_document() -> Schema:
    """The whole document; built once (the wire types do not change while serving)."""
    ours, top_a = _generated(
        "Anthropic",
        [
            (anthropic.MessagesRequest, "validation"),
            (anthropic.CountTokensRequest, "validation"),
            (anthropic.MessagesResponse, "serialization"),
            (anthropic.ModelList, "serialization"),
        ],
    )
    theirs, _ = _generated("OpenAI", [(openai.ChatCompletionRequest, "validation"), (openai.CompletionRequest, "validation")])
    schemas = {**ours, **theirs, **_HAND_WRITTEN}
    _openai_one_string(schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pensieve",
            "version": "1",
            "description": "A local LLM server speaking the Anthropic Messages API and OpenAI chat completions. See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8000"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "paths": _paths(),
    }


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
