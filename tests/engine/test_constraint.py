"""Grammars and matchers on the embedded tokenizer: what each request shape allows, token by token,
the compile cache, the refusals, and the mask on MLX logits."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper

from pensieve.engine.constraint import Grammars, SequenceConstraint, apply_bitmask
from pensieve.engine.grammar import CallMarkers, plan
from pensieve.engine.prompt import GENERIC_TOOL_END, GENERIC_TOOL_START
from pensieve.modelmgr.embedded import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf, tokenizer_wrapper_from_gguf
from pensieve.models import ChatMessage, ChatRequest, ResponseFormat, ToolSpec
from pensieve.utils import InvalidRequestError

GENERIC = CallMarkers(GENERIC_TOOL_START, GENERIC_TOOL_END)
WEATHER = ToolSpec(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
CLOCK = ToolSpec(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})
ODD = {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
"""A keyword llguidance does not implement."""


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerWrapper:
    return tokenizer_wrapper_from_gguf(read_gguf(embedded_model_path())[1])


@pytest.fixture(scope="module")
def grammars(tokenizer: TokenizerWrapper) -> Grammars:
    return Grammars(tokenizer)


def chat(**kwargs: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content="x")], max_tokens=10, **kwargs)


def allowed(constraint: SequenceConstraint, vocab: int) -> np.ndarray:
    """The token ids the constraint allows next."""
    words = constraint.mask()
    if words is None:
        return np.arange(vocab)
    return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")[:vocab])


def walk(constraint: SequenceConstraint, tokenizer: TokenizerWrapper, text: str) -> list[int]:
    """Feed `text`'s tokens; returns how many tokens were allowed at each step."""
    vocab = len(tokenizer.get_vocab())
    counts = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        ok = allowed(constraint, vocab)
        assert token in ok, f"{tokenizer.decode([token])!r} refused after {counts}"
        counts.append(len(ok))
        constraint.advance(token)
    return counts


def test_a_forced_call_allows_only_the_named_tool_with_valid_arguments(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    grammar = plan(chat(tools=[WEATHER, CLOCK], tool_choice="get_weather"), GENERIC)
    assert grammar is not None and grammar.forced_call
    constraint = grammars.constraint(grammar.lark)
    eos = min(tokenizer.eos_token_ids)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'
    counts = walk(constraint, tokenizer, call)
    assert counts[0] < 5  # the call starts at once: no free text, no other tool
    assert constraint.accepts_eos and list(allowed(constraint, len(tokenizer.get_vocab()))) == [eos]
    other = grammars.constraint(grammar.lark)
    with pytest.raises(AssertionError, match="refused"):
        walk(other, tokenizer, '<tool_call>\n{"name": "get_time"')
    unit = grammars.constraint(grammar.lark)
    with pytest.raises(AssertionError, match="refused"):
        walk(unit, tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "k')


def test_any_accepts_each_tool(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    lark = plan(chat(tools=[WEATHER, CLOCK], tool_choice="any"), GENERIC).lark  # type: ignore[union-attr]
    walk(grammars.constraint(lark), tokenizer, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')
    walk(grammars.constraint(lark), tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}\n</tool_call>')


def test_auto_is_free_until_the_call_marker_then_only_calls(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    grammar = plan(chat(tools=[WEATHER]), GENERIC)
    assert grammar is not None and not grammar.forced_call
    constraint = grammars.constraint(grammar.lark)
    vocab = len(tokenizer.get_vocab())
    assert constraint.mask() is None  # free text costs no mask on the device
    walk(constraint, tokenizer, "Let me check. <tool_call>")
    assert len(allowed(constraint, vocab)) == 1  # the newline after the marker is forced
    walk(constraint, tokenizer, '\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>')
    assert constraint.accepts_eos
    walk(constraint, tokenizer, '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}\n</tool_call>')
    with pytest.raises(AssertionError, match="refused"):
        walk(constraint, tokenizer, " Done.")  # nothing after the calls
    single = grammars.constraint(plan(chat(tools=[WEATHER], parallel_tool_calls=False), GENERIC).lark)  # type: ignore[union-attr]
    walk(single, tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>')
    assert list(allowed(single, vocab)) == [min(tokenizer.eos_token_ids)]


def test_a_json_answer_follows_its_schema(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    constraint = grammars.constraint(plan(chat(response_format=ResponseFormat(json_schema=schema)), GENERIC).lark)  # type: ignore[union-attr]
    walk(constraint, tokenizer, '{"n": 42}')
    assert constraint.accepts_eos
    anything = grammars.constraint(plan(chat(response_format=ResponseFormat()), GENERIC).lark)  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="refused"):
        walk(anything, tokenizer, "Sure! {")


def test_nothing_to_constrain_is_none() -> None:
    assert plan(chat(), GENERIC) is None
    assert plan(chat(tools=[WEATHER], tool_choice="none"), GENERIC) is None
    assert plan(chat(tools=[WEATHER]), None) is None  # a family format the grammar cannot write: free


def test_grammars_are_compiled_once_per_schema(tokenizer: TokenizerWrapper) -> None:
    grammars = Grammars(tokenizer)
    lark = plan(chat(tools=[WEATHER, CLOCK]), GENERIC).lark  # type: ignore[union-attr]
    first, second = grammars.constraint(lark), grammars.constraint(lark)
    assert grammars.compiles == 1
    walk(first, tokenizer, "<tool_call>\n")
    walk(second, tokenizer, "plain words")  # copies do not share their position


@pytest.mark.parametrize(
    ("request_kwargs", "param", "needle"),
    [
        ({"response_format": ResponseFormat(json_schema=ODD, param="output_config.format.schema")}, "output_config.format.schema", "propertyNames"),
        ({"tools": [ToolSpec(name="odd", parameters=ODD)], "tool_choice": "odd"}, "tools", "tool 'odd'"),
        ({"tools": [ToolSpec(name="odd", parameters=ODD, strict=True)]}, "tools", "propertyNames"),
        ({"tools": [WEATHER, ToolSpec(name="odd", parameters=ODD)], "tool_choice": "any"}, "tools", "use tool_choice auto"),
    ],
)
def test_an_unenforceable_schema_is_a_400_naming_the_feature(request_kwargs: dict[str, Any], param: str, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan(chat(**request_kwargs), GENERIC)
    assert info.value.param == param and needle in info.value.message and "propertyNames" in info.value.message


def test_auto_relaxes_a_non_strict_tools_unenforceable_schema(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    lark = plan(chat(tools=[ToolSpec(name="odd", parameters=ODD)]), GENERIC).lark  # type: ignore[union-attr]
    walk(grammars.constraint(lark), tokenizer, '<tool_call>\n{"name": "odd", "arguments": {"ANY": 1}}\n</tool_call>')


def test_claude_codes_tools_all_compile(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    """Its schemas carry `propertyNames: {type: string}` (always true), which is dropped, not refused."""
    from tests.fixtures import claude_code_tools

    tools = [ToolSpec(name=t["name"], parameters=t["input_schema"], strict=True) for t in claude_code_tools()]
    assert len(tools) > 20
    grammar = plan(chat(tools=tools, tool_choice="any"), GENERIC)
    walk(grammars.constraint(grammar.lark), tokenizer, '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>')  # type: ignore[union-attr]


def test_the_mask_sets_refused_logits_to_minus_infinity() -> None:
    words = np.zeros(2, dtype=np.int32)
    words.view(np.uint32)[0] = 0b101  # tokens 0 and 2
    words.view(np.uint32)[1] = 1 << 31  # token 63
    logits = mx.arange(70, dtype=mx.float32)[None]  # wider than the mask: padded output layer
    masked = apply_bitmask(logits, words)
    finite = [i for i, v in enumerate(masked[0].tolist()) if v != float("-inf")]
    assert finite == [0, 2, 63] and masked.shape == (1, 70)


def test_a_thinking_prompt_stays_free_until_the_reasoning_closes(grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    lark = plan(chat(tools=[WEATHER], tool_choice="any"), GENERIC, thinking_end="</think>").lark  # type: ignore[union-attr]
    constraint = grammars.constraint(lark)
    walk(constraint, tokenizer, "I should look it up.</think>\n")
    walk(constraint, tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>')
    assert constraint.accepts_eos


@pytest.mark.parametrize("tool_choice", ["any", "auto"])
def test_rewind_returns_to_the_tokens_a_sequence_kept(tool_choice: str, grammars: Grammars, tokenizer: TokenizerWrapper) -> None:
    """A failed batched step may have advanced the grammar past what the sequence kept, and a
    verification pass looks ahead (`masks_along`). Neither rolls the matcher back (llguidance
    cannot for the `stop=` lexeme of the free text before a call): a fresh copy re-reads the
    kept tokens, and the look-ahead runs on a copy."""
    constraint = grammars.constraint(plan(chat(tools=[WEATHER], tool_choice=tool_choice), GENERIC).lark)  # type: ignore[union-attr]
    kept = walk(constraint, tokenizer, ("Let me see. " if tool_choice == "auto" else "") + '<tool_call>\n{"name": "get_weather", "arguments": {"city": "')
    walk(constraint, tokenizer, "Bergen")
    constraint.rewind(len(kept))
    assert constraint.consumed == len(kept)
    assert constraint.masks_along(tokenizer.encode("Oslo")) is not None
    walk(constraint, tokenizer, 'Oslo", "unit": "c"}}\n</tool_call>')
    assert constraint.accepts_eos
