"""Before any token, the engine says how much of the prompt the prefix cache held."""

from __future__ import annotations

from pathlib import Path

from mlx_lm import load

from pensieve.engine import Engine, EngineConfig
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams, Started


async def events(engine: Engine, text: str) -> list[object]:
    request = ChatRequest(model="tiny", messages=[ChatMessage(role="user", content=text)], max_tokens=3, sampling=SamplingParams(temperature=0.0))
    return [event async for event in engine.generate(request)]


async def test_started_comes_first_with_the_split_that_finished_confirms(tiny_model_dir: Path) -> None:
    model, tokenizer = load(str(tiny_model_dir))
    engine = Engine(model, tokenizer, name="tiny", context_length=4096, config=EngineConfig())
    try:
        long = "Describe the layout of a large repository in detail. " * 30
        cold = await events(engine, long)
        warm = await events(engine, long + " And its tests?")
    finally:
        engine.close()
    for run in (cold, warm):
        started, finished = run[0], run[-1]
        assert isinstance(started, Started) and isinstance(finished, Finished)
        assert started.usage.input_tokens == finished.usage.input_tokens
        assert started.usage.cache_read_input_tokens == finished.usage.cache_read_input_tokens
    assert cold[0].usage.cache_read_input_tokens == 0  # type: ignore[attr-defined]
    assert warm[0].usage.cache_read_input_tokens > 0.8 * cold[0].usage.input_tokens  # type: ignore[attr-defined]
