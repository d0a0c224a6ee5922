"""The neutral types the engine speaks, whichever wire API a request arrived on.

The Anthropic and OpenAI handlers both translate into `ChatRequest` and out of the
`GenerationEvent` stream, so sampling, stop handling, tool parsing and batching exist once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "cancelled", "error"]


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = {}


class ChatMessage(BaseModel):
    """One turn, already flattened to text; tool calls and results keep their structure."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None


class ToolSpec(BaseModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False
    """The client asked for a guarantee: a schema feature that cannot be enforced is an error
    rather than relaxed to "any JSON object" (calls are constrained either way)."""


class ResponseFormat(BaseModel):
    """The text answer must be JSON: valid against `json_schema`, or any JSON object when None."""

    model_config = ConfigDict(frozen=True)

    json_schema: dict[str, Any] | None = None
    param: str = "response_format"
    """Where the schema sits in the client's request, for error messages."""


class SamplingParams(BaseModel):
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class ChatRequest(BaseModel):
    """What to generate. `messages` starts with the system turn, if there is one."""

    model: str
    messages: list[ChatMessage]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: list[str] = []
    tools: list[ToolSpec] = []
    tool_choice: Literal["auto", "any", "none"] | str = "auto"
    """A tool name means that tool must be called."""
    parallel_tool_calls: bool = True
    thinking: bool = False
    response_format: ResponseFormat | None = None
    """Structured output: the answer is constrained to JSON (see `ResponseFormat`)."""
    request_id: str = ""
    raw_prompt: str | None = None
    """Plain text completion (OpenAI /v1/completions): this text is tokenized as the whole prompt,
    with no chat template, and `messages` is ignored."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts. `input_tokens` is the whole prompt; `cache_read_input_tokens` is the part of
    it served from the prefix cache (each wire API reports the split its own way)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Started:
    """The engine took the prompt in: `usage` says how much of it the prefix cache held.

    It comes before any content, once the compute thread has looked the prompt up in the
    prefix cache (memory, then disk), so a stream can open with the real split of the prompt
    into new and cached tokens, as Anthropic's `message_start` does.
    """

    usage: Usage


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A complete, parsed tool call; the model's raw call text is never shown as text."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class Finished:
    stop_reason: StopReason
    usage: Usage
    stop_sequence: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    """Generation broke after it started; the server reports it in the stream's error shape."""

    message: str
    error_type: str = "api_error"


GenerationEvent = Started | TextDelta | ThinkingDelta | ToolCallEvent | Finished | GenerationFailed
