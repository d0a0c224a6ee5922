"""OpenAI chat completions and (legacy) completions wire types.

Like the Anthropic types, validation is lenient about what a local server can ignore (unknown
top-level fields such as `store`, `metadata`, `service_tier`, `user`) and strict about what it
acts on, so a wrong type is a 400 that names the field rather than a silent default. Which
*values* are supported (n=1, text responses, no logprobs) is decided by the server, not here,
so that the 400 can say why and what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _listed(what: str, wrap: Callable[[str], Any] = lambda s: s) -> BeforeValidator:
    """Accept one string where OpenAI allows "a string or a list", as a one-item list.

    One shape downstream, and no pydantic union: a union's errors carry member names in their
    location (`stop.str`), while here a bad value is reported against the field itself.
    """

    def validate(value: Any) -> Any:
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, str):
            return [wrap(value)]
        raise ValueError(f"must be {what}")

    return BeforeValidator(validate)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class MediaPart(_Lenient):
    """Images, audio and files: the text models served here cannot read them."""

    type: Literal["image_url", "input_audio", "file"]


ContentPart = Annotated[TextPart | RefusalPart | MediaPart, Field(discriminator="type")]
"""An unknown part type is a 400, as on OpenAI's own API."""


class FunctionCall(_Lenient):
    name: str
    arguments: str = ""
    """A JSON object, as a string (that is how OpenAI sends it)."""


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Lenient):
    """One message of any role; which fields a role needs is checked when translating."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        list[ContentPart] | None,
        _listed("a string or a list of content parts", lambda s: {"type": "text", "text": s}),
    ] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionName


class AllowedTools(_Lenient):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice]


def _choice_object(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


class ToolChoice(_Lenient):
    """`"none"`, `"auto"`, `"required"`, a named function or `allowed_tools`, as one object:
    the strings become `{"type": …}` so a bad value is reported as `tool_choice.type`."""

    type: Literal["none", "auto", "required", "function", "allowed_tools"]
    function: FunctionName | None = None
    allowed_tools: AllowedTools | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class _Sampling(_Lenient):
    """What both endpoints share: model, sampling, stop, n, streaming."""

    model: str = ""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: Annotated[list[str] | None, _listed("a string or a list of strings")] = None
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Annotated[ToolChoice | None, BeforeValidator(_choice_object)] = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    functions: list[dict[str, Any]] | None = None
    """Deprecated by OpenAI in favour of `tools`; refused with a pointer to `tools`."""


class CompletionRequest(_Sampling):
    prompt: Annotated[list[Any], _listed("a string or a list of one string")]
    """Also token ids on OpenAI's side (a list of ints, or of lists); refused by the server."""
    max_tokens: int | None = Field(16, ge=1)
    """16 is OpenAI's documented default for this endpoint."""
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None
