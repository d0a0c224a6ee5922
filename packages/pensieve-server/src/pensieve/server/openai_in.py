"""OpenAI chat completions and completions requests -> the neutral ChatRequest.

Decisions a reader would otherwise have to reverse-engineer:
- `system` and `developer` messages mean the same to a local model: both become system turns
  (the prompt renderer folds any after the first into notes, as for Anthropic's mid-conversation
  system messages).
- Images, audio and files follow the Anthropic side's policy: in the newest user turn they are a
  400 (the user is asking about them); in older turns they become a short placeholder so a long
  conversation that once carried a screenshot keeps working.
- What a local server cannot honour is a 400 that says so and what to send instead, never a
  silent default: n>1, logprobs (the engine does not report them), the deprecated `functions`,
  `suffix`, `best_of`, token-id prompts.
- `response_format` `json_object` and `json_schema` become the neutral `ResponseFormat`, enforced
  by constrained decoding whether or not `strict` is set (a schema without `schema` means any
  JSON object); functions with `strict: true` must have schemas the grammar can enforce.
- No max_tokens on chat: the rest of the context window (OpenAI's own behaviour); the engine
  clamps to what fits. /v1/completions keeps OpenAI's documented default of 16.
- Seeds are int64 on the wire and uint64 to MLX: taken modulo 2**64, so every valid seed works.
- Tool call arguments arrive as JSON strings; one that is not a JSON object is kept as
  `{"_raw": text}`, the same convention the engine's output parser uses for model output.
"""

from __future__ import annotations

import json
from typing import Any

from pensieve.models import (
    ChatMessage,
    ChatRequest,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolSpec,
)
from pensieve.models import openai as wire
from pensieve.utils import InvalidRequestError

DEFAULT_TEMPERATURE = 1.0
"""OpenAI's documented default for both endpoints."""

_MEDIA_KINDS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _check_common(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> None:
    if body.n not in (None, 1):
        raise _refuse(
            "n", f"n={body.n} is not supported: this server generates one choice per request. "
            "Send n=1 (or leave it out) and repeat the request for more choices"
        )


def check_chat(body: wire.ChatCompletionRequest) -> None:
    """Refuse, before any model is loaded, what this server cannot do."""
    _check_common(body)
    for param, value in (("logprobs", body.logprobs), ("top_logprobs", body.top_logprobs)):
        if value:
            raise _refuse(
                param, "log-probabilities are not supported: the engine does not report them "
                "yet. Leave logprobs and top_logprobs out"
            )
    if body.functions is not None or (body.model_extra or {}).get("function_call") is not None:
        raise _refuse(
            "functions", "`functions` and `function_call` are deprecated and not supported; "
            "send `tools` and `tool_choice` instead"
        )


def check_completion(body: wire.CompletionRequest) -> None:
    """Refuse, before any model is loaded, what this server cannot do."""
    _check_common(body)
    if body.best_of not in (None, 1):
        raise _refuse("best_of", f"best_of={body.best_of} is not supported; send best_of=1 or leave it out")
    if body.logprobs is not None:
        raise _refuse(
            "logprobs", "log-probabilities are not supported: the engine does not report them yet. "
            "Leave logprobs out"
        )
    if body.suffix:
        raise _refuse("suffix", "insertion (a suffix after the completion) is not supported; leave suffix out")


def _media(part: wire.MediaPart, latest: bool, param: str) -> str:
    kind = _MEDIA_KINDS[part.type]
    if latest:
        raise InvalidRequestError(
            f"{param}: this model cannot read {kind}s: it is a text-only model. Remove the "
            f"{part.type} part, or serve a model that accepts them",
            param=param,
        )
    return f"[{kind} omitted: this model cannot read it]"


def _text(content: list[wire.ContentPart] | None, latest: bool, param: str) -> str:
    texts = []
    for i, part in enumerate(content or []):
        if isinstance(part, wire.TextPart):
            texts.append(part.text)
        elif isinstance(part, wire.RefusalPart):
            texts.append(part.refusal)
        elif isinstance(part, wire.MediaPart):
            texts.append(_media(part, latest, f"{param}.{i}"))
    return "\n\n".join(texts)


def _arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def to_messages(messages: list[wire.Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    tool_names: dict[str, str] = {}
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, msg in enumerate(messages):
        text = _text(msg.content, i == last_user, f"messages.{i}.content")
        if msg.role in ("system", "developer"):
            out.append(ChatMessage(role="system", content=text))
        elif msg.role == "user":
            out.append(ChatMessage(role="user", content=text))
        elif msg.role == "assistant":
            calls = [ToolCall(id=c.id, name=c.function.name, arguments=_arguments(c.function.arguments)) for c in msg.tool_calls or []]
            tool_names.update((c.id, c.name) for c in calls)
            out.append(ChatMessage(role="assistant", content=text, tool_calls=calls))
        else:
            if not msg.tool_call_id:
                raise _refuse(f"messages.{i}.tool_call_id", "required for role 'tool': the id of the tool call this answers")
            name = tool_names.get(msg.tool_call_id, msg.name)
            out.append(ChatMessage(role="tool", content=text, tool_call_id=msg.tool_call_id, name=name))
    return out


def to_tools(tools: list[wire.Tool] | None) -> list[ToolSpec]:
    return [
        ToolSpec(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters or {"type": "object", "properties": {}},
            strict=bool(t.function.strict),
        )
        for t in tools or []
    ]


def _known(name: str, tools: list[ToolSpec], param: str) -> str:
    if not any(t.name == name for t in tools):
        raise _refuse(param, f"names function '{name}', which is not in `tools`; add it there or choose another")
    return name


def to_tool_choice(choice: wire.ToolChoice | None, tools: list[ToolSpec]) -> tuple[str, list[ToolSpec]]:
    """The neutral choice ("auto", "none", "any" or a tool name) and the tools offered."""
    if choice is None or choice.type in ("auto", "none"):
        return choice.type if choice else "auto", tools
    if not tools:
        raise _refuse("tool_choice", "a tool choice other than 'auto' or 'none' needs `tools`")
    if choice.type == "required":
        return "any", tools
    if choice.type == "function":
        if choice.function is None:
            raise _refuse("tool_choice.function", "required when tool_choice.type is 'function'")
        return _known(choice.function.name, tools, "tool_choice.function.name"), tools
    if choice.allowed_tools is None:
        raise _refuse("tool_choice.allowed_tools", "required when tool_choice.type is 'allowed_tools'")
    allowed = {
        _known(t.function.name, tools, f"tool_choice.allowed_tools.tools.{i}.function.name")
        for i, t in enumerate(choice.allowed_tools.tools)
    }
    mode = "any" if choice.allowed_tools.mode == "required" else "auto"
    return mode, [t for t in tools if t.name in allowed]


def to_response_format(fmt: wire.ResponseFormat | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat()
    if fmt.json_schema is None:
        raise _refuse("response_format.json_schema", "required when type is 'json_schema': {\"name\": …, \"schema\": {…}}")
    schema = fmt.json_schema.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _refuse("response_format.json_schema.schema", "must be a JSON schema object")
    return ResponseFormat(json_schema=schema, param="response_format.json_schema.schema")


def _sampling(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> SamplingParams:
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=None if body.seed is None else body.seed % 2**64,
    )


def to_chat_request(body: wire.ChatCompletionRequest, request_id: str, context_length: int) -> ChatRequest:
    choice, tools = to_tool_choice(body.tool_choice, to_tools(body.tools))
    return ChatRequest(
        model=body.model,
        messages=to_messages(body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens or context_length,
        sampling=_sampling(body),
        stop=body.stop or [],
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=to_response_format(body.response_format),
        request_id=request_id,
    )


def prompt_text(prompt: list[Any]) -> str:
    """The one text prompt of a completions request (a string arrives as a one-item list)."""
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if not prompt:
        raise _refuse("prompt", "is empty; send the prompt as a string")
    if all(isinstance(p, str) for p in prompt):
        raise _refuse("prompt", f"got {len(prompt)} prompts; send one prompt per request")
    raise _refuse("prompt", "token-id prompts are not supported; send the prompt as text")


def to_completion_request(body: wire.CompletionRequest, request_id: str) -> ChatRequest:
    return ChatRequest(
        model=body.model,
        messages=[],
        raw_prompt=prompt_text(body.prompt),
        max_tokens=body.max_tokens or 16,
        sampling=_sampling(body),
        stop=body.stop or [],
        request_id=request_id,
    )
