"""Prompt rendering: the embedded model's own template (no tool support, so the generic format)
and a template with native tools, on the conversations real clients send."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.tool_parsers import json_tools

from pensieve.engine.output import Markers, OutputParser
from pensieve.engine.prompt import (
    GENERIC_TOOL_END,
    GENERIC_TOOL_START,
    render_prompt,
    response_format_instruction,
)
from pensieve.modelmgr.embedded import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf, tokenizer_wrapper_from_gguf
from pensieve.models import (
    ChatMessage,
    ChatRequest,
    ResponseFormat,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
)
from pensieve.utils import InvalidRequestError

NATIVE_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0].content if messages[0].role == 'system' else '' }}\n"
    "<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and tools %}"
    "{%- elif m.role == 'tool' %}<|im_start|>tool\n[{{ m.tool_call_id }}] {{ m.content }}<|im_end|>\n"
    "{%- elif m.role == 'assistant' %}<|im_start|>assistant\n"
    "{%- if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def generic() -> TokenizerWrapper:
    """The embedded model's tokenizer: its ChatML template knows nothing of tools."""
    return tokenizer_wrapper_from_gguf(read_gguf(embedded_model_path())[1])


@pytest.fixture(scope="module")
def native(generic: TokenizerWrapper) -> TokenizerWrapper:
    hf = copy.deepcopy(generic._tokenizer)
    hf.chat_template = NATIVE_TEMPLATE
    return TokenizerWrapper(hf, eos_token_ids=generic.eos_token_ids, tool_call_start="<tool_call>", tool_call_end="</tool_call>", tool_parser=json_tools.parse_tool_call)


WEATHER = ToolSpec(name="get_weather", description="Weather for a city", parameters={"type": "object", "properties": {"city": {"type": "string"}}})


def chat(*messages: ChatMessage, **kwargs: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), max_tokens=10, **kwargs)


def sys(text: str) -> ChatMessage:
    return ChatMessage(role="system", content=text)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def test_plain_conversation_uses_the_models_template(generic: TokenizerWrapper) -> None:
    rendered = render_prompt(generic, chat(sys("Be brief."), user("Hi")))
    assert rendered.text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert rendered.tokens == generic.encode(rendered.text, add_special_tokens=False)
    assert not rendered.template_tools


def test_generic_tool_format_in_the_system_prompt(generic: TokenizerWrapper) -> None:
    text = render_prompt(generic, chat(sys("Be brief."), user("Weather?"), tools=[WEATHER])).text
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city"' in system
    assert f'{GENERIC_TOOL_START}\n{{"name": "<function-name>", "arguments": {{<arguments as a JSON object>}}}}\n{GENERIC_TOOL_END}' in system
    without_system = render_prompt(generic, chat(user("Weather?"), tools=[WEATHER])).text
    assert without_system.startswith("<|im_start|>system\n# Tools")


def test_tool_history_in_the_generic_format_parses_back(generic: TokenizerWrapper) -> None:
    call = ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Paris"})
    request = chat(
        user("Weather in Paris and Oslo?"),
        ChatMessage(role="assistant", content="Checking.", tool_calls=[call, call.model_copy(update={"id": "toolu_2", "arguments": {"city": "Oslo"}})]),
        ChatMessage(role="tool", content="18 C", tool_call_id="toolu_1", name="get_weather"),
        ChatMessage(role="tool", content="Error: no station", tool_call_id="toolu_2", name="get_weather"),
        user("And tomorrow?"),
        tools=[WEATHER],
    )
    text = render_prompt(generic, request).text
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    # The model sees its earlier calls in exactly the format it is asked to write, so the parser
    # reads them back as the same calls.
    parser = OutputParser(markers=Markers(tool_start=GENERIC_TOOL_START, tool_end=GENERIC_TOOL_END), parse_tools=True)
    events = parser.feed(assistant) + parser.finish()
    assert [(e.call.name, e.call.arguments) for e in events if isinstance(e, ToolCallEvent)] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    # Both results and the next question form one user turn.
    last_user = text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
    assert last_user == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\nError: no station\n</tool_response>\n\nAnd tomorrow?"


@pytest.mark.parametrize(("choice", "parallel"), [("auto", True), ("any", True), ("get_weather", True), ("any", False)])
def test_tool_choice_leaves_the_prompt_alone(generic: TokenizerWrapper, choice: str, parallel: bool) -> None:
    """Forced choices are enforced by the grammar, so the prompt (and its cached prefix) is the
    same whatever the choice; `none` hides the tools."""
    auto = render_prompt(generic, chat(sys("S"), user("Weather?"), tools=[WEATHER]))
    request = chat(sys("S"), user("Weather?"), tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel)
    assert render_prompt(generic, request).text == auto.text and "# Tools" in auto.text
    assert "# Tools" not in render_prompt(generic, request.model_copy(update={"tool_choice": "none"})).text


def test_a_json_answer_shows_the_model_its_schema(generic: TokenizerWrapper) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    request = chat(sys("S"), user("A number?"), response_format=ResponseFormat(json_schema=schema))
    assert response_format_instruction(request) == f"Reply with a single JSON value and nothing else, following this JSON schema:\n{json.dumps(schema)}"
    assert render_prompt(generic, request).text.split("<|im_end|>")[0].endswith(json.dumps(schema))
    assert response_format_instruction(chat(user("x"), response_format=ResponseFormat())) == "Reply with a single JSON object and nothing else."
    assert response_format_instruction(chat(user("x"))) == ""


def test_mid_conversation_system_turns_become_notes_on_a_user_turn(generic: TokenizerWrapper) -> None:
    text = render_prompt(generic, chat(sys("Main."), user("Q1"), sys("Reminder A"), ChatMessage(role="assistant", content="A1"), sys("Reminder B"), user("Q2"), sys("Late note"))).text
    assert text.count("<|im_start|>system") == 1
    assert "<|im_start|>user\n[System note] Reminder A\n\nQ1" not in text  # a note goes forward, not back
    assert "<|im_start|>user\n[System note] Reminder A\n\n[System note] Reminder B\n\nQ2\n\n[System note] Late note<|im_end|>" in text


def test_consecutive_user_turns_are_joined(generic: TokenizerWrapper) -> None:
    text = render_prompt(generic, chat(user("one"), user("two"))).text
    assert "<|im_start|>user\none\n\ntwo<|im_end|>" in text


def test_a_final_assistant_turn_is_continued(generic: TokenizerWrapper) -> None:
    text = render_prompt(generic, chat(user("Capital of France?"), ChatMessage(role="assistant", content="The capital is"))).text
    assert text.endswith("<|im_start|>assistant\nThe capital is")


def test_native_template_gets_tools_calls_results_and_reasoning(native: TokenizerWrapper) -> None:
    call = ToolCall(id="toolu_9", name="get_weather", arguments={"city": "Rome"})
    request = chat(
        sys("Be brief."),
        user("Rome?"),
        ChatMessage(role="assistant", content="", tool_calls=[call], reasoning="Need the tool."),
        ChatMessage(role="tool", content="25 C", tool_call_id="toolu_9", name="get_weather"),
        tools=[WEATHER],
        tool_choice="any",
    )
    rendered = render_prompt(native, request)
    assert rendered.template_tools
    assert "# Tools" not in rendered.text  # the template rendered the tools itself
    assert '<tools>{"type": "function", "function": {"name": "get_weather"' in rendered.text
    assert "Be brief." in rendered.text
    assert '<think>Need the tool.</think><tool_call>get_weather {"city": "Rome"}</tool_call>' in rendered.text
    assert "<|im_start|>tool\n[toolu_9] 25 C<|im_end|>" in rendered.text
    none = render_prompt(native, request.model_copy(update={"tool_choice": "none"}))
    assert "<tools>" not in none.text  # `none`: the tools are not shown at all


def test_a_template_error_is_a_400(generic: TokenizerWrapper) -> None:
    broken = copy.deepcopy(generic._tokenizer)
    broken.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InvalidRequestError, match="rejected this conversation: Conversation roles must alternate"):
        render_prompt(TokenizerWrapper(broken, eos_token_ids=generic.eos_token_ids), chat(user("x")))
    with pytest.raises(InvalidRequestError, match="at least one message"):
        render_prompt(generic, chat())


def test_a_template_with_tools_but_no_known_call_markers_uses_the_generic_format_throughout(
    native: TokenizerWrapper, generic: TokenizerWrapper
) -> None:
    """Rendering and parsing follow one answer: a template that renders tools is not enough
    when mlx-lm knows no call markers for the family, since then nothing could parse the call."""
    unmarked = TokenizerWrapper(copy.deepcopy(native._tokenizer), eos_token_ids=generic.eos_token_ids)
    request = chat(user("Rome?"), tools=[WEATHER])
    rendered = render_prompt(unmarked, request)
    assert not rendered.template_tools and "# Tools" in rendered.text
    assert Markers.for_prompt(unmarked, rendered).tool_start == GENERIC_TOOL_START
    native_rendered = render_prompt(native, request)
    assert native_rendered.template_tools and "# Tools" not in native_rendered.text
    parser = OutputParser.for_prompt(native, native_rendered, request)
    events = parser.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>') + parser.finish()
    assert [e.call.name for e in events if isinstance(e, ToolCallEvent)] == ["get_weather"]
