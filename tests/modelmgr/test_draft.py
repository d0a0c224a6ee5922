"""`model.draft`: a draft model loaded next to the default model, or refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.modelmgr.catalog import plan_for
from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.sources import source_from_path
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams
from pensieve.utils import ModelLoadError
from tests.modelmgr.conftest import add_model
from tests.support import make_settings


@pytest.fixture(scope="module")
def tiny_4bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store's tiny model (seed 1) at 4 bits: a draft that agrees with it most of the time."""
    return make_random_model(tmp_path_factory.mktemp("draft") / "tiny-4bit", "tiny-llama", seed=1, bits=4, group_size=32)


def with_other_tokenizer(source: Path, target: Path) -> Path:
    """A copy of a model whose tokenizer swaps the ids of two tokens: same size, other meaning."""
    add_model(target.parent, target.name, source)
    path = target / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    path.write_text(json.dumps(data))
    return target


def pool_for(store: Path, draft: str | None, **overrides: Any) -> ModelPool:
    settings = make_settings("a", store.parent, performance__prefix_cache_mb=64, model__draft=draft, **overrides)
    return ModelPool(settings, store=store)


async def copy_request(engine: Any) -> Finished:
    request = ChatRequest(model="a", messages=[ChatMessage(role="user", content="Tell me a story.")], max_tokens=40,
                          sampling=SamplingParams(temperature=0))
    finished = None
    async for event in engine.generate(request):
        finished = event if isinstance(event, Finished) else finished
    assert finished is not None
    return finished


async def test_the_draft_is_loaded_beside_the_default_model_and_counted(store: Path, tiny_mlx: Path, tiny_4bit: Path) -> None:
    add_model(store, "a", tiny_mlx)
    add_model(store, "a-4bit", tiny_4bit)
    pool = pool_for(store, "a-4bit", performance__warmup=True)  # the warm-up drafts too
    engine = await pool.engine(None)
    assert engine.draft is not None
    alone = plan_for(model_facts(source_from_path(store / "a")), pool.settings).reserved
    draft_weights = model_facts(source_from_path(store / "a-4bit")).weight_bytes
    (served,) = [m for m in pool.status() if m.name == "a"]
    assert served.estimated_bytes is not None and served.estimated_bytes > alone + draft_weights  # and its KV
    finished = await copy_request(engine)
    assert finished.timings["speculation_proposed"] > 0 and finished.timings["speculation_accepted"] > 0
    # Another model of the store gets no draft: it drafts for the default model only.
    add_model(store, "b", tiny_mlx)
    assert (await pool.engine("b")).draft is None
    await pool.close()


async def test_a_draft_with_another_tokenizer_is_refused_with_what_differs(store: Path, tiny_mlx: Path, tmp_path: Path) -> None:
    add_model(store, "a", tiny_mlx)
    with_other_tokenizer(tiny_mlx, store / "other")
    pool = pool_for(store, "other")
    with pytest.raises(ModelLoadError) as info:
        await pool.engine(None)
    message = info.value.message
    assert "draft model 'other' does not share the tokenizer of 'a'" in message
    assert "token 'hello' is id" in message and "Choose a draft of the same model family" in message
    assert {m.name: m.state for m in pool.status()}["a"] == "error"
    await pool.close()


async def test_a_draft_that_cannot_be_found_names_the_setting(store: Path, tiny_mlx: Path) -> None:
    add_model(store, "a", tiny_mlx)
    pool = pool_for(store, "no-such-draft")
    with pytest.raises(ModelLoadError, match=r"^model\.draft: .*no-such-draft"):
        await pool.engine(None)
    await pool.close()


async def test_with_speculation_off_no_draft_is_loaded(store: Path, tiny_mlx: Path, tiny_4bit: Path) -> None:
    add_model(store, "a", tiny_mlx)
    add_model(store, "a-4bit", tiny_4bit)
    pool = pool_for(store, "a-4bit", performance__speculation="off")
    engine = await pool.engine(None)
    assert engine.draft is None
    assert "speculation_proposed" not in (await copy_request(engine)).timings
    await pool.close()
