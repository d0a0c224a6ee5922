"""Neutral generation events -> Anthropic responses, whole or as server-sent events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pensieve.models import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    Started,
    TextDelta,
    ThinkingDelta,
    ToolCallEvent,
    Usage,
)
from pensieve.server.errors import anthropic_error_body
from pensieve.server.keys import REQUEST_ID
from pensieve.server.streaming import SSEWriter
from pensieve.utils import ApiError


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def usage_body(usage: Usage) -> dict[str, int]:
    """Anthropic counts cache reads apart: input + cache_read + cache_creation = the prompt."""
    return {
        "input_tokens": usage.input_tokens - usage.cache_read_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def _message_shell(message_id: str, model: str) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": []}


async def collect_message(events: AsyncIterator[GenerationEvent | None], model: str) -> dict[str, Any]:
    """Run a generation to the end and build the non-streaming Messages response."""
    body = _message_shell(new_message_id(), model)
    content: list[dict[str, Any]] = body["content"]
    async for event in events:
        if isinstance(event, TextDelta):
            if content and content[-1]["type"] == "text":
                content[-1]["text"] += event.text
            else:
                content.append({"type": "text", "text": event.text})
        elif isinstance(event, ThinkingDelta):
            if content and content[-1]["type"] == "thinking":
                content[-1]["thinking"] += event.text
            else:
                content.append({"type": "thinking", "thinking": event.text, "signature": ""})
        elif isinstance(event, ToolCallEvent):
            call = event.call
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
        elif isinstance(event, GenerationFailed):
            raise ApiError(event.message)
        elif isinstance(event, Finished):
            body.update(stop_reason=event.stop_reason, stop_sequence=event.stop_sequence, usage=usage_body(event.usage))
    return body


class AnthropicStream:
    """Writes the Messages event sequence, opening and closing content blocks as kinds change.

    The order is Anthropic's: `message_start`, the first `content_block_start`, `ping`, then
    deltas; later pings are keep-alives while nothing is generated (a long prefill). A message
    with no content still gets its one ping, before `message_delta`.

    `message_start` waits for the engine's `Started`, which comes as soon as the prompt is
    looked up in the prefix cache, so its usage already splits the prompt into new and cached
    tokens as Anthropic's does (Claude Code reads it there). Until then a keep-alive is an SSE
    comment; anything else, an error included, sends `message_start` first.
    """

    def __init__(self, sse: SSEWriter, model: str, input_tokens: int) -> None:
        self.sse = sse
        self.model = model
        self.input_tokens = input_tokens
        self.index = -1
        self.open_kind: str | None = None
        self.pinged = False
        self.started = False

    async def begin(self) -> None:
        """Nothing yet: `message_start` carries the cache split, which `Started` brings."""

    async def _start(self, usage: Usage | None = None) -> None:
        if self.started:
            return
        self.started = True
        message = _message_shell(new_message_id(), self.model)
        usage = usage or Usage(input_tokens=self.input_tokens)
        message.update(stop_reason=None, stop_sequence=None, usage=usage_body(usage))
        await self.sse.event("message_start", {"type": "message_start", "message": message})

    async def ping(self) -> None:
        if not self.started:
            await self.sse.comment("keep-alive")  # a ping may not come before message_start
            return
        self.pinged = True
        await self.sse.event("ping", {"type": "ping"})

    async def _open(self, kind: str, block: dict[str, Any]) -> None:
        await self._close()
        self.index += 1
        self.open_kind = kind
        await self.sse.event("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})
        if not self.pinged:
            await self.ping()

    async def _close(self) -> None:
        if self.open_kind is None:
            return
        if self.open_kind == "thinking":
            await self._delta({"type": "signature_delta", "signature": ""})
        await self.sse.event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.open_kind = None

    async def _delta(self, delta: dict[str, Any]) -> None:
        await self.sse.event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    async def send(self, event: GenerationEvent | None) -> None:
        if isinstance(event, Started):
            await self._start(event.usage)
            return
        if event is not None:
            await self._start()
        if event is None:
            await self.ping()
        elif isinstance(event, TextDelta):
            if self.open_kind != "text":
                await self._open("text", {"type": "text", "text": ""})
            await self._delta({"type": "text_delta", "text": event.text})
        elif isinstance(event, ThinkingDelta):
            if self.open_kind != "thinking":
                await self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            await self._delta({"type": "thinking_delta", "thinking": event.text})
        elif isinstance(event, ToolCallEvent):
            call = event.call
            await self._open("tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            await self._delta({"type": "input_json_delta", "partial_json": json.dumps(call.arguments, ensure_ascii=False)})
            await self._close()
        elif isinstance(event, GenerationFailed):
            await self.fail(event.error_type, event.message)
        elif isinstance(event, Finished):
            await self._close()
            if not self.pinged:
                await self.ping()
            usage = usage_body(event.usage)
            await self.sse.event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": event.stop_reason, "stop_sequence": event.stop_sequence},
                    "usage": usage,
                },
            )
            await self.sse.event("message_stop", {"type": "message_stop"})

    async def fail(self, error_type: str, message: str) -> None:
        await self._start()
        await self.sse.event("error", anthropic_error_body(error_type, message, self.sse.request.get(REQUEST_ID)))
