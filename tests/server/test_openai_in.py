"""OpenAI request translation: what reaches the engine for the shapes the end-to-end suite does
not send (older-turn images, allowed_tools, seeds at the int64 edges, argument strings)."""

from __future__ import annotations

from typing import Any

import pytest

from pensieve.models import openai as wire
from pensieve.server.openai_in import check_chat, to_chat_request, to_completion_request
from pensieve.server.requests import parse
from pensieve.utils import InvalidRequestError

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


def chat(**body: Any) -> Any:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = parse(wire.ChatCompletionRequest, body)
    check_chat(request)
    return to_chat_request(request, "req_1", context_length=4096)


def test_conversation_becomes_neutral_turns() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "rain"}]},
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "And now?"},
        ]
    )
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "assistant", "tool", "system", "user"]
    assert request.messages[1].content == "Look:\n\n[image omitted: this model cannot read it]"
    calls = request.messages[2].tool_calls
    assert [c.arguments for c in calls] == [{"city": "Oslo"}, {"_raw": "not json"}]
    tool = request.messages[3]
    assert (tool.name, tool.tool_call_id, tool.content) == ("get_weather", "call_1", "rain")
    assert request.max_tokens == 4096 and request.request_id == "req_1"


def test_max_completion_tokens_wins_and_sampling_defaults() -> None:
    request = chat(max_tokens=50, max_completion_tokens=20)
    assert request.max_tokens == 20
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.seed) == (1.0, 1.0, None)
    assert chat(temperature=0, top_p=0.5).sampling.greedy


@pytest.mark.parametrize(("seed", "expected"), [(0, 0), (-1, 2**64 - 1), (2**63 - 1, 2**63 - 1), (-(2**63), 2**63)])
def test_int64_seeds_map_onto_mlx_keys(seed: int, expected: int) -> None:
    assert chat(seed=seed, temperature=1).sampling.seed == expected


def test_seed_outside_int64_is_400() -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat(seed=2**64)
    assert info.value.param == "seed"


@pytest.mark.parametrize(
    ("tool_choice", "choice", "offered"),
    [
        (None, "auto", ["get_weather", "get_time"]),
        ("none", "none", ["get_weather", "get_time"]),
        ("required", "any", ["get_weather", "get_time"]),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time", ["get_weather", "get_time"]),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}},
            "any",
            ["get_time"],
        ),
    ],
)
def test_tool_choice(tool_choice: Any, choice: str, offered: list[str]) -> None:
    body: dict[str, Any] = {"tools": TOOLS, "parallel_tool_calls": False}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    request = chat(**body)
    assert request.tool_choice == choice and [t.name for t in request.tools] == offered
    assert request.parallel_tool_calls is False


def test_completion_prompt_is_raw_text() -> None:
    body = parse(wire.CompletionRequest, {"prompt": ["Once upon"], "stop": "\n", "seed": 3})
    request = to_completion_request(body, "req_2")
    assert request.raw_prompt == "Once upon" and request.messages == []
    assert request.max_tokens == 16 and request.stop == ["\n"] and request.sampling.seed == 3
