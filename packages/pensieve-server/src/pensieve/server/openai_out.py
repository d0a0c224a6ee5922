"""Neutral generation events -> OpenAI responses: whole, or as `data:` chunks ending in [DONE].

The engine reports each tool call whole, once parsed. Streams still use OpenAI's delta shape (a
first delta carrying index, id, type and name with empty arguments, then the arguments string)
so that clients which concatenate argument pieces by index work unchanged. The indices count
calls within the response, so they are stable however the text around them is chunked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pensieve.models import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from pensieve.server.errors import openai_error_body
from pensieve.server.streaming import SSEWriter
from pensieve.utils import ApiError

_FINISH_REASONS = {"max_tokens": "length", "tool_use": "tool_calls"}
"""Every other stop reason (end of turn, a stop sequence) is OpenAI's "stop"."""


def finish_reason(stop_reason: str) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop")


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
    }


def call_id(call: ToolCall) -> str:
    """OpenAI-style ids (`call_…`) for the engine's tool calls; clients send them back as is."""
    return "call_" + call.id.removeprefix("toolu_")


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call_id(call), "type": "function", "function": {"name": call.name, "arguments": arguments}}


@dataclass
class Outcome:
    """A whole generation, for the non-streaming responses."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finished: Finished | None = None

    @classmethod
    async def collect(cls, events: AsyncIterator[GenerationEvent | None]) -> Outcome:
        outcome = cls()
        async for event in events:
            if isinstance(event, TextDelta):
                outcome.text += event.text
            elif isinstance(event, ToolCallEvent):
                outcome.tool_calls.append(event.call)
            elif isinstance(event, GenerationFailed):
                raise ApiError(event.message)
            elif isinstance(event, Finished):
                outcome.finished = event
        return outcome

    @property
    def finish_reason(self) -> str:
        return finish_reason(self.finished.stop_reason if self.finished else "end_turn")

    @property
    def usage(self) -> dict[str, Any]:
        return usage_body(self.finished.usage if self.finished else Usage())


def _head(prefix: str, obj: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": obj, "created": int(time.time()), "model": model}


def chat_completion(outcome: Outcome, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": outcome.text, "refusal": None}
    if outcome.tool_calls:
        message["content"] = outcome.text or None
        message["tool_calls"] = [tool_call_body(c) for c in outcome.tool_calls]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": outcome.finish_reason}
    return {**_head("chatcmpl", "chat.completion", model), "choices": [choice], "usage": outcome.usage}


def text_completion(outcome: Outcome, model: str, echo: str = "") -> dict[str, Any]:
    choice = {"index": 0, "text": echo + outcome.text, "logprobs": None, "finish_reason": outcome.finish_reason}
    return {**_head("cmpl", "text_completion", model), "choices": [choice], "usage": outcome.usage}


class ChunkStream:
    """What both endpoints' streams share: the chunk frame, keep-alives, usage, errors, [DONE].

    Subclasses say what a choice looks like (`_choice`) and how content events become choices.
    """

    prefix = "chatcmpl"
    object_name = "chat.completion.chunk"

    def __init__(self, sse: SSEWriter, model: str, include_usage: bool) -> None:
        self.sse = sse
        self.include_usage = include_usage
        self.head = _head(self.prefix, self.object_name, model)

    def _choice(self, content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def write(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
        chunk = {**self.head, "choices": choices}
        if self.include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        await self.sse.event(None, chunk)

    async def begin(self) -> None:
        """Sent before the prompt is processed, so the client sees the response has started."""

    async def content(self, event: GenerationEvent) -> None:
        raise NotImplementedError

    async def send(self, event: GenerationEvent | None) -> None:
        if event is None:
            await self.keepalive()
        elif isinstance(event, GenerationFailed):
            await self.fail(event.error_type, event.message)
        elif isinstance(event, Finished):
            await self.write([self._choice({}, finish_reason(event.stop_reason))])
            if self.include_usage:
                await self.write([], usage_body(event.usage))
            await self.sse.event(None, "[DONE]")
        else:
            await self.content(event)

    async def keepalive(self) -> None:
        """An SSE comment: clients skip it, proxies see a live connection during long prefills."""
        await self.sse.comment("keep-alive")

    async def fail(self, error_type: str, message: str) -> None:
        """A failure after the stream began: an OpenAI error object as a data line (the SDKs
        raise it as an APIError), then [DONE] so line-based clients stop reading."""
        await self.sse.event(None, openai_error_body(error_type, message, None))
        await self.sse.event(None, "[DONE]")


class ChatStream(ChunkStream):
    """`chat.completion.chunk` objects: role first, then content and tool-call deltas."""

    def __init__(self, sse: SSEWriter, model: str, include_usage: bool) -> None:
        super().__init__(sse, model, include_usage)
        self.calls = 0

    def _choice(self, content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}

    async def begin(self) -> None:
        await self.write([self._choice({"role": "assistant", "content": ""})])

    async def content(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            await self.write([self._choice({"content": event.text})])
        elif isinstance(event, ToolCallEvent):
            body, index = tool_call_body(event.call), self.calls
            self.calls += 1
            first = {"index": index, "id": body["id"], "type": "function", "function": {"name": event.call.name, "arguments": ""}}
            await self.write([self._choice({"tool_calls": [first]})])
            rest = {"index": index, "function": {"arguments": body["function"]["arguments"]}}
            await self.write([self._choice({"tool_calls": [rest]})])


class CompletionStream(ChunkStream):
    """`text_completion` objects carrying text pieces; with echo, the prompt comes first."""

    prefix = "cmpl"
    object_name = "text_completion"

    def __init__(self, sse: SSEWriter, model: str, include_usage: bool, echo: str = "") -> None:
        super().__init__(sse, model, include_usage)
        self.echo = echo

    def _choice(self, content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "text": content.get("text", ""), "logprobs": None, "finish_reason": finish}

    async def begin(self) -> None:
        if self.echo:
            await self.write([self._choice({"text": self.echo})])

    async def content(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            await self.write([self._choice({"text": event.text})])
