"""The OpenAI API end to end with the official `openai` SDK, against the real app on the tiny model.

The tiny model's weights are random, so where a test needs particular output (tool calls, stop
sequences) it replaces the engine's sampler factory to emit chosen tokens; every forward pass,
detokenization, parse and wire encoding stays real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import openai
import pytest

from pensieve.models import ChatRequest
from tests.support import API_KEY, ServerThread

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS_CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'
TOKYO_CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Tokyo"}}</tool_call>'
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(tiny_server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key=API_KEY, max_retries=0)


@contextmanager
def forced(server: ServerThread, text: str, fail_after: int | None = None) -> Iterator[list[ChatRequest]]:
    """Make every request emit the tokens of `text`, then end of sequence; yields the requests
    the engine received. With `fail_after`, the sampler raises after that many tokens."""
    engine = server.call(server.pool.engine(None))
    tokens = engine.tokenizer.encode(text, add_special_tokens=False)
    eos = min(engine.tokenizer.eos_token_ids)
    seen: list[ChatRequest] = []

    def sampler_for(request: ChatRequest) -> Any:
        seen.append(request)
        script = iter(tokens)
        count = 0

        def sample(logprobs: mx.array) -> mx.array:
            nonlocal count
            count += 1
            if fail_after is not None and count > fail_after:
                raise RuntimeError("sampler exploded")
            return mx.array([next(script, eos)] * logprobs.shape[0])

        return sample

    original = engine.sampler_for
    engine.sampler_for = sampler_for
    try:
        yield seen
    finally:
        engine.sampler_for = original


def test_create_has_openai_shape(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=6, temperature=0)
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    assert response.model == "gpt-4o" and response.created > 0
    (choice,) = response.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and choice.message.content
    usage = response.usage
    assert usage.completion_tokens == 6 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_create_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="m", messages=HI, max_completion_tokens=5, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=HI, max_completion_tokens=5, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(client.chat.completions.create(model="m", messages=HI, max_tokens=3, stream=True))
    assert plain[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in plain)


def test_tool_call_round_trip(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with forced(tiny_server, PARIS_CALL) as seen:
        response = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL], max_tokens=60)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert [t.name for t in seen[0].tools] == ["get_weather"] and seen[0].tool_choice == "auto"

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
    ]
    with forced(tiny_server, "It is sunny in Paris.") as seen:
        answer = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL], max_tokens=60)
    assert answer.choices[0].message.content == "It is sunny in Paris."
    assert answer.choices[0].finish_reason == "stop" and answer.usage.prompt_tokens > response.usage.prompt_tokens
    assistant, tool = seen[0].messages[-2:]
    assert assistant.tool_calls[0].id == call.id and assistant.tool_calls[0].arguments == {"city": "Paris"}
    assert (tool.role, tool.name, tool.tool_call_id, tool.content) == ("tool", "get_weather", call.id, "sunny, 24 C")


def test_streamed_tool_calls_have_stable_indices(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with forced(tiny_server, f"{PARIS_CALL}\n{TOKYO_CALL}") as seen:
        chunks = list(
            client.chat.completions.create(
                model="m", messages=HI, tools=[WEATHER_TOOL], tool_choice=choice, max_tokens=80, stream=True
            )
        )
    assert seen[0].tool_choice == "get_weather"
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.index not in calls:  # the first delta of a call names it
                assert delta.id.startswith("call_") and delta.type == "function" and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert sorted(calls) == [0, 1] and calls[0]["id"] != calls[1]["id"]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)


def test_stop_sequences(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    with forced(tiny_server, "Hello world. Goodbye world."):
        listed = client.chat.completions.create(model="m", messages=HI, stop=["zzz", "world"], max_tokens=30)
        single = client.chat.completions.create(model="m", messages=HI, stop=" Goodbye", max_tokens=30)
        streamed = list(client.chat.completions.create(model="m", messages=HI, stop="world", max_tokens=30, stream=True))
        text = client.completions.create(model="m", prompt="Say hello", stop=["."], max_tokens=30)
    assert listed.choices[0].message.content == "Hello " and listed.choices[0].finish_reason == "stop"
    assert single.choices[0].message.content == "Hello world."
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Hello "
    assert streamed[-1].choices[0].finish_reason == "stop"
    assert text.choices[0].text == "Hello world" and text.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        response = client.chat.completions.create(model="m", messages=HI, temperature=1.0, seed=seed, max_tokens=12)
        return response.choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(-7) == sample(-7)  # int64 seeds, negative ones included
    assert sample(7) != sample(8)


def test_completions_use_the_raw_prompt(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    engine = tiny_server.call(tiny_server.pool.engine(None))
    prompt = "Once upon a time"
    response = client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.usage.prompt_tokens == len(engine.tokenizer.encode(prompt, add_special_tokens=False))
    assert response.usage.completion_tokens == 4 and response.choices[0].finish_reason == "length"
    generated = response.choices[0].text

    echoed = client.completions.create(model="m", prompt=[prompt], max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + generated

    chunks = list(
        client.completions.create(
            model="m", prompt=prompt, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == generated
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4


def test_models_via_sdk(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    models = client.models.list()
    default = tiny_server.pool.default_name
    assert default in [m.id for m in models.data]
    assert all(m.object == "model" and m.owned_by == "pensieve" for m in models.data)
    assert client.models.retrieve(default).id == default
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.param == "model"


def test_wrong_key_is_401_in_openai_shape(tiny_server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m", messages=HI)
    assert info.value.status_code == 401 and info.value.type == "authentication_error"
    assert "invalid API key" in info.value.message


def test_unknown_route_is_404_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.post("/chat/complete", body={}, cast_to=object)
    assert info.value.type == "not_found_error" and "/v1/chat/complete" in info.value.message


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [
        ({"n": 2}, "n", "one choice per request"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "propertyNames": {"pattern": "^a"}}}}},
            "response_format.json_schema.schema",
            "propertyNames",
        ),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs", "not supported"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"max_tokens": "many"}, "max_tokens", "valid integer"),
        ({"stop": 5}, "stop", "a string or a list of strings"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "a string or a list"),
        ({"tool_choice": "sometimes"}, "tool_choice.type", "'required'"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type", "'function'"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'developer'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id", "required"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name", "not in `tools`"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
            "messages.0.content.1",
            "cannot read images",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_param(client: openai.OpenAI, extra: dict[str, Any], param: str, needle: str) -> None:
    body = {"model": "m", "messages": HI, "max_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400 and info.value.type == "invalid_request_error"
    assert info.value.param == param and needle in info.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"), ({"n": 3}, "n"), ({"suffix": "end"}, "suffix")],
)
def test_bad_completion_requests_are_400(client: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/completions", body={"model": "m", "prompt": "hi", **extra}, cast_to=object)
    assert info.value.param == param


def test_lenient_where_it_can_be(client: openai.OpenAI) -> None:
    """Unknown fields, developer messages, content parts and an image in an older turn all work."""
    messages: list[Any] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": "I cannot see images."},
        {"role": "user", "content": [{"type": "text", "text": "Then say hi."}]},
    ]
    response = client.chat.completions.create(
        model="m", messages=messages, max_tokens=2, response_format={"type": "text"}, logprobs=False,
        extra_body={"store": True, "some_future_field": {"x": 1}}, user="u1", metadata={"k": "v"},
    )
    assert response.choices[0].finish_reason == "length"


def test_failure_mid_stream_is_an_openai_error(tiny_server: ServerThread, client: openai.OpenAI) -> None:
    with forced(tiny_server, "Hello world and more", fail_after=2):
        stream = client.chat.completions.create(model="m", messages=HI, max_tokens=20, stream=True)
        with pytest.raises(openai.APIError) as info:
            for _ in stream:
                pass
    assert "generation failed" in info.value.message and info.value.type == "server_error"
    after = client.chat.completions.create(model="m", messages=HI, max_tokens=2)
    assert after.choices[0].finish_reason == "length"
