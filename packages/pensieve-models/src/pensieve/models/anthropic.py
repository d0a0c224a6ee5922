"""Anthropic Messages API wire types.

Validation is deliberately lenient about what a local server cannot use (unknown top-level
fields, unknown block fields, `cache_control`, beta features) and strict about what it needs
(roles, max_tokens, block shapes), because real clients such as Claude Code add fields faster
than any server follows them, and a 400 for an ignorable field breaks them.

Fields that take "a string or a list of blocks", and the block list itself, are validated by
small dispatching validators rather than pydantic unions: a union puts its member names and
tags into every error location (`messages.0.content.list[tagged-union[…]].0.text.text`), while
the 400 should name the field as the client wrote it (`messages.0.content.0.text`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


def _string_or_list(item: Any, what: str) -> WrapValidator:
    """`str | list[item]`, with errors located at the field or the list item, not a member."""
    items = TypeAdapter(list[item])

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return items.validate_python(value)
        raise PydanticCustomError("string_or_list", f"must be a string or a list of {what}")

    return WrapValidator(validate)


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class ImageBlock(_Lenient):
    type: Literal["image"]
    source: dict[str, Any] = {}


class DocumentBlock(_Lenient):
    type: Literal["document"]
    source: dict[str, Any] = {}
    title: str | None = None


class ToolUseBlock(_Lenient):
    type: Literal["tool_use", "server_tool_use"]
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[str | list[dict[str, Any]], _string_or_list(dict[str, Any], "content blocks")] | None = None
    is_error: bool = False


class ThinkingBlock(_Lenient):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Lenient):
    type: Literal["redacted_thinking"]
    data: str = ""


class OtherBlock(_Lenient):
    """Blocks a local model has no use for (search results, server tool results, …)."""

    type: str


_BLOCK_CLASSES: dict[str, type[BaseModel]] = {
    "text": TextBlock,
    "image": ImageBlock,
    "document": DocumentBlock,
    "tool_use": ToolUseBlock,
    "server_tool_use": ToolUseBlock,
    "tool_result": ToolResultBlock,
    "thinking": ThinkingBlock,
    "redacted_thinking": RedactedThinkingBlock,
}


def _one_block(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a block as the class its `type` names; errors then carry only the field path."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("content_block", "must be a content block: an object with a `type`")
    kind = value.get("type")
    return _BLOCK_CLASSES.get(kind, OtherBlock).model_validate(value) if isinstance(kind, str) else OtherBlock.model_validate(value)


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | OtherBlock,
    WrapValidator(_one_block),
]


class Message(_Lenient):
    role: Literal["user", "assistant", "system"]
    content: Annotated[str | list[ContentBlock], _string_or_list(ContentBlock, "content blocks")]


class SystemBlock(_Lenient):
    type: Literal["text"] = "text"
    text: str


SystemPrompt = Annotated[str | list[SystemBlock], _string_or_list(SystemBlock, "text blocks")]


class Tool(_Lenient):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    """Set for server tools (`web_search_20250305`, …), which a local server cannot run."""
    strict: bool | None = None
    """Structured outputs: the call's `input` must validate against `input_schema`."""


class OutputFormat(_Lenient):
    """Structured outputs: the text answer is JSON valid against `schema`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Lenient):
    format: OutputFormat | None = None


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class MessagesRequest(_Lenient):
    model: str = ""
    max_tokens: int = Field(gt=0)
    messages: list[Message]
    system: SystemPrompt | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None
    """The older beta spelling of `output_config.format` that SDKs still send."""


class CountTokensRequest(_Lenient):
    model: str = ""
    messages: list[Message]
    system: SystemPrompt | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: ResponseUsage


class ModelInfo(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str


class ModelList(BaseModel):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
