"""The KV budget at work on real (tiny, random-weight) models: admission by the tokens sequences
hold, preemption that loses nothing, and a quantized KV cache on every path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mlx_lm import load

from pensieve.engine import Engine
from pensieve.engine.kv_budget import STEP, KVBudget, KVCost, Occupancy
from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.sources import source_from_path
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams
from tests.engine.conftest import answer as whole_answer


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("models") / "long-llama", "long-llama", seed=1)


@pytest.fixture(scope="module")
def long_model(long_dir: Path):
    return load(str(long_dir))


@pytest.fixture
def engines(make_engine):
    return lambda model, tokenizer, **config: make_engine(model, tokenizer, name="m", context_length=16384, **config)


def ask(text: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content=text)], max_tokens=max_tokens,
                       sampling=SamplingParams(temperature=0.0))  # fmt: skip


async def answer(engine: Engine, request: ChatRequest, delay: float = 0.0) -> tuple[str, Finished]:
    await asyncio.sleep(delay)
    return await whole_answer(engine, request)


def test_the_arithmetic_follows_mlx_lm_caches() -> None:
    cost = KVCost(full=100, windowed=((512, 10),), fixed=7)
    assert cost.bytes(1) == 100 * STEP + 10 * STEP + 7  # caches grow a step at a time
    assert cost.bytes(4096) == 100 * 4096 + 10 * 512 + 7  # a sliding layer keeps its window
    assert cost.longest(cost.bytes(4096)) == 4096 and cost.longest(cost.bytes(4096) - 1) == 4096 - STEP
    budget = KVBudget(KVCost(full=1), capacity=10_000)
    assert budget.batch_bytes([300, 1000]) == 2 * 1024  # every row padded to the longest
    assert budget.admits(Occupancy(), 100_000)  # alone, the plan already guarantees the window
    assert budget.admits(Occupancy(batch=(1000,)), 1000) and not budget.admits(Occupancy(batch=(4000, 4000)), 1000)
    assert budget.overrun(Occupancy(batch=(5000, 5000))) == 2 * 5120 - 10_000


async def test_sequences_that_outgrow_the_budget_are_paused_and_lose_nothing(tiny_model_dir: Path, engines) -> None:
    """Four long answers on a budget where two fit at the start but not as they grow: the newest
    is preempted (its KV to the prefix cache) and resumes later; every answer is the one it
    gets alone, and nothing fails."""
    model, tokenizer = load(str(tiny_model_dir))
    cost = model_facts(source_from_path(tiny_model_dir)).kv_cost
    alone = engines(model, tokenizer, prefix_cache_bytes=0)
    requests = [ask(f"Story {i}: tell me everything about the number {i}.", 700) for i in range(4)]
    expected = [await answer(alone, r) for r in requests]
    tight = engines(model, tokenizer, kv_cost=cost, kv_capacity_bytes=cost.bytes(5 * STEP),
                    prefix_cache_bytes=1 << 30)  # fmt: skip
    got = await asyncio.gather(*(answer(tight, r, delay=0.01 * i) for i, r in enumerate(requests)))
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [f.usage.output_tokens for _, f in got] == [f.usage.output_tokens for _, f in expected]
    status = tight.kv_status()
    assert status is not None and status.preemptions > 0  # memory really ran short
    assert status.prefix_cache_bytes <= status.capacity_bytes and not tight.load.busy


async def test_a_request_that_does_not_fit_yet_waits_instead_of_failing(tiny_model_dir: Path, engines) -> None:
    model, tokenizer = load(str(tiny_model_dir))
    cost = model_facts(source_from_path(tiny_model_dir)).kv_cost
    engine = engines(model, tokenizer, kv_cost=cost, kv_capacity_bytes=cost.bytes(4 * STEP), prefix_cache_bytes=0)
    long = ask("Tell me a long story about rivers. " * 40, 64)
    results = await asyncio.gather(*(answer(engine, long, delay=0.005 * i) for i in range(3)))
    assert all(f.usage.output_tokens == 64 and f.stop_reason == "max_tokens" for _, f in results)
    assert len({t for t, _ in results}) == 1  # the same request, the same greedy answer


@pytest.mark.parametrize("bits", [8, 4])
async def test_quantized_kv_gives_the_same_answers_alone_batched_and_from_the_prefix_cache(long_model, engines, bits: int) -> None:
    model, tokenizer = long_model
    engine = engines(model, tokenizer, kv_bits=bits)
    assert engine.kv_status() is None  # no budget given: admission by slots only
    requests = [ask(f"Question {i}: what is {i} plus {i}? Explain.", 24 + 4 * i) for i in range(3)]
    alone = [await answer(engine, r) for r in requests]
    together = await asyncio.gather(*(answer(engine, r, delay=0.03 * i) for i, r in enumerate(requests)))
    assert [t for t, _ in together] == [t for t, _ in alone]
    # A follow-up turn reads its prefix from the (quantized) prefix cache.
    first = requests[0]
    follow = first.model_copy(update={"messages": [*first.messages, ChatMessage(role="assistant", content=alone[0][0]),
                                                   ChatMessage(role="user", content="And then?")]})  # fmt: skip
    cached = await answer(engine, follow)
    fresh = engines(model, tokenizer, kv_bits=bits, prefix_cache_bytes=0)
    assert cached[1].usage.cache_read_input_tokens >= alone[0][1].usage.input_tokens  # the whole first turn
    assert cached[0] == (await answer(fresh, follow))[0]


async def test_quantized_kv_holds_fewer_bytes(long_model, engines) -> None:
    """What the plan assumes: 8-bit KV takes about 17/32 and 4-bit about 9/32 of float32's...
    here of the model's float32 (scales and biases in float32 too)."""
    from pensieve.engine.kv_budget import quantized_factor
    from pensieve.engine.quantized_cache import make_cache

    model, _ = long_model
    import mlx.core as mx

    sizes = {}
    for bits in (None, 8, 4):
        cache = make_cache(model, bits)
        model(mx.zeros((1, 512), dtype=mx.int32), cache=cache)
        mx.eval([c.state for c in cache])
        sizes[bits] = sum(c.nbytes for c in cache)
    for bits in (8, 4):
        assert sizes[bits] == pytest.approx(sizes[None] * quantized_factor(bits, 4), rel=0.01)
