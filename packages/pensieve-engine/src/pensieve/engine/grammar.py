"""What a request's output must look like, as an llguidance grammar (Lark syntax with JSON schemas).

The grammar describes the whole output, so one matcher per sequence follows it token by token:
- `response_format`: the answer is one JSON value valid against the schema (any JSON object for
  OpenAI's `json_object`);
- a forced tool call (`tool_choice` `any` or a named tool): the output is one call in the format
  the prompt taught the model, `START{"name": …, "arguments": …}END`, whose arguments validate
  against the named tool's schema, or, for `any`, against the union of the tools;
- `tool_choice` `auto` with tools: free text until the model writes the call's start marker (a
  lazy lexeme that stops at the marker, which llguidance matches at the byte level, whatever the
  tokens), then the rest of the call is constrained to the schema of the tool it names; after it,
  only further calls (when parallel calls are allowed) or the end, as the prompt told the model
  ("nothing after them"). Families whose native call body is not that JSON object (XML-like or pythonic calls)
  stay unconstrained under `auto`; forced and strict calls render those families' tools in the
  generic format instead (`prompt.native_tool_calling`), where the grammar applies.

Schemas are checked one by one before use, so an unenforceable feature is reported against the
tool or format that has it. Under `auto`, a tool that is not `strict` and uses such a feature has
its arguments relaxed to "any JSON object" (the client asked for no guarantee); everywhere else it
is a 400 that names the feature.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import llguidance

from pensieve.models import ChatRequest, ToolSpec
from pensieve.utils import InvalidRequestError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""Compact JSON as models write it in tool calls (`{"a": 1, "b": 2}`): no freedom to wander into
whitespace, which small models would otherwise fill until max_tokens."""

_TRIVIAL = {"propertyNames": {"type": "string"}}
"""Keywords that every JSON value satisfies (object keys are always strings); dropped rather than
refused, because Claude Code's own tools carry them."""


@dataclass(frozen=True, slots=True)
class CallMarkers:
    """The text around one tool call, as the model was taught to write it."""

    start: str
    end: str


@dataclass(frozen=True, slots=True)
class GrammarPlan:
    """A request's grammar and whether it forces the output from the first token."""

    lark: str
    forced_call: bool


def _normalize(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _normalize(v) for k, v in schema.items() if _TRIVIAL.get(k, object()) != v}
    if isinstance(schema, list):
        return [_normalize(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=512)
def _schema_problem(schema_json: str) -> str:
    """llguidance's complaint about a schema, or "" when it can enforce it (cached per schema)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, overrides=JSON_STYLE)
    except ValueError as exc:
        return str(exc)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error and messages else ""


def checked_schema(schema: Any, where: str, param: str, hint: str) -> dict[str, Any]:
    """The schema, normalized; a 400 naming the feature if the grammar engine cannot enforce it."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{where}: the schema must be a JSON object; {hint}", param=param)
    normalized = _normalize(schema)
    problem = _schema_problem(json.dumps(normalized, sort_keys=True))
    if problem:
        raise InvalidRequestError(
            f"{where}: the schema uses a feature that constrained decoding cannot enforce "
            f"({problem.strip().splitlines()[0]}); {hint}",
            param=param,
        )
    return normalized


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


def _lit(text: str) -> str:
    return json.dumps(text)


def _arguments(tool: ToolSpec, strict: bool) -> dict[str, Any]:
    hint = (
        "remove it from the input schema, or leave `strict` off and use tool_choice auto"
        if tool.strict
        else "remove it from the input schema, or use tool_choice auto"
    )
    try:
        return checked_schema(tool.parameters, f"tool '{tool.name}'", "tools", hint)
    except InvalidRequestError:
        if strict or tool.strict:
            raise
        return {"type": "object"}


def _call_object(tool: ToolSpec, strict: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": _arguments(tool, strict)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _call_schema(tools: list[ToolSpec], strict: bool) -> dict[str, Any]:
    objects = [_call_object(t, strict) for t in tools]
    return objects[0] if len(objects) == 1 else {"anyOf": objects}


def plan(
    request: ChatRequest, markers: CallMarkers | None, *, thinking_end: str | None = None
) -> GrammarPlan | None:
    """The grammar for a request's output, or None when nothing about it is constrained.

    `markers` is None where the model's call format is not one the grammar can write (its calls
    stay free); `thinking_end` is set when the prompt left the model inside a reasoning block,
    which stays free until it closes.
    """
    tools = request.tools if request.tool_choice != "none" else []
    forced = bool(tools) and request.tool_choice != "auto"
    if forced and markers is None:
        raise InvalidRequestError(  # prompt.native_tool_calling renders such requests generically
            "tool_choice: this model's tool-call format cannot be constrained", param="tool_choice"
        )
    rules: list[str] = []
    if forced:
        chosen = tools if request.tool_choice == "any" else [t for t in tools if t.name == request.tool_choice]
        body = f"{_lit(markers.start)} \"\\n\" {_json(_call_schema(chosen, strict=True))} \"\\n\" {_lit(markers.end)}"  # type: ignore[union-attr]
        rules.append(f"start: {'think ' if thinking_end else ''}call")
        rules.append(f"call: {body}")
    elif request.response_format is not None:
        fmt = request.response_format
        schema = {"type": "object"} if fmt.json_schema is None else checked_schema(
            fmt.json_schema, fmt.param, fmt.param, "remove it from the schema, or ask for JSON in the prompt instead"
        )
        answer = _json(schema)
        if tools and markers is not None:
            call = f"{_lit(markers.start)} \"\\n\" {_json(_call_schema(tools, strict=False))} \"\\n\" {_lit(markers.end)}"
            answer = f"{answer} | {call}"
        rules.append(f"start: {'think ' if thinking_end else ''}answer")
        rules.append(f"answer: {answer}")
    elif tools and markers is not None:
        more = f' ("\\n" {_lit(markers.start)} call)*' if request.parallel_tool_calls else ""
        rules.append(f"start: text_only | text call{more}")
        rules.append(f"text[stop={_lit(markers.start)}]: /(.|\\n)*/")
        rules.append('text_only[stop=""]: /(.|\\n)*/')
        rules.append(f"call: \"\\n\" {_json(_call_schema(tools, strict=False))} \"\\n\" {_lit(markers.end)}")
    else:
        return None
    if thinking_end and (forced or request.response_format is not None):
        rules.append(f"think[stop={_lit(thinking_end)}]: /(.|\\n)*/")
        rules[0] = rules[0].replace("think ", "think WS ")
        rules.append("WS: /[ \\n]{0,2}/")
    return GrammarPlan(lark="\n".join(rules) + "\n", forced_call=forced)
