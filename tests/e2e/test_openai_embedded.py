"""The embedded model end to end through the official `openai` SDK: real answers, not just shapes."""

from __future__ import annotations

import openai
import pytest

from tests.support import API_KEY, CliServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture
def client(embedded_server: CliServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded_server.base_url}/v1", api_key=API_KEY, max_retries=0)


def test_capital_of_france(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens > 10 and 0 < response.usage.completion_tokens <= 40


def test_capital_of_france_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, temperature=0, max_tokens=40, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert 0 < chunks[-1].usage.completion_tokens <= 40


def test_plain_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="pensieve", prompt="The capital of France is the city of", max_tokens=4, temperature=0
    )
    assert "Paris" in response.choices[0].text
