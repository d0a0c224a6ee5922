"""Structured output through the official `openai` SDK, answered by the embedded SmolLM2-135M.

`response_format` `json_schema` (strict) and `json_object`, and strict functions under
`tool_choice` `required` and a named function, streamed and not: every answer parses and
validates (`jsonschema`, formats checked), and a forced call ends with `finish_reason`
`tool_calls`. The seeded schemas are those of the Anthropic test (tests/e2e/structured_cases.py).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.structured_cases import as_openai_tool, random_schemas, random_tools
from tests.support import API_KEY, CliServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
SAMPLING: dict[str, Any] = {"temperature": 0.6, "top_p": 0.95, "max_completion_tokens": 160}


@pytest.fixture(scope="module")
def client(embedded_server: CliServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=600)


def answer(client: openai.OpenAI, stream: bool, prompt: str = "Fill in a realistic example.", **body: Any) -> tuple[str, list[dict[str, Any]], str]:
    """(content, tool calls as {name, arguments}, finish_reason), streamed or not."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        choice = client.chat.completions.create(model="pensieve", messages=messages, seed=7, **SAMPLING, **body).choices[0]
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or []]
        return choice.message.content or "", calls, choice.finish_reason
    content, calls, finish = "", {}, ""
    for chunk in client.chat.completions.create(model="pensieve", messages=messages, seed=7, stream=True, **SAMPLING, **body):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for c in delta.tool_calls or []:
            call = calls.setdefault(c.index, {"name": "", "arguments": ""})
            call["name"] += c.function.name or ""
            call["arguments"] += c.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, list(calls.values()), finish


def test_response_formats_validate(client: openai.OpenAI) -> None:
    schemas = random_schemas(4048, 10)

    def ask(i: int) -> tuple[dict[str, Any], tuple[str, list[dict[str, Any]], str]]:
        fmt = {"type": "json_schema", "json_schema": {"name": f"item_{i}", "schema": schemas[i], "strict": True}}
        return schemas[i], answer(client, i % 2 == 1, response_format=fmt)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(ask, range(len(schemas))))
    for schema, (content, calls, finish) in results:
        assert finish == "stop" and not calls, (schema, content)
        jsonschema.validate(json.loads(content), schema, format_checker=FORMATS)


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_mode_answers_one_object(client: openai.OpenAI, stream: bool) -> None:
    """`json_object` has no schema to bound it, so the prompt asks for a small object, as OpenAI
    requires JSON mode's prompt to ask for JSON (a 135M model left to choose writes keys of prose)."""
    prompt = 'Reply in JSON: an object {"name": ..., "age": ...} for a made-up person.'
    content, calls, finish = answer(client, stream, prompt, response_format={"type": "json_object"})
    assert finish == "stop" and not calls, content
    assert isinstance(json.loads(content), dict)


def test_strict_functions_validate_under_required_and_named_choices(client: openai.OpenAI) -> None:
    tools = random_tools(77, 5)
    wire = [as_openai_tool(t) for t in tools]
    schemas = {t["name"]: t["input_schema"] for t in tools}
    choices: list[Any] = ["required"] * 2 + [{"type": "function", "function": {"name": t["name"]}} for t in tools]
    first = answer(client, False, tools=wire, tool_choice=choices[0])  # leaves the tools' prefix in the cache
    with ThreadPoolExecutor(5) as pool:
        rest = list(pool.map(lambda ic: answer(client, ic[0] % 2 == 0, tools=wire, tool_choice=ic[1]), enumerate(choices[1:])))
    for choice, (content, calls, finish) in zip(choices, [first, *rest], strict=True):
        assert finish == "tool_calls" and len(calls) == 1 and content == ""
        name = calls[0]["name"]
        if isinstance(choice, dict):
            assert name == choice["function"]["name"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), schemas[name], format_checker=FORMATS)


def test_a_strict_function_the_grammar_cannot_enforce_is_a_400(client: openai.OpenAI) -> None:
    odd = {"type": "function", "function": {"name": "odd", "parameters": {"type": "object", "propertyNames": {"pattern": "^a"}}, "strict": True}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="pensieve", messages=[{"role": "user", "content": "x"}], tools=[odd], max_tokens=4)
    assert info.value.type == "invalid_request_error" and "tool 'odd'" in info.value.message and "propertyNames" in info.value.message
