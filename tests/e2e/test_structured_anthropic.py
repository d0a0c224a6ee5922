"""Structured outputs through the official `anthropic` SDK, answered by the embedded SmolLM2-135M.

A 135M model left alone writes tool calls that rarely parse; constrained, every one validates:
- 50 forced calls (a named tool, or `any`) over 25 seeded schemas (nested objects, enums, arrays,
  required and optional fields, string formats, patterns, `anyOf`), half streamed, each `input`
  validated with `jsonschema` (formats checked);
- 20 `output_config.format` answers (and the older `output_format`), each parsed and validated;
- a schema feature the grammar cannot enforce is a 400 naming it.
Requests go five at a time (the engine batches them), and the tools of a group are the same in
each of its requests, so the prefix cache prefills their long description once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import jsonschema
import pytest

from tests.e2e.structured_cases import features, random_schemas, random_tools
from tests.support import API_KEY, CliServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
SAMPLING = {"temperature": 0.6, "top_p": 0.95}
GROUPS, PER_GROUP = 5, 5


@pytest.fixture(scope="module")
def client(embedded_server: CliServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=embedded_server.base_url, api_key=API_KEY, max_retries=0, timeout=600)


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """The first call alone (it leaves the shared prefix in the cache), then five at a time."""
    first = calls[0]()
    with ThreadPoolExecutor(5) as pool:
        return [first, *pool.map(lambda call: call(), calls[1:])]


def forced_call(client: anthropic.Anthropic, tools: list[dict[str, Any]], choice: dict[str, Any], stream: bool) -> anthropic.types.Message:
    body: dict[str, Any] = {
        "model": "pensieve",
        "max_tokens": 160,
        "tools": tools,
        "tool_choice": choice,
        "messages": [{"role": "user", "content": f"Fill in a realistic example with {tools[0]['name'] if choice['type'] == 'any' else choice['name']}."}],
        "extra_body": SAMPLING,  # the SDK no longer takes sampling fields for newer models
    }
    if not stream:
        return client.messages.create(**body)
    with client.messages.stream(**body) as events:
        return events.get_final_message()


def test_fifty_forced_tool_calls_validate(client: anthropic.Anthropic) -> None:
    groups = [random_tools(seed, PER_GROUP) for seed in range(GROUPS)]
    for tools in groups[::2]:
        for tool in tools[1::2]:
            tool["strict"] = True
    assert {"enum", "anyOf", "format", "pattern", "items", "nested object", "required"} <= features([t["input_schema"] for g in groups for t in g])
    checked = 0
    for tools in groups:
        calls: list[Callable[[], Any]] = []
        for i, tool in enumerate(tools):
            named = {"type": "tool", "name": tool["name"]}
            calls.append(lambda named=named, tools=tools: (named, forced_call(client, tools, named, stream=False)))
            streamed = named if i % 2 == 0 else {"type": "any"}
            calls.append(lambda streamed=streamed, tools=tools: (streamed, forced_call(client, tools, streamed, stream=True)))
        for choice, message in in_parallel(calls):
            schemas = {t["name"]: t["input_schema"] for t in tools}
            assert message.stop_reason == "tool_use", message
            (block,) = [b for b in message.content if b.type == "tool_use"]
            assert block.id.startswith("toolu_") and block.name in schemas
            if choice["type"] == "tool":
                assert block.name == choice["name"]
            jsonschema.validate(block.input, schemas[block.name], format_checker=FORMATS)
            checked += 1
    assert checked == GROUPS * PER_GROUP * 2


def json_answer(client: anthropic.Anthropic, schema: dict[str, Any], beta: bool) -> anthropic.types.Message:
    fmt = {"type": "json_schema", "schema": schema}
    extra = {"output_format": fmt} if beta else {"output_config": {"format": fmt}}
    return client.messages.create(
        model="pensieve",
        max_tokens=160,
        messages=[{"role": "user", "content": "Describe a made-up item as JSON."}],
        extra_body={**extra, **SAMPLING},
    )


def test_twenty_output_formats_validate(client: anthropic.Anthropic) -> None:
    schemas = random_schemas(2024, 20)
    answers = in_parallel([lambda s=s, i=i: json_answer(client, s, beta=i % 4 == 3) for i, s in enumerate(schemas)])
    for schema, message in zip(schemas, answers, strict=True):
        assert message.stop_reason == "end_turn", message
        (block,) = message.content
        assert block.type == "text"
        jsonschema.validate(json.loads(block.text), schema, format_checker=FORMATS)


def test_an_unenforceable_schema_is_a_400_naming_the_feature(client: anthropic.Anthropic) -> None:
    odd = {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}],
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": odd}}},
        )  # fmt: skip
    error = info.value.body["error"]
    assert error["type"] == "invalid_request_error" and "propertyNames" in error["message"]
    assert error["message"].startswith("output_config.format.schema:")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "odd", "input_schema": odd, "strict": True}],
        )  # fmt: skip
    assert "tool 'odd'" in info.value.body["error"]["message"] and "propertyNames" in info.value.body["error"]["message"]
