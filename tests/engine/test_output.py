"""OutputParser: text, stop sequences, reasoning and tool calls, fed in every possible split.

Decoded text reaches the parser a few characters at a time and a marker can straddle any
boundary, so most cases here are run for every chunk size from one character up: the events
must not depend on how the text was cut, and nothing a client must not see (part of a stop
sequence, part of a tool-call marker, hidden reasoning) may ever be emitted.
"""

from __future__ import annotations

from typing import Any

import pytest
from mlx_lm.tool_parsers import json_tools, mistral, pythonic, qwen3_coder

from pensieve.engine.output import Markers, OutputParser
from pensieve.models import TextDelta, ThinkingDelta, ToolCallEvent

GENERIC = Markers(tool_start="<tool_call>", tool_end="</tool_call>")
THINK = Markers(think_start="<think>", think_end="</think>", tool_start="<tool_call>", tool_end="</tool_call>")


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(text: str, size: int, **kwargs: Any) -> tuple[list[Any], OutputParser, list[str]]:
    """Feed `text` in `size`-character pieces; return the events, the parser and the text
    shown after each piece (to check that what was shown only ever grows by safe text)."""
    parser = OutputParser(**kwargs)
    events: list[Any] = []
    shown: list[str] = []
    for piece in chunks(text, size):
        events.extend(parser.feed(piece))
        shown.append("".join(e.text for e in events if isinstance(e, TextDelta)))
    events.extend(parser.finish())
    return events, parser, shown


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def thinking_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, ThinkingDelta))


def calls_of(events: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.call.name, e.call.arguments) for e in events if isinstance(e, ToolCallEvent)]


def sizes(text: str) -> range:
    return range(1, len(text) + 1)


def test_plain_text_is_passed_through_whatever_the_split() -> None:
    text = "Hello, world! <b>not a marker</b> 3 < 4"
    for size in sizes(text):
        events, parser, _ = run(text, size, stop=["STOP"], markers=GENERIC, parse_tools=True)
        assert text_of(events) == text
        assert parser.stop_sequence is None and not parser.stopped and parser.tool_calls == 0


def test_stop_sequence_across_chunk_boundaries_is_never_shown() -> None:
    text = "The answer is 42.\n\nUser: and then more text"
    for size in sizes(text):
        events, parser, shown = run(text, size, stop=["\n\nUser:"])
        assert text_of(events) == "The answer is 42."
        assert parser.stop_sequence == "\n\nUser:" and parser.stopped
        # What was shown at every moment is a prefix of the answer: no partial "\n\nUs".
        assert all("The answer is 42.".startswith(s) for s in shown)


def test_after_a_stop_nothing_more_is_emitted() -> None:
    parser = OutputParser(stop=["END"])
    assert text_of(parser.feed("a END b")) == "a "
    assert parser.feed("more text") == [] and parser.finish() == []


def test_earliest_of_several_stop_sequences_wins() -> None:
    for size in (1, 2, 5, 100):
        events, parser, _ = run("one two three", size, stop=["three", "two", "nothing"])
        assert text_of(events) == "one " and parser.stop_sequence == "two"


def test_a_near_miss_is_released_once_it_cannot_be_a_stop_sequence() -> None:
    parser = OutputParser(stop=["END"])
    assert text_of(parser.feed("x EN")) == "x "  # "EN" could still become "END": held back
    assert text_of(parser.feed("D")) == "" and parser.stopped
    parser = OutputParser(stop=["END"])
    assert text_of(parser.feed("x EN") + parser.feed("Z")) == "x ENZ"
    parser = OutputParser(stop=["END"])
    assert text_of(parser.feed("x EN") + parser.finish()) == "x EN"  # end of output: flushed


def test_empty_stop_strings_are_ignored() -> None:
    events, parser, _ = run("abc", 1, stop=["", "zz"])
    assert text_of(events) == "abc" and parser.stop_sequence is None


def test_reasoning_becomes_thinking_when_asked_and_is_hidden_otherwise() -> None:
    text = "<think>The user wants a number.\nPick 7.</think>\n\nSeven."
    for size in sizes(text):
        events, _, shown = run(text, size, markers=THINK, show_thinking=True)
        assert thinking_of(events) == "The user wants a number.\nPick 7."
        assert text_of(events) == "Seven."
        assert [type(e) for e in events if not isinstance(e, ThinkingDelta)] == [TextDelta] * len(
            [e for e in events if isinstance(e, TextDelta)]
        )
        hidden, _, shown = run(text, size, markers=THINK, show_thinking=False)
        assert thinking_of(hidden) == "" and text_of(hidden) == "Seven."
        assert all("<" not in s and "Pick" not in s for s in shown)


def test_prompt_that_opens_the_think_block_starts_in_reasoning() -> None:
    # DeepSeek-R1 distills' templates end the prompt with "<think>\n": output starts inside it.
    text = "Let me think.</think>Paris."
    for size in (1, 3, len(text)):
        events, _, _ = run(text, size, markers=THINK, show_thinking=True, start_in_thinking=True)
        assert thinking_of(events) == "Let me think." and text_of(events) == "Paris."
        hidden, _, _ = run(text, size, markers=THINK, start_in_thinking=True)
        assert text_of(hidden) == "Paris." and thinking_of(hidden) == ""


def test_unclosed_reasoning_is_flushed_as_thinking_at_the_end() -> None:
    events, _, _ = run("<think>still thinking when max_tokens hit", 4, markers=THINK, show_thinking=True)
    assert thinking_of(events) == "still thinking when max_tokens hit" and text_of(events) == ""


def test_stop_sequences_do_not_apply_inside_reasoning() -> None:
    events, parser, _ = run("<think>a STOP b</think>c STOP d", 2, markers=THINK, show_thinking=True, stop=["STOP"])
    assert thinking_of(events) == "a STOP b" and text_of(events) == "c " and parser.stop_sequence == "STOP"


def test_generic_tool_call_after_text() -> None:
    text = 'Let me check. \n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for size in sizes(text):
        events, parser, shown = run(text, size, markers=GENERIC, parse_tools=True)
        assert text_of(events) == "Let me check."
        assert calls_of(events) == [("get_weather", {"city": "Paris"})]
        assert parser.tool_calls == 1
        assert all("<" not in s and "{" not in s for s in shown)  # no half marker, no call text
        (call,) = [e.call for e in events if isinstance(e, ToolCallEvent)]
        assert call.id.startswith("toolu_") and len(call.id) > len("toolu_") + 8


def test_several_calls_in_one_turn_become_several_events_in_order() -> None:
    text = (
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>\n\n'
        "Done."
    )
    for size in sizes(text):
        events, parser, _ = run(text, size, markers=GENERIC, parse_tools=True)
        assert calls_of(events) == [("a", {"x": 1}), ("b", {})]
        assert parser.tool_calls == 2
        assert text_of(events) == "Done."  # whitespace between and after the calls dropped
        ids = {e.call.id for e in events if isinstance(e, ToolCallEvent)}
        assert len(ids) == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"y": [1]}}]', [("a", {}), ("b", {"y": [1]})]),
        ('{"name": "a", "arguments": "{\\"q\\": \\"s\\"}"}', [("a", {"q": "s"})]),  # arguments as a JSON string
        ('{"name": "a", "arguments": "not json"}', [("a", {"_raw": "not json"})]),
        ('{"name": "a", "parameters": {"k": true}}', [("a", {"k": True})]),  # Llama 3's key
        ('{"type": "function", "function": {"name": "a", "arguments": {"k": 1}}}', [("a", {"k": 1})]),
        ('{"name": "a"}', [("a", {})]),
    ],
)
def test_call_json_variants(body: str, expected: list[tuple[str, dict[str, Any]]]) -> None:
    events, _, _ = run(f"<tool_call>{body}</tool_call>", 3, markers=GENERIC, parse_tools=True)
    assert calls_of(events) == expected


@pytest.mark.parametrize("body", ["this is not JSON", '{"arguments": {}}', "[1, 2]", '{"name": 5}'])
def test_unparseable_call_text_is_shown_as_written(body: str) -> None:
    text = f"Sure.<tool_call>{body}</tool_call> after"
    for size in (1, 4, len(text)):
        events, parser, _ = run(text, size, markers=GENERIC, parse_tools=True)
        assert calls_of(events) == [] and parser.tool_calls == 0
        assert text_of(events) == f"Sure.<tool_call>{body}</tool_call>after"


def test_unterminated_call_is_parsed_at_the_end_or_shown_without_an_invented_end_marker() -> None:
    events, parser, _ = run('<tool_call>{"name": "a", "arguments": {"x": 2}}', 5, markers=GENERIC, parse_tools=True)
    assert calls_of(events) == [("a", {"x": 2})] and parser.tool_calls == 1
    events, parser, _ = run('<tool_call>{"name": "a", "argu', 5, markers=GENERIC, parse_tools=True)
    assert calls_of(events) == [] and text_of(events) == '<tool_call>{"name": "a", "argu'


def test_tool_markers_are_plain_text_when_tools_are_off() -> None:
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    events, parser, _ = run(text, 2, markers=GENERIC, parse_tools=False)
    assert text_of(events) == text and parser.tool_calls == 0


def test_stop_sequence_inside_a_call_does_not_cut_it() -> None:
    text = '<tool_call>{"name": "a", "arguments": {"s": "}"}}</tool_call>tail}more'
    events, parser, _ = run(text, 1, markers=GENERIC, parse_tools=True, stop=["}"])
    assert calls_of(events) == [("a", {"s": "}"})]
    assert text_of(events) == "tail" and parser.stop_sequence == "}"


def test_reasoning_then_tool_call() -> None:
    text = '<think>I need the weather.</think>\n<tool_call>{"name": "w", "arguments": {}}</tool_call>'
    for size in (1, 2, 7, len(text)):
        events, _, _ = run(text, size, markers=THINK, parse_tools=True, show_thinking=True)
        assert thinking_of(events) == "I need the weather."
        assert calls_of(events) == [("w", {})] and text_of(events) == ""


def test_a_family_parser_is_tried_first_and_generic_json_is_the_fallback() -> None:
    seen: list[tuple[str, Any]] = []

    def family(raw: str, tools: Any) -> dict[str, Any]:
        seen.append((raw, tools))
        if raw.startswith("fn:"):
            return {"name": raw[3:].strip(), "arguments": {"via": "family"}}
        raise ValueError("not mine")

    tools = [{"type": "function", "function": {"name": "x", "parameters": {}}}]
    events, _, _ = run("<tool_call>fn: x</tool_call>", 2, markers=GENERIC, parse_tools=True, tool_parser=family, tools=tools)
    assert calls_of(events) == [("x", {"via": "family"})] and seen[0] == ("fn: x", tools)
    events, _, _ = run('<tool_call>{"name": "y", "arguments": {}}</tool_call>', 2, markers=GENERIC, parse_tools=True, tool_parser=family)
    assert calls_of(events) == [("y", {})]


def test_mlx_lm_json_parser() -> None:
    markers = Markers(tool_start=json_tools.tool_call_start, tool_end=json_tools.tool_call_end)
    text = 'ok <tool_call>\n{"name": "f", "arguments": {"a": "b"}}\n</tool_call>'
    events, _, _ = run(text, 3, markers=markers, parse_tools=True, tool_parser=json_tools.parse_tool_call)
    assert calls_of(events) == [("f", {"a": "b"})] and text_of(events) == "ok"


def test_mlx_lm_qwen3_coder_parser_uses_the_tool_schema() -> None:
    markers = Markers(tool_start=qwen3_coder.tool_call_start, tool_end=qwen3_coder.tool_call_end)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "Bash",
                "parameters": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}}},
            },
        }
    ]
    text = "<tool_call>\n<function=Bash>\n<parameter=command>\nls -la\n</parameter>\n<parameter=timeout>\n30\n</parameter>\n</function>\n</tool_call>"
    for size in (1, 5, len(text)):
        events, _, _ = run(text, size, markers=markers, parse_tools=True, tool_parser=qwen3_coder.parse_tool_call, tools=tools)
        assert calls_of(events) == [("Bash", {"command": "ls -la", "timeout": 30})]


def test_mlx_lm_pythonic_parser_with_two_calls_in_one_block() -> None:
    markers = Markers(tool_start=pythonic.tool_call_start, tool_end=pythonic.tool_call_end)
    text = '<|tool_call_start|>[search(query="mlx"), open(id=3)]<|tool_call_end|>'
    for size in (1, 4, len(text)):
        events, parser, _ = run(text, size, markers=markers, parse_tools=True, tool_parser=pythonic.parse_tool_call)
        assert calls_of(events) == [("search", {"query": "mlx"}), ("open", {"id": 3})] and parser.tool_calls == 2


def test_mlx_lm_mistral_parser_without_an_end_marker_runs_to_the_end_of_output() -> None:
    markers = Markers(tool_start=mistral.tool_call_start, tool_end=mistral.tool_call_end)
    text = 'Checking.[TOOL_CALLS][{"name": "f", "arguments": {"n": 1}}, {"name": "g", "arguments": {}}]'
    for size in (1, 6, len(text)):
        events, parser, shown = run(text, size, markers=markers, parse_tools=True, tool_parser=mistral.parse_tool_call)
        assert calls_of(events) == [("f", {"n": 1}), ("g", {})] and text_of(events) == "Checking."
        assert all("[" not in s for s in shown)
