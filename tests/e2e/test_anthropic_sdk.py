"""The Messages API through the official `anthropic` SDK, against the real server on the tiny model.

The tiny model has random weights, so where a test needs particular output (a tool call, a stop
sequence, reasoning) it forces the sampled tokens through the engine's public `sampler_for`
hook: the forward passes, detokenization, parsing and SSE encoding stay real, only the choice
of each next token is fixed. `forced_output` is shared with the Claude Code tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import mlx.core as mx
import pytest

from pensieve.models import ChatRequest
from tests.support import API_KEY, ServerThread

Chooser = Callable[[ChatRequest], str | None]


@contextlib.contextmanager
def forced_output(server: ServerThread, choose: Chooser) -> Iterator[list[ChatRequest]]:
    """Make the default model emit `choose(request)` exactly (then end of sequence).

    Requests for which `choose` returns None keep their ordinary sampler. Yields the list of
    neutral requests the engine received, in order, so a test can check what the server parsed.
    """
    engine = server.call(server.pool.engine(None))
    original = engine.sampler_for
    eos = min(engine.tokenizer.eos_token_ids)
    seen: list[ChatRequest] = []

    def sampler_for(request: ChatRequest) -> Any:
        seen.append(request)
        text = choose(request)
        if text is None:
            return original(request)
        tokens = iter(engine.tokenizer.encode(text, add_special_tokens=False))

        def sample(logprobs: mx.array) -> mx.array:
            return mx.array([next(tokens, eos)] * logprobs.shape[0], dtype=mx.uint32)

        return sample

    engine.sampler_for = sampler_for
    try:
        yield seen
    finally:
        engine.sampler_for = original


@contextlib.contextmanager
def reasoning_markers(server: ServerThread) -> Iterator[None]:
    """Give the tiny model's tokenizer `<think>`/`</think>` markers, as Qwen3's has.

    mlx-lm's tokenizer wrapper finds them in the vocabulary; the embedded vocabulary has none,
    so they are set on the loaded tokenizer for the test and removed afterwards.
    """
    tokenizer = server.call(server.pool.engine(None)).tokenizer
    saved = tokenizer._think_start, tokenizer._think_end
    tokenizer._think_start, tokenizer._think_end = "<think>", "</think>"
    try:
        yield
    finally:
        tokenizer._think_start, tokenizer._think_end = saved


def always(text: str) -> Chooser:
    return lambda request: text


def client_for(server: ServerThread, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, **kwargs)


@pytest.fixture
def client(tiny_server: ServerThread) -> anthropic.Anthropic:
    return client_for(tiny_server)


USER = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_create_returns_a_message_in_anthropic_shape(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=8, messages=USER)
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_") and message._request_id == raw.headers["request-id"]
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-4-6"  # the name the client sent, echoed
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert all(block.type == "text" for block in message.content)
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens > 5 and 0 < usage.output_tokens <= 8
    assert usage.cache_creation_input_tokens == 0


def test_temperature_zero_is_greedy_and_top_k_one_or_tiny_top_p_agree(client: anthropic.Anthropic) -> None:
    def text(**sampling: Any) -> str:
        message = client.messages.create(model="m", max_tokens=12, messages=USER, extra_body=sampling)
        return "".join(b.text for b in message.content if b.type == "text")

    greedy = text(temperature=0)
    assert greedy == text(temperature=0)
    assert text(temperature=1, top_k=1) == greedy  # only the most likely token survives top_k=1
    assert text(temperature=1, top_p=1e-6) == greedy  # ... and a vanishing nucleus


def test_stream_sends_the_exact_event_sequence(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    answer = "Hello from the tiny model."
    with forced_output(tiny_server, always(answer)):
        raw = client.messages.with_raw_response.create(model="m", max_tokens=50, messages=USER, stream=True)
        events = list(raw.parse())
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["request-id"]
    types = [e.type for e in events]
    deltas = types.count("content_block_delta")
    assert deltas >= 2
    assert types == [  # the SDK drops `ping`; test_anthropic_http checks the raw stream with it
        "message_start", "content_block_start", *["content_block_delta"] * deltas,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens > 5 and start.usage.output_tokens == 0
    assert events[1].index == 0 and events[1].content_block.type == "text" and events[1].content_block.text == ""
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == answer
    assert all(e.index == 0 and e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")
    end = events[-2]
    assert end.delta.stop_reason == "end_turn" and end.delta.stop_sequence is None
    assert end.usage.output_tokens == len(tiny_server.call(tiny_server.pool.engine(None)).tokenizer.encode(answer))


def test_stream_helper_accumulates_the_final_message(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    with forced_output(tiny_server, always("Streamed, then gathered.")):
        with client.messages.stream(model="m", max_tokens=50, messages=USER) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
    assert "".join(pieces) == "Streamed, then gathered."
    assert final.content[0].text == "Streamed, then gathered." and final.stop_reason == "end_turn"


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def weather_script(request: ChatRequest) -> str:
    """First turn: call the tool. After a tool result: an answer that quotes it."""
    last = request.messages[-1]
    return f"The tool said: {last.content}" if last.role == "tool" else "Let me look that up." + CALL


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_then_tool_result_round_trip(tiny_server: ServerThread, client: anthropic.Anthropic, stream: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    with forced_output(tiny_server, weather_script) as seen:
        if stream:
            with client.messages.stream(model="m", max_tokens=100, messages=messages, tools=[WEATHER_TOOL]) as s:
                events = list(s)
                first = s.get_final_message()
            kinds = [(e.type, getattr(getattr(e, "content_block", None), "type", None)) for e in events]
            assert ("content_block_start", "text") in kinds and ("content_block_start", "tool_use") in kinds
            json_deltas = [e.delta for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
            assert "".join(d.partial_json for d in json_deltas) == '{"city": "Paris"}'
        else:
            first = client.messages.create(model="m", max_tokens=100, messages=messages, tools=[WEATHER_TOOL])
        assert first.stop_reason == "tool_use"
        assert [b.type for b in first.content] == ["text", "tool_use"]
        assert first.content[0].text == "Let me look that up."
        call = first.content[1]
        assert call.id.startswith("toolu_") and call.name == "get_weather" and call.input == {"city": "Paris"}

        messages += [
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]},
        ]
        second = client.messages.create(model="m", max_tokens=100, messages=messages, tools=[WEATHER_TOOL])
    assert second.stop_reason == "end_turn" and second.content[0].text == "The tool said: 18 C, sunny"
    # What the server understood of the second request, and the prompt it rendered from it.
    request = seen[-1]
    assert request.messages[-2].tool_calls[0].id == call.id and request.messages[-2].tool_calls[0].arguments == {"city": "Paris"}
    assert request.messages[-1].role == "tool" and request.messages[-1].tool_call_id == call.id
    prompt = tiny_server.call(tiny_server.pool.engine(None)).prepare(request).text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in prompt


def test_several_tool_calls_in_one_turn_and_disable_parallel_tool_use(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    two = CALL + "\n" + CALL.replace("Paris", "Oslo")
    with forced_output(tiny_server, always(two)):
        both = client.messages.create(model="m", max_tokens=100, messages=USER, tools=[WEATHER_TOOL])
        one = client.messages.create(
            model="m", max_tokens=100, messages=USER, tools=[WEATHER_TOOL],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        )  # fmt: skip
    assert [b.input["city"] for b in both.content] == ["Paris", "Oslo"] and both.stop_reason == "tool_use"
    assert len({b.id for b in both.content}) == 2
    assert [b.input["city"] for b in one.content] == ["Paris"] and one.stop_reason == "tool_use"


def test_tool_choice_none_leaves_tool_markup_as_text(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    with forced_output(tiny_server, always(CALL)) as seen:
        message = client.messages.create(
            model="m", max_tokens=100, messages=USER, tools=[WEATHER_TOOL], tool_choice={"type": "none"}
        )
    assert message.stop_reason == "end_turn" and message.content[0].text == CALL
    assert "get_weather" not in tiny_server.call(tiny_server.pool.engine(None)).prepare(seen[-1]).text


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_ends_the_turn_and_never_shows(tiny_server: ServerThread, client: anthropic.Anthropic, stream: bool) -> None:
    with forced_output(tiny_server, always("One, two, three. END OF LIST and then more")):
        kwargs: dict[str, Any] = dict(model="m", max_tokens=100, messages=USER, stop_sequences=["never", "END OF"])
        if stream:
            with client.messages.stream(**kwargs) as s:
                pieces = list(s.text_stream)
                message = s.get_final_message()
            assert all("END" not in p and not p.endswith(("E", "EN")) for p in pieces)
        else:
            message = client.messages.create(**kwargs)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "END OF"
    assert message.content[0].text == "One, two, three. "


def test_count_tokens_is_the_exact_input_of_the_same_request(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = dict(
        model="claude-sonnet-4-6",
        system=[{"type": "text", "text": "You count things.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "How many letters are in 'pensieve'? (count_tokens test)"}],
        tools=[WEATHER_TOOL],
    )
    counted = client.messages.count_tokens(**request).input_tokens
    usage = client.messages.create(max_tokens=3, **request).usage
    assert counted == usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    without_tools = client.messages.count_tokens(**{**request, "tools": []}).input_tokens
    assert without_tools < counted  # the tool definitions are part of the prompt


def test_models_list_and_retrieve(tiny_server: ServerThread, client: anthropic.Anthropic) -> None:
    served = tiny_server.pool.default_name
    page = client.models.list()
    assert served in [m.id for m in page.data] and page.has_more is False
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    model = client.models.retrieve(served)
    assert model.type == "model" and model.id == served and model.display_name and model.created_at
    assert client.models.retrieve("claude-sonnet-4-6").id == served  # any name maps to the default


@pytest.mark.parametrize(("thinking", "shown"), [({"type": "enabled", "budget_tokens": 1024}, True), ({"type": "adaptive"}, True), ({"type": "disabled"}, False), (None, False)])
def test_reasoning_is_a_thinking_block_only_when_thinking_is_on(
    tiny_server: ServerThread, client: anthropic.Anthropic, thinking: dict[str, Any] | None, shown: bool
) -> None:
    extra = {"thinking": thinking} if thinking else {}
    with reasoning_markers(tiny_server), forced_output(tiny_server, always("<think>Paris, surely.</think>\n\nParis.")):
        message = client.messages.create(model="m", max_tokens=60, messages=USER, **extra)
        with client.messages.stream(model="m", max_tokens=60, messages=USER, **extra) as s:
            events = list(s)
    if shown:
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Paris, surely." and message.content[1].text == "Paris."
        deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
        assert "thinking_delta" in deltas and "signature_delta" in deltas
        assert deltas.index("signature_delta") < deltas.index("text_delta")
    else:
        assert [(b.type, b.text) for b in message.content] == [("text", "Paris.")]
        assert all(e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")


def test_beta_client_with_beta_names_and_claude_code_shaped_input(client: anthropic.Anthropic) -> None:
    """What Claude Code sends, through the SDK's beta client (`?beta=true`, `anthropic-beta`)."""
    request: dict[str, Any] = dict(
        model="claude-opus-4-8",
        betas=["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0; cch=abc;"},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Reminder: be brief."},
        ],
        tools=[WEATHER_TOOL],
        thinking={"type": "adaptive"},
        extra_body={"context_management": {"edits": []}, "output_config": {"effort": "high"}},
    )
    message = client.beta.messages.create(max_tokens=3, metadata={"user_id": "device-1"}, **request)

    def count(**changes: Any) -> int:
        return client.beta.messages.count_tokens(**{**request, **changes}).input_tokens

    usage = message.usage
    assert message.type == "message" and count() == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert count(messages=request["messages"][:1]) < count()  # the mid-conversation system turn counts
    assert count(system=request["system"][1:]) == count()  # the billing line never reaches the prompt


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def test_an_image_in_the_latest_turn_is_refused_and_an_older_one_summarized(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="m", max_tokens=3, messages=[{"role": "user", "content": [IMAGE, {"type": "text", "text": "What is this?"}]}])
    assert "this model cannot read images" in info.value.message
    older = [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "I cannot see it."},
        {"role": "user", "content": "Then tell me a joke."},
    ]
    assert client.messages.create(model="m", max_tokens=3, messages=older).usage.output_tokens >= 1
