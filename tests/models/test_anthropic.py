"""Anthropic wire types: lenient about what can be ignored, strict (and precise) about the rest."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pensieve.models import anthropic as wire

BASE: dict[str, Any] = {"model": "claude-opus-4-8", "max_tokens": 10}


def parse(**body: Any) -> wire.MessagesRequest:
    return wire.MessagesRequest.model_validate({**BASE, **body})


def error_locations(**body: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        parse(**body)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


def test_each_block_kind_becomes_its_class_and_unknown_kinds_are_kept() -> None:
    content = [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}, "citations": None},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}},
        {"type": "document", "source": {"type": "text", "data": "doc"}, "title": "T"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "r"}], "is_error": True},
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "redacted_thinking", "data": "xyz"},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "search_result", "source": "s", "title": "t", "content": []},
    ]
    blocks = parse(messages=[{"role": "user", "content": content}]).messages[0].content
    assert [type(b).__name__ for b in blocks] == [
        "TextBlock", "ImageBlock", "DocumentBlock", "ToolUseBlock", "ToolUseBlock",
        "ToolResultBlock", "ThinkingBlock", "RedactedThinkingBlock", "OtherBlock", "OtherBlock",
    ]  # fmt: skip
    assert blocks[0].model_extra == {"cache_control": {"type": "ephemeral"}, "citations": None}
    assert blocks[5].is_error and blocks[5].content == [{"type": "text", "text": "r"}]
    assert blocks[8].type == "web_search_tool_result"


def test_every_field_a_client_may_send_is_accepted() -> None:
    request = parse(
        messages=[{"role": "user", "content": "x"}, {"role": "system", "content": "mid-conversation"}],
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "5m"}}],
        stop_sequences=["a"], stream=True, temperature=1.0, top_p=0.1, top_k=5, metadata={"user_id": "u"},
        tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}, {"type": "bash_20250124", "name": "bash"}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 1024},
        service_tier="standard_only", context_management={"edits": []}, output_config={"effort": "low"},
        container={"id": "c"}, mcp_servers=[], cache_control={"type": "ephemeral"}, speed="fast",
        inference_geo="eu", diagnostics={"x": 1}, user_profile_id="p", workspace_id="w",
    )  # fmt: skip
    assert request.model_extra is not None and request.model_extra["service_tier"] == "standard_only"
    assert request.tools is not None and request.tools[1].type == "bash_20250124"
    assert request.tool_choice is not None and request.tool_choice.disable_parallel_tool_use
    assert request.thinking is not None and request.thinking.budget_tokens == 1024
    counted = wire.CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "mcp_servers": []})
    assert counted.messages[0].content == "x"


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ("messages", 0, "content", 0, "text"), "Field required"),
        ({"messages": [{"role": "user", "content": 7}]}, ("messages", 0, "content"), "must be a string or a list of content blocks"),
        ({"messages": [{"role": "user", "content": ["bare string"]}]}, ("messages", 0, "content", 0), "must be a content block: an object with a `type`"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, ("messages", 0, "content", 0, "type"), "Field required"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 3}]}]}, ("messages", 0, "content", 0, "content"), "must be a string or a list of content blocks"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}]}]}, ("messages", 0, "content", 0, "input"), "Input should be a valid dictionary"),
        ({"messages": [{"role": "x", "content": "hi"}]}, ("messages", 0, "role"), "Input should be 'user', 'assistant' or 'system'"),
        ({"system": {"text": "s"}, "messages": []}, ("system",), "must be a string or a list of text blocks"),
        ({"system": [{"type": "text"}], "messages": []}, ("system", 0, "text"), "Field required"),
    ],
)
def test_errors_are_located_at_the_field_without_union_member_names(body: dict[str, Any], loc: tuple[Any, ...], msg: str) -> None:
    found = error_locations(**body)
    assert (loc, msg) in [(location, message[: len(msg)]) for location, message in found]


def test_numeric_limits() -> None:
    for field, value in [("max_tokens", 0), ("temperature", 1.01), ("temperature", -0.1), ("top_p", 1.5), ("top_k", -1)]:
        assert error_locations(**{field: value, "messages": []})[0][0] == (field,)
