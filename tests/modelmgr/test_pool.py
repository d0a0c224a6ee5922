"""The pool's loading policy on real (tiny) models: shared loads, budget, LRU, idle unload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.modelmgr import pool as pool_module
from pensieve.modelmgr.catalog import plan_for
from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.sources import source_from_path
from pensieve.models import ChatMessage, ChatRequest
from pensieve.utils import ModelLoadError, OverloadedError
from tests.modelmgr.conftest import add_model
from tests.support import make_settings


@pytest.fixture
def three(store: Path, tiny_mlx: Path) -> int:
    """Store entries a, b, c (the same tiny model); returns one model's estimated bytes."""
    for name in ("a", "b", "c"):
        add_model(store, name, tiny_mlx)
    # A small budget, as in the tests below: the attention-scores share of a plan grows with it.
    settings = make_settings("a", store.parent, performance__prefix_cache_mb=64, model__memory_budget_gb=1)
    return plan_for(model_facts(source_from_path(store / "a")), settings).reserved


def _pool(store: Path, **overrides: Any) -> ModelPool:
    """A pool over the store; the prefix cache is fixed so estimates do not follow the budget."""
    settings = make_settings("a", store.parent, performance__prefix_cache_mb=64, **overrides)
    return ModelPool(settings, store=store)


def _states(pool: ModelPool) -> dict[str, str]:
    return {m.name: m.state for m in pool.status()}


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each real load (the loader itself still runs)."""
    loads: list[str] = []
    real = pool_module.load_source

    def counting(source: Any) -> Any:
        loads.append(source.name)
        return real(source)

    monkeypatch.setattr(pool_module, "load_source", counting)
    return loads


async def test_concurrent_requests_share_one_load(store: Path, three: int, count_loads: list[str]) -> None:
    pool = _pool(store)
    waiting = [asyncio.create_task(pool.engine("b")) for _ in range(6)]
    await asyncio.sleep(0)
    assert _states(pool)["b"] == "loading"
    engines = await asyncio.gather(*waiting)
    assert count_loads == ["b"] and all(e is engines[0] for e in engines)
    assert await pool.engine("b") is engines[0] and count_loads == ["b"]
    status = {m.name: m for m in pool.status()}
    assert status["b"].state == "loaded" and status["b"].load_seconds > 0
    assert status["a"].state == status["c"].state == "available"
    await pool.close()


async def test_preload_or_lazy(store: Path, three: int) -> None:
    lazy = _pool(store, model__preload=False)
    await lazy.start()
    assert _states(lazy)["a"] == "available"
    await lazy.close()
    eager = _pool(store)
    await eager.start()
    assert _states(eager)["a"] == "loaded"
    await eager.close()


async def test_least_recently_used_model_makes_room(store: Path, three: int, count_loads: list[str]) -> None:
    pool = _pool(store, model__memory_budget_gb=2.5 * three / 1024**3)
    a, b = await pool.engine("a"), await pool.engine("b")
    await pool.engine("a")  # b is now the least recently used
    c = await pool.engine("c")
    assert _states(pool) == {"a": "loaded", "b": "available", "c": "loaded", "smollm2-135m-instruct": "available"}
    assert pool.memory().reserved_bytes <= pool.memory().budget_bytes
    assert await pool.engine("a") is a and c is not b  # a used again: c is now the oldest
    await pool.engine("b")
    assert count_loads == ["a", "b", "c", "b"]
    assert (_states(pool)["a"], _states(pool)["b"], _states(pool)["c"]) == ("loaded", "loaded", "available")
    await pool.close()


async def test_busy_models_are_not_evicted(store: Path, three: int) -> None:
    pool = _pool(store, model__memory_budget_gb=1.5 * three / 1024**3)
    engine = await pool.engine("a")
    request = ChatRequest(model="a", messages=[ChatMessage(role="user", content="hi")], max_tokens=4)
    async with engine.open(request):  # admitted: a is in use
        with pytest.raises(OverloadedError, match="busy or loading") as info:
            await pool.engine("b")
        assert info.value.headers["retry-after"]
    assert await pool.engine("b") is not engine  # idle again, so it gives way
    await pool.close()


async def test_a_model_over_the_budget_is_refused_with_the_reason(store: Path, three: int) -> None:
    pool = _pool(store, model__memory_budget_gb=0.01, model__preload=False)
    with pytest.raises(ModelLoadError, match="more than the memory budget of 0.01 GiB") as info:
        await pool.engine("b")
    assert "Refusing to load it rather than let the machine swap" in info.value.message
    assert _states(pool)["b"] == "error"
    with pytest.raises(ModelLoadError):  # the same files fail the same way, without a reload
        await pool.engine("b")
    await pool.close()


async def test_idle_models_are_unloaded_after_keep_alive(store: Path, three: int, count_loads: list[str]) -> None:
    pool = _pool(store, model__keep_alive_s=0.2)
    await pool.start()
    assert _states(pool)["a"] == "loaded"
    for _ in range(600):  # poll: no assumption about how fast the machine is
        if _states(pool)["a"] == "available":
            break
        await asyncio.sleep(0.05)
    assert _states(pool)["a"] == "available" and pool.memory().reserved_bytes == 0
    await pool.engine("a")  # a request brings it back
    assert count_loads == ["a", "a"] and _states(pool)["a"] == "loaded"
    await pool.close()
