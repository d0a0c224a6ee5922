"""Fixtures of the engine's tests: the tiny model loaded once, engines closed after each test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlx_lm import load

from pensieve.engine import DraftModel, Engine, EngineConfig
from pensieve.models import ChatRequest, Finished, TextDelta


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load(str(tiny_model_dir))


@pytest.fixture
def make_engine():
    """Engines made in a test, closed (compute threads joined) when it ends."""
    made: list[Engine] = []

    def make(model: Any, tokenizer: Any, *, name: str = "tiny", context_length: int = 32768, batch_model: Any = None,
             draft: DraftModel | None = None, **config: Any) -> Engine:
        engine = Engine(model, tokenizer, name=name, context_length=context_length,
                        config=EngineConfig(**config), batch_model=batch_model, draft=draft)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


async def answer(engine: Engine, request: ChatRequest) -> tuple[str, Finished]:
    """A request's whole text and its Finished event."""
    text, finished = "", None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return text, finished
