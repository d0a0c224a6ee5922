"""Turn a neutral chat request into the model's prompt tokens with its own chat template.

Templates differ in what they accept: many reject a system turn after the first message, and
many know nothing of tools. Rather than failing on what real clients send (Claude Code puts
`system` turns mid-conversation and sends two dozen tools), this module normalizes the
conversation first and, for templates without tool support, renders tools in the generic
`<tool_call>` format documented in docs/api.md, which `pensieve.engine.output` parses back.

Normalization, in order: system turns after the first become `[System note]` lines on the next
user turn; consecutive user turns are joined (Anthropic treats them as one turn, and strict
templates reject them); tool results follow the template's `tool` role, or become
`<tool_response>` user turns in the generic format. `tool_choice` and `response_format` are
enforced by constrained decoding (`grammar.py`), not by words; a JSON answer's schema is shown
to the model at the end of the system prompt, so that what it writes inside the grammar is
meant (see `response_format_instruction`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pensieve.models import ChatMessage, ChatRequest, ToolSpec
from pensieve.utils import InvalidRequestError

GENERIC_TOOL_START = "<tool_call>"
GENERIC_TOOL_END = "</tool_call>"

_GENERIC_TOOL_PREAMBLE = """# Tools

You may call one or more functions to help with the user's request. The functions are \
described by these JSON signatures:
<tools>
{tools}
</tools>

To call a function, reply with one JSON object per call inside tags, and nothing after them:
<tool_call>
{{"name": "<function-name>", "arguments": {{<arguments as a JSON object>}}}}
</tool_call>"""


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    text: str
    tokens: list[int]
    template_tools: bool
    """Whether the model's template rendered the tools itself, in its family's call format (else
    the generic format did); see `native_tool_calling`."""


JSON_CALL_PARSERS = frozenset({"mlx_lm.tool_parsers.json_tools"})
"""Families whose calls are `START{"name": …, "arguments": …}END`, which a grammar can write."""


def writes_json_calls(tokenizer: Any) -> bool:
    """Whether the family's native tool calls are the JSON object the grammar constrains."""
    parser = getattr(tokenizer, "tool_parser", None)
    return getattr(parser, "__module__", None) in JSON_CALL_PARSERS


def calls_must_validate(request: ChatRequest) -> bool:
    """Whether a tool call is forced or promised to validate (`strict`), not merely steered."""
    if not request.tools or request.tool_choice == "none":
        return False
    return request.tool_choice != "auto" or any(t.strict for t in request.tools)


def native_tool_calling(tokenizer: Any, request: ChatRequest | None = None) -> bool:
    """Whether tools go through the model's own template and its own call markers.

    Both halves are needed: a template that renders tools (it reads the `tools` variable), and
    call markers mlx-lm knows for the family (`has_tool_calling`, with its parser), so that what
    the template taught the model to write can be parsed back. A model with only one of the two
    gets the generic `<tool_call>` format for both rendering and parsing. So does a request whose
    calls must validate (forced or strict) on a family whose native calls are not the JSON object
    the grammar writes. This is the one place that answers the question; rendering, output
    parsing and the grammar all follow `template_tools`.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    native = "tools" in template and bool(getattr(tokenizer, "has_tool_calling", False))
    if native and request is not None and calls_must_validate(request):
        return writes_json_calls(tokenizer)
    return native


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _generic_call_text(msg: ChatMessage) -> str:
    calls = "\n".join(
        f"{GENERIC_TOOL_START}\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n{GENERIC_TOOL_END}"
        for c in msg.tool_calls
    )
    return "\n".join(part for part in (msg.content, calls) if part)


def _fold_system_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Keep one leading system turn; later system turns become bracketed notes on a user turn.

    Claude Code's mid-conversation system messages are reminders addressed to the model. A user
    turn is where every template accepts arbitrary text, so the note joins the next user turn
    (or becomes one at the end).
    """
    out: list[ChatMessage] = []
    pending: list[str] = []
    for i, msg in enumerate(messages):
        if msg.role == "system" and i == 0:
            out.append(msg)
        elif msg.role == "system":
            pending.append(msg.content)
        elif msg.role == "user" and pending:
            notes = "\n\n".join(f"[System note] {p}" for p in pending)
            out.append(msg.model_copy(update={"content": f"{notes}\n\n{msg.content}".strip()}))
            pending = []
        else:
            out.append(msg)
    if pending:
        out.append(ChatMessage(role="user", content="\n\n".join(f"[System note] {p}" for p in pending)))
    return out


def response_format_instruction(request: ChatRequest) -> str:
    """What the model is told when its answer must be JSON; "" otherwise.

    The grammar guarantees the shape whatever the model intends; telling it the schema makes the
    values it writes inside that shape the ones it means. Tool choices need no words: the call's
    markers and name are forced by the grammar, and the tools are already described.
    """
    fmt = request.response_format
    if fmt is None:
        return ""
    if fmt.json_schema is None:
        return "Reply with a single JSON object and nothing else."
    return f"Reply with a single JSON value and nothing else, following this JSON schema:\n{json.dumps(fmt.json_schema)}"


def _add_to_system(messages: list[ChatMessage], text: str) -> None:
    if not text:
        return
    if messages and messages[0].role == "system":
        messages[0] = messages[0].model_copy(update={"content": f"{messages[0].content}\n\n{text}".strip()})
    else:
        messages.insert(0, ChatMessage(role="system", content=text))


def _join_user_turns(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in rendered:
        if out and msg["role"] == "user" and out[-1]["role"] == "user" and set(msg) == set(out[-1]) == {"role", "content"}:
            out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n\n{msg['content']}"}
        else:
            out.append(msg)
    return out


def _assistant_message(msg: ChatMessage, native_tools: bool) -> dict[str, Any]:
    if msg.tool_calls and not native_tools:
        out: dict[str, Any] = {"role": "assistant", "content": _generic_call_text(msg)}
    elif msg.tool_calls:
        out = {
            "role": "assistant",
            "content": msg.content,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in msg.tool_calls
            ],
        }
    else:
        out = {"role": "assistant", "content": msg.content}
    if msg.reasoning:
        # Templates of reasoning models (Qwen3, …) render earlier reasoning from this key; the
        # others ignore it.
        out["reasoning_content"] = msg.reasoning
    return out


def _template_messages(request: ChatRequest, native_tools: bool) -> list[dict[str, Any]]:
    messages = _fold_system_turns(request.messages)
    if request.tools and not native_tools and request.tool_choice != "none":
        _add_to_system(
            messages,
            _GENERIC_TOOL_PREAMBLE.format(tools="\n".join(json.dumps(_tool_json(t)) for t in request.tools)),
        )
    _add_to_system(messages, response_format_instruction(request))

    rendered: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "assistant":
            rendered.append(_assistant_message(msg, native_tools))
        elif msg.role == "tool" and not native_tools:
            text = f"<tool_response>\n{msg.content}\n</tool_response>"
            if rendered and rendered[-1]["role"] == "user" and rendered[-1]["content"].startswith("<tool_response>"):
                rendered[-1]["content"] += "\n" + text
            else:
                rendered.append({"role": "user", "content": text})
        elif msg.role == "tool":
            rendered.append({"role": "tool", "content": msg.content, "tool_call_id": msg.tool_call_id, "name": msg.name})
        else:
            rendered.append({"role": msg.role, "content": msg.content})
    return _join_user_turns(rendered)


def render_prompt(tokenizer: Any, request: ChatRequest, encode: Callable[[str], list[int]] | None = None) -> RenderedPrompt:
    """Render and tokenize; the token count is what count_tokens and usage report."""
    if request.raw_prompt is not None:
        return _tokenize(tokenizer, request.raw_prompt, template_tools=False, encode=encode)
    if not request.messages:
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    native_tools = bool(request.tools) and native_tool_calling(tokenizer, request)
    messages = _template_messages(request, native_tools)
    kwargs: dict[str, Any] = {"add_generation_prompt": messages[-1]["role"] != "assistant"}
    if native_tools and request.tool_choice != "none":
        kwargs["tools"] = [_tool_json(t) for t in request.tools]
    if not kwargs["add_generation_prompt"]:
        kwargs["continue_final_message"] = True
    if getattr(tokenizer, "has_thinking", False):
        kwargs["enable_thinking"] = request.thinking
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # jinja raises anything: TemplateError, TypeError, ...
        raise InvalidRequestError(
            f"the model's chat template rejected this conversation: {exc}. "
            "Check the order of roles (user and assistant turns should alternate)."
        ) from exc
    return _tokenize(tokenizer, text, template_tools=native_tools, encode=encode)


def _tokenize(
    tokenizer: Any, text: str, *, template_tools: bool, encode: Callable[[str], list[int]] | None
) -> RenderedPrompt:
    """`encode` (an engine's PieceEncoder) must equal the tokenizer's own encoding, only faster."""
    tokens = encode(text) if encode is not None else tokenizer.encode(text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not tokens or tokens[0] != bos):
        tokens = [bos, *tokens]
    if not tokens:
        raise InvalidRequestError("prompt: the prompt is empty; send some text", param="prompt")
    return RenderedPrompt(text=text, tokens=tokens, template_tools=template_tools)
