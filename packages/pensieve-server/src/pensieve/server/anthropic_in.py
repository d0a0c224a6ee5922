"""Anthropic Messages request -> the neutral ChatRequest.

Decisions a reader would otherwise have to reverse-engineer:
- Claude Code's first system block is a billing line (`x-anthropic-billing-header: …`), not an
  instruction; it is dropped, since it wastes tokens and, changing per request, would sit at the
  very front of the prompt and defeat the prefix cache.
- Images and documents cannot be read by the text models served here. In the newest user turn
  they are a 400 (the user is asking about them); in older turns they become a short placeholder
  so a long conversation that once carried a screenshot keeps working. Inside a tool result they
  are always a placeholder: an agent's tool (Claude Code reading a PNG) must not break the loop.
  Plain-text documents (`source.type` `text` or `content`) are read as text.
- Server tools (`web_search_…` and other typed tools) cannot run locally and are left out.
- `tool_choice` naming a tool that is not in `tools` is a 400, as on Anthropic's API.
- `thinking` `enabled` and `adaptive` both turn reasoning on (shown as thinking blocks);
  `budget_tokens` is not enforced, the reasoning is bounded by `max_tokens` alone.
- Structured outputs: `output_config.format` (or the older beta `output_format`) becomes the
  neutral `ResponseFormat`. With thinking on, a forced `tool_choice` wins: the call starts at
  once, unless the template opened a reasoning block, which stays free until it closes.
"""

from __future__ import annotations

from typing import Any

from pensieve.models import (
    ChatMessage,
    ChatRequest,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolSpec,
)
from pensieve.models import anthropic as wire
from pensieve.utils import InvalidRequestError

BILLING_PREFIX = "x-anthropic-billing-header"
DEFAULT_TEMPERATURE = 1.0
"""Anthropic's documented default; SDKs from 2.x no longer send sampling fields at all."""


def _system_text(system: str | list[wire.SystemBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n\n".join(b.text for b in system if not b.text.startswith(BILLING_PREFIX))


def _block_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") in ("image", "document"):
            parts.append(f"[{block['type']} omitted: this model cannot read it]")
    return "\n".join(parts)


def _document_text(source: dict[str, Any]) -> str | None:
    """A document's text if it is plain text, else None (PDFs, images, files by id)."""
    if source.get("type") == "text":
        return str(source.get("data", ""))
    if source.get("type") == "content" and isinstance(source.get("content"), (str, list)):
        return _block_text(source["content"])
    return None


def _unreadable(block: Any, latest: bool, param: str) -> str:
    kind = block.type
    if isinstance(block, wire.DocumentBlock) and (text := _document_text(block.source)) is not None:
        return text
    if latest:
        raise InvalidRequestError(
            f"{param}: this model cannot read {kind}s: it is a text-only model. Remove the {kind} "
            "block, or serve a model that accepts them",
            param=param,
        )
    return f"[{kind} omitted: this model cannot read it]"


def _user_turn(msg: wire.Message, index: int, latest: bool, tool_names: dict[str, str]) -> list[ChatMessage]:
    if isinstance(msg.content, str):
        return [ChatMessage(role="user", content=msg.content)]
    out: list[ChatMessage] = []
    texts: list[str] = []
    for j, block in enumerate(msg.content):
        if isinstance(block, wire.TextBlock):
            texts.append(block.text)
        elif isinstance(block, (wire.ImageBlock, wire.DocumentBlock)):
            texts.append(_unreadable(block, latest, f"messages.{index}.content.{j}"))
        elif isinstance(block, wire.ToolResultBlock):
            text = _block_text(block.content)
            out.append(
                ChatMessage(
                    role="tool",
                    content=f"Error: {text}" if block.is_error else text,
                    tool_call_id=block.tool_use_id,
                    name=tool_names.get(block.tool_use_id),
                )
            )
    if texts:
        out.append(ChatMessage(role="user", content="\n\n".join(texts)))
    return out


def _assistant_turn(msg: wire.Message, tool_names: dict[str, str]) -> ChatMessage:
    if isinstance(msg.content, str):
        return ChatMessage(role="assistant", content=msg.content)
    texts, calls, reasoning = [], [], []
    for block in msg.content:
        if isinstance(block, wire.TextBlock):
            texts.append(block.text)
        elif isinstance(block, wire.ToolUseBlock):
            tool_names[block.id] = block.name
            calls.append(ToolCall(id=block.id, name=block.name, arguments=block.input))
        elif isinstance(block, wire.ThinkingBlock):
            reasoning.append(block.thinking)
    return ChatMessage(
        role="assistant", content="".join(texts), tool_calls=calls, reasoning="".join(reasoning) or None
    )


def to_messages(system: Any, messages: list[wire.Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if text := _system_text(system):
        out.append(ChatMessage(role="system", content=text))
    tool_names: dict[str, str] = {}
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, msg in enumerate(messages):
        if msg.role == "system":
            text = msg.content if isinstance(msg.content, str) else _block_text([b.model_dump() for b in msg.content])
            out.append(ChatMessage(role="system", content=text))
        elif msg.role == "user":
            out.extend(_user_turn(msg, i, i == last_user, tool_names))
        else:
            out.append(_assistant_turn(msg, tool_names))
    if not any(m.role != "system" for m in out):
        raise InvalidRequestError("messages: at least one user message is required", param="messages")
    return out


def to_tools(tools: list[wire.Tool] | None) -> list[ToolSpec]:
    specs = []
    for tool in tools or []:
        if tool.type not in (None, "custom"):
            continue  # a server tool (web search, code execution, …): cannot run locally
        specs.append(
            ToolSpec(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.input_schema or {"type": "object"},
                strict=bool(tool.strict),
            )
        )
    return specs


def to_tool_choice(choice: wire.ToolChoice | None, tools: list[ToolSpec]) -> tuple[str, bool]:
    """(`auto` | `any` | `none` | a tool name, whether parallel calls are allowed)."""
    if choice is None:
        return "auto", True
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequestError("tool_choice.name: required when tool_choice.type is 'tool'", param="tool_choice.name")
        if choice.name not in {t.name for t in tools}:
            raise InvalidRequestError(
                f"tool_choice.name: tool '{choice.name}' is not in `tools`; name one of the tools sent",
                param="tool_choice.name",
            )
        return choice.name, not choice.disable_parallel_tool_use
    return choice.type, not choice.disable_parallel_tool_use


def to_response_format(req: wire.MessagesRequest) -> ResponseFormat | None:
    if req.output_config is not None and req.output_config.format is not None:
        return ResponseFormat(json_schema=req.output_config.format.json_schema, param="output_config.format.schema")
    if req.output_format is not None:
        return ResponseFormat(json_schema=req.output_format.json_schema, param="output_format.schema")
    return None


def to_chat_request(req: wire.MessagesRequest, request_id: str = "") -> ChatRequest:
    tools = to_tools(req.tools)
    choice, parallel = to_tool_choice(req.tool_choice, tools)
    return ChatRequest(
        model=req.model,
        messages=to_messages(req.system, req.messages),
        max_tokens=req.max_tokens,
        sampling=SamplingParams(
            temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
        ),
        stop=req.stop_sequences or [],
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        thinking=req.thinking is not None and req.thinking.type != "disabled",
        response_format=to_response_format(req),
        request_id=request_id,
    )


def count_request(req: wire.CountTokensRequest) -> ChatRequest:
    """A count_tokens body as a ChatRequest; max_tokens does not affect the prompt."""
    full = wire.MessagesRequest.model_validate({**req.model_dump(exclude_none=True), "max_tokens": 1})
    return to_chat_request(full)

