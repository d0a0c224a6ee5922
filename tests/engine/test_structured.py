"""Constrained decoding through the real engine on the tiny random-weight model.

Random weights write garbage, which is the point: whatever the model prefers, the output must
follow the grammar, alone (the solo path), in a batch, and across the moves between the two
(sequences arrive and leave at different times, so constrained ones change paths mid-call).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mlx_lm import load

from pensieve.engine import Engine, EngineConfig
from pensieve.models import (
    ChatMessage,
    ChatRequest,
    Finished,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)

PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    ToolSpec(name="forecast", parameters=PLACE),
    ToolSpec(
        name="alarm",
        parameters={
            "type": "object",
            "properties": {"at": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}, "loud": {"type": "boolean"}},
            "required": ["at", "loud"],
            "additionalProperties": False,
        },
    ),
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Any:
    model, tokenizer = load(str(tiny_model_dir))
    engine = Engine(model, tokenizer, name="tiny", context_length=4096, config=EngineConfig(max_concurrent_requests=4))
    yield engine
    engine.close()


def chat(text: str, seed: int, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="tiny",
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=kwargs.pop("max_tokens", 160),
        sampling=SamplingParams(temperature=1.0, seed=seed) if seed >= 0 else SamplingParams(temperature=0.0),
        **kwargs,
    )


async def run(engine: Engine, request: ChatRequest, delay: float = 0.0) -> tuple[str, list[ToolCallEvent], Finished]:
    await asyncio.sleep(delay)
    text, calls, finished = "", [], None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallEvent):
            calls.append(event)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return text, calls, finished


def check_call(result: tuple[str, list[ToolCallEvent], Finished], allowed: list[ToolSpec]) -> None:
    text, calls, finished = result
    assert finished.stop_reason == "tool_use" and text == "" and len(calls) == 1, result
    (tool,) = [t for t in allowed if t.name == calls[0].call.name]
    jsonschema.validate(calls[0].call.arguments, tool.parameters)


def test_a_forced_call_validates_alone(engine: Engine) -> None:
    for seed in range(3):
        check_call(asyncio.run(run(engine, chat("Weather?", seed, tools=TOOLS, tool_choice="forecast"))), TOOLS[:1])


def test_constrained_and_free_sequences_share_a_batch(engine: Engine) -> None:
    """Arrivals are staggered so constrained sequences move solo -> batch -> solo mid-call, and a
    free greedy neighbour writes exactly what it writes alone."""
    free = chat("Tell me a story.", -1, max_tokens=40)
    alone, _, _ = asyncio.run(run(engine, free))

    async def together() -> list[Any]:
        return await asyncio.gather(
            run(engine, chat("Wake me.", 11, tools=TOOLS, tool_choice="any")),
            run(engine, free, delay=0.05),
            run(engine, chat("Weather?", 12, tools=TOOLS, tool_choice="any"), delay=0.1),
            run(engine, chat("A place.", 13, response_format=ResponseFormat(json_schema=PLACE)), delay=0.2),
        )

    first, neighbour, second, answer = asyncio.run(together())
    check_call(first, TOOLS)
    check_call(second, TOOLS)
    assert neighbour[0] == alone
    assert answer[2].stop_reason == "end_turn"
    jsonschema.validate(json.loads(answer[0]), PLACE)
    assert engine.grammars.compiles <= 3  # forecast, any (shared by two requests), the answer


def test_auto_leaves_text_free_and_calls_valid(engine: Engine) -> None:
    """A started call always parses; whether the random model starts one is its own business."""
    for seed in range(3):
        text, calls, finished = asyncio.run(run(engine, chat("Anything.", seed, tools=TOOLS, max_tokens=60)))
        for call in calls:
            (tool,) = [t for t in TOOLS if t.name == call.call.name]
            jsonschema.validate(call.call.arguments, tool.parameters)
        assert "<tool_call>" not in text  # no half-written call shown as text
