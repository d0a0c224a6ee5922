"""Which prefix outlasts a request, on the embedded model's real chat template and tokenizer."""

from __future__ import annotations

import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper

from pensieve.engine.prefix_policy import lasting_prefix
from pensieve.engine.prompt import render_prompt
from pensieve.modelmgr import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf, tokenizer_wrapper_from_gguf
from pensieve.models import ChatMessage, ChatRequest, ToolCall, ToolSpec

SYSTEM = ChatMessage(role="system", content="You are a coding agent. " * 40)
TOOLS = [ToolSpec(name="run", description="Run a shell command.")]


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerWrapper:
    return tokenizer_wrapper_from_gguf(read_gguf(embedded_model_path())[1])


def lasting(tokenizer: TokenizerWrapper, *messages: ChatMessage) -> tuple[int, list[int]]:
    request = ChatRequest(model="m", messages=[SYSTEM, *messages], max_tokens=8, tools=TOOLS)
    rendered = render_prompt(tokenizer, request)
    return lasting_prefix(tokenizer, request, rendered), rendered.tokens


def test_a_first_request_keeps_the_system_prompt_and_tools_and_not_the_question(tokenizer: TokenizerWrapper) -> None:
    n, tokens = lasting(tokenizer, ChatMessage(role="user", content="Fix the build."))
    m, others = lasting(tokenizer, ChatMessage(role="user", content="Write the docs."))
    assert n == m and tokens[:n] == others[:n]  # what every new session shares...
    assert "Fix the build" not in tokenizer.decode(tokens[:n]) and "Run a shell command" in tokenizer.decode(tokens[:n])
    assert n < len(tokens) - 4  # ...and not the question


def test_tool_rounds_keep_the_same_prefix_until_the_person_types_again(tokenizer: TokenizerWrapper) -> None:
    ask = ChatMessage(role="user", content="Fix the build.")
    call = ChatMessage(role="assistant", tool_calls=[ToolCall(id="t1", name="run", arguments={"cmd": "make"})])
    result = ChatMessage(role="tool", content="ok", tool_call_id="t1", name="run")
    first, _ = lasting(tokenizer, ask)
    after_tool, _ = lasting(tokenizer, ask, call, result)
    assert after_tool == first
    later, tokens = lasting(tokenizer, ask, call, result, ChatMessage(role="assistant", content="Done."), ChatMessage(role="user", content="Thanks; now the docs."))
    assert later > first and "Done." in tokenizer.decode(tokens[:later]) and "now the docs" not in tokenizer.decode(tokens[:later])


def test_a_plain_completion_keeps_nothing(tokenizer: TokenizerWrapper) -> None:
    request = ChatRequest(model="m", messages=[], max_tokens=8, raw_prompt="Once upon a time " * 50)
    assert lasting_prefix(tokenizer, request, render_prompt(tokenizer, request)) == 0
