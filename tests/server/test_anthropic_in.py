"""Anthropic request -> neutral ChatRequest: every block kind, system forms, images, tools, thinking."""

from __future__ import annotations

from typing import Any

import pytest

from pensieve.models import anthropic as wire
from pensieve.server.anthropic_in import count_request, to_chat_request
from pensieve.utils import InvalidRequestError

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
TOOL = {"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}


def convert(**body: Any) -> Any:
    body.setdefault("max_tokens", 10)
    body.setdefault("model", "claude-opus-4-8")
    return to_chat_request(wire.MessagesRequest.model_validate(body), "req_1")


def roles(request: Any) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.messages]


def test_system_as_a_string_or_blocks_and_the_billing_line_dropped() -> None:
    as_string = convert(system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    as_blocks = convert(
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli; cch=9f3a;"},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}],
    )
    assert roles(as_string) == roles(as_blocks) == [("system", "Be brief."), ("user", "Hi")]
    assert as_blocks.request_id == "req_1" and as_blocks.model == "claude-opus-4-8"


def test_system_role_messages_mid_conversation_are_kept_in_place() -> None:
    request = convert(
        system="Main",
        messages=[
            {"role": "user", "content": "Q"},
            {"role": "system", "content": [{"type": "text", "text": "Agents available: …"}]},
            {"role": "assistant", "content": "A"},
            {"role": "system", "content": "Reminder"},
        ],
    )
    assert roles(request) == [("system", "Main"), ("user", "Q"), ("system", "Agents available: …"), ("assistant", "A"), ("system", "Reminder")]


def test_tool_use_tool_result_and_thinking_blocks() -> None:
    request = convert(
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "text", "text": "18 C"}, {"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "station down", "is_error": True},
                    {"type": "tool_result", "tool_use_id": "toolu_a"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    assistant = request.messages[1]
    assert assistant.content == "Checking." and assistant.reasoning == "Use the tool."
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [("toolu_a", "get_weather", {"city": "Paris"})]
    results = request.messages[2:5]
    assert [(m.role, m.content, m.tool_call_id, m.name) for m in results] == [
        ("tool", "18 C\nsunny", "toolu_a", "get_weather"),
        ("tool", "Error: station down", "toolu_a", "get_weather"),
        ("tool", "", "toolu_a", "get_weather"),
    ]
    assert roles(request)[-1] == ("user", "Thanks")


@pytest.mark.parametrize(("block", "kind"), [(IMAGE, "image"), (PDF, "document"), ({"type": "document", "source": {"type": "file", "file_id": "f"}}, "document")])
def test_an_image_or_document_in_the_latest_turn_is_a_400(block: dict[str, Any], kind: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        convert(messages=[{"role": "user", "content": "old"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "What is this?"}, block]}])
    assert f"this model cannot read {kind}s" in info.value.message and "text-only" in info.value.message
    assert info.value.param == "messages.2.content.1" and info.value.status == 400


def test_images_in_older_turns_and_in_tool_results_become_placeholders() -> None:
    request = convert(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, IMAGE, PDF]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a.png"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}, {"type": "text", "text": "Describe it"}]},
        ]
    )
    assert roles(request)[0] == ("user", "Look:\n\n[image omitted: this model cannot read it]\n\n[document omitted: this model cannot read it]")
    assert request.messages[2].content == "[image omitted: this model cannot read it]"


def test_plain_text_documents_are_read_even_in_the_latest_turn() -> None:
    request = convert(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."}},
                    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "Grass is blue."}]}},
                    {"type": "text", "text": "Summarize."},
                ],
            }
        ]
    )
    assert roles(request) == [("user", "The sky is green.\n\nGrass is blue.\n\nSummarize.")]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ("auto", True)),
        ({"type": "auto"}, ("auto", True)),
        ({"type": "any"}, ("any", True)),
        ({"type": "none"}, ("none", True)),
        ({"type": "tool", "name": "get_weather"}, ("get_weather", True)),
        ({"type": "auto", "disable_parallel_tool_use": True}, ("auto", False)),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, ("get_weather", False)),
    ],
)
def test_tool_choice(choice: dict[str, Any] | None, expected: tuple[str, bool]) -> None:
    request = convert(tools=[TOOL], tool_choice=choice, messages=[{"role": "user", "content": "x"}])
    assert (request.tool_choice, request.parallel_tool_calls) == expected


@pytest.mark.parametrize("choice", [{"type": "tool"}, {"type": "tool", "name": "nope"}])
def test_a_named_tool_must_be_one_of_the_tools(choice: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        convert(tools=[TOOL], tool_choice=choice, messages=[{"role": "user", "content": "x"}])
    assert info.value.param == "tool_choice.name"


def test_server_tools_are_left_out() -> None:
    request = convert(tools=[TOOL, {"type": "web_search_20250305", "name": "web_search"}, {"type": "custom", **TOOL, "name": "c"}], messages=[{"role": "user", "content": "x"}])
    assert [t.name for t in request.tools] == ["get_weather", "c"]
    assert request.tools[0].parameters == {"type": "object"}


@pytest.mark.parametrize(("thinking", "on"), [(None, False), ({"type": "disabled"}, False), ({"type": "enabled", "budget_tokens": 2048}, True), ({"type": "adaptive"}, True)])
def test_thinking(thinking: dict[str, Any] | None, on: bool) -> None:
    assert convert(thinking=thinking, messages=[{"role": "user", "content": "x"}]).thinking is on


def test_sampling_defaults_and_explicit_values() -> None:
    default = convert(messages=[{"role": "user", "content": "x"}]).sampling
    assert (default.temperature, default.top_p, default.top_k) == (1.0, 1.0, 0)
    explicit = convert(temperature=0, top_p=0.5, top_k=20, stop_sequences=["END"], messages=[{"role": "user", "content": "x"}])
    assert (explicit.sampling.temperature, explicit.sampling.top_p, explicit.sampling.top_k) == (0.0, 0.5, 20)
    assert explicit.sampling.greedy and explicit.stop == ["END"]


def test_a_conversation_needs_a_user_or_assistant_turn() -> None:
    with pytest.raises(InvalidRequestError, match="at least one user message"):
        convert(system="s", messages=[])
    with pytest.raises(InvalidRequestError):
        convert(messages=[{"role": "system", "content": "only a system turn"}])


def test_count_request_is_the_same_prompt_without_max_tokens() -> None:
    body = {"model": "m", "system": "S", "tools": [TOOL], "tool_choice": {"type": "any"}, "thinking": {"type": "adaptive"}, "messages": [{"role": "user", "content": "x"}]}
    counted = count_request(wire.CountTokensRequest.model_validate(body))
    created = to_chat_request(wire.MessagesRequest.model_validate({**body, "max_tokens": 999}))
    assert counted.model_dump(exclude={"max_tokens", "request_id"}) == created.model_dump(exclude={"max_tokens", "request_id"})
