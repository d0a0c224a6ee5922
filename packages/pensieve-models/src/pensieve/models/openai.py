"""OpenAI chat completions and (legacy) completions wire types.

Like the Anthropic types, validation is lenient about what a local server can ignore (unknown
top-level fields such as `store`, `metadata`, `service_tier`, `user`; unknown content-part
kinds) and strict about what it acts on, so a wrong type is a 400 that names the field rather
than a silent default. Which *values* are supported (n=1, text responses, no logprobs) is
decided by the server, not here, so that the 400 can say why and what to do instead.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


class OtherPart(_Lenient):
    type: str


_PART_TAGS = {"text": "text", "refusal": "refusal", "image_url": "media", "input_audio": "media", "file": "media"}


def _part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _PART_TAGS.get(kind, "other") if isinstance(kind, str) else "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[MediaPart, Tag("media")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


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
    content: str | list[ContentPart] | None = None
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
    type: Literal["function"]
    function: FunctionName


class AllowedTools(_Lenient):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice]


class AllowedToolsChoice(_Lenient):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice


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
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    functions: list[dict[str, Any]] | None = None
    """Deprecated by OpenAI in favour of `tools`; refused with a pointer to `tools`."""


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    """16 is OpenAI's documented default for this endpoint."""
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None
