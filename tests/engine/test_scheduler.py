"""The engine's scheduler on a real (tiny, random-weight) model: exactness, batching, caching."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.generate import stream_generate

from pensieve.engine import Engine
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams, TextDelta
from pensieve.utils import PromptTooLongError, RateLimitError
from tests.engine.conftest import answer


def request(text: str, max_tokens: int = 24, **sampling: float) -> ChatRequest:
    return ChatRequest(
        model="tiny",
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0, **sampling),
    )


async def run(engine: Engine, req: ChatRequest, *, delay: float = 0.0) -> tuple[str, Finished]:
    await asyncio.sleep(delay)
    return await answer(engine, req)


def mlx_lm_generation(model, tokenizer, prompt: list[int], max_tokens: int) -> tuple[str, list[int]]:
    """mlx-lm's own greedy generation: its text and its tokens (stop token excluded)."""
    text, tokens = "", []
    for response in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=max_tokens):
        text += response.text
        if response.token not in tokenizer.eos_token_ids:
            tokens.append(response.token)
    return text, tokens


@pytest.mark.parametrize("source", ["tiny", "embedded"])
async def test_greedy_matches_mlx_lm_token_for_token(source: str, tiny, make_engine) -> None:
    if source == "embedded":
        from pensieve.modelmgr import embedded_model_path
        from pensieve.modelmgr.gguf import load_gguf

        model, tokenizer, _ = load_gguf(embedded_model_path())
    else:
        model, tokenizer = tiny
    engine = make_engine(model, tokenizer, name=source, context_length=8192, prefix_cache_bytes=0)
    req = request("Name three rivers of Europe and say one thing about each.", 32)
    text, finished = await run(engine, req)
    expected_text, expected_tokens = mlx_lm_generation(model, tokenizer, engine.prepare(req).tokens, 32)
    assert text == expected_text
    assert finished.usage.output_tokens == len(expected_tokens)


async def test_staggered_concurrent_requests_match_their_solo_outputs(tiny, make_engine) -> None:
    """Requests joining and leaving mid-decode move between the single and batched paths."""
    model, tokenizer = tiny
    engine = make_engine(model, tokenizer, name="tiny", context_length=32768, prefix_cache_bytes=0)
    reqs = [request(f"Question {i}: what is {i} plus {i}?", 20 + 6 * i) for i in range(4)]
    alone = [await run(engine, r) for r in reqs]
    together = await asyncio.gather(*(run(engine, r, delay=0.05 * i) for i, r in enumerate(reqs)))
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [f.usage.output_tokens for _, f in together] == [f.usage.output_tokens for _, f in alone]
    assert engine.load.active == 0


async def test_follow_up_turn_reads_the_prefix_cache_without_changing_the_answer(tiny, make_engine) -> None:
    model, tokenizer = tiny
    cached = make_engine(model, tokenizer, name="tiny", context_length=32768)
    uncached = make_engine(model, tokenizer, name="tiny", context_length=32768, prefix_cache_bytes=0)
    system = ChatMessage(role="system", content="You are terse. " * 40)
    first = ChatRequest(model="t", messages=[system, ChatMessage(role="user", content="Hi")], max_tokens=12,
                        sampling=SamplingParams(temperature=0))
    answer, f1 = await run(cached, first)
    follow = first.model_copy(update={"messages": [*first.messages, ChatMessage(role="assistant", content=answer),
                                                   ChatMessage(role="user", content="And then?")]})
    text, f2 = await run(cached, follow)
    assert f1.usage.cache_read_input_tokens == 0
    assert f2.usage.cache_read_input_tokens > f1.usage.input_tokens * 0.9
    assert text == (await run(uncached, follow))[0]


class FailsOnceInABatch:
    """The model, except that its first forward pass over more than one sequence raises, as a
    batch that runs out of memory would."""

    def __init__(self, model) -> None:
        self.model = model
        self.failed = False

    def __call__(self, inputs, cache=None, **kwargs):
        if inputs.shape[0] > 1 and not self.failed:
            self.failed = True
            raise RuntimeError("simulated: not enough memory for this batch")
        return self.model(inputs, cache=cache, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


async def test_a_failed_batch_step_resumes_each_sequence_alone_with_the_same_answers(tiny, make_engine) -> None:
    model, tokenizer = tiny
    reqs = [request(f"Question {i}: what is {i} times {i}?", 24) for i in range(3)]
    healthy = make_engine(model, tokenizer, name="tiny", context_length=32768, prefix_cache_bytes=0)
    alone = [await run(healthy, r) for r in reqs]
    flaky = FailsOnceInABatch(model)
    engine = make_engine(model, tokenizer, name="tiny", context_length=32768, prefix_cache_bytes=0, batch_model=flaky)
    together = await asyncio.gather(*(run(engine, r, delay=0.02 * i) for i, r in enumerate(reqs)))
    assert flaky.failed  # the batch did fail once
    assert [t for t, _ in together] == [t for t, _ in alone]  # and nobody lost a token
    assert [f.stop_reason for _, f in together] == [f.stop_reason for _, f in alone]
    assert engine.load.active == 0
    # The engine batches again afterwards.
    again = await asyncio.gather(*(run(engine, r) for r in reqs))
    assert [t for t, _ in again] == [t for t, _ in alone]


async def test_cancelled_stream_frees_its_slot(tiny, make_engine) -> None:
    model, tokenizer = tiny
    engine = make_engine(model, tokenizer, name="tiny", context_length=32768)
    events = engine.generate(request("Write forever.", 5000))
    async for event in events:
        if isinstance(event, TextDelta):
            break
    await events.aclose()
    for _ in range(200):
        if engine.load.active == 0:
            break
        await asyncio.sleep(0.01)
    assert not engine.load.busy
    assert (await run(engine, request("Still there?", 4)))[1].usage.output_tokens > 0


async def test_queue_beyond_capacity_is_a_rate_limit(tiny, make_engine) -> None:
    model, tokenizer = tiny
    engine = make_engine(model, tokenizer, name="tiny", context_length=32768,
                         max_concurrent_requests=1, max_queued_requests=1)
    first = asyncio.create_task(run(engine, request("one", 200)))
    second = asyncio.create_task(run(engine, request("two", 200)))
    await asyncio.sleep(0.05)
    with pytest.raises(RateLimitError) as info:
        await run(engine, request("three", 4))
    assert info.value.headers["retry-after"]
    await asyncio.gather(first, second)


async def test_prompt_over_the_window_is_refused_or_truncated(tiny, make_engine) -> None:
    model, tokenizer = tiny
    long = [ChatMessage(role="user", content="word " * 300), ChatMessage(role="assistant", content="ok"),
            ChatMessage(role="user", content="last question")]
    req = ChatRequest(model="t", messages=long, max_tokens=4, sampling=SamplingParams(temperature=0))
    strict = make_engine(model, tokenizer, name="tiny", context_length=128)
    lenient = make_engine(model, tokenizer, name="tiny", context_length=128, context_policy="truncate")
    with pytest.raises(PromptTooLongError, match=r"prompt is too long: \d+ tokens > 128 maximum"):
        strict.prepare(req)
    rendered = lenient.prepare(req)
    assert len(rendered.tokens) < 128 and "last question" in rendered.text


async def test_seeded_sampling_is_reproducible(tiny, make_engine) -> None:
    model, tokenizer = tiny
    engine = make_engine(model, tokenizer, name="tiny", context_length=32768)
    req = request("Pick words.", 16).model_copy(update={"sampling": SamplingParams(temperature=1.0, seed=7)})
    other = req.model_copy(update={"sampling": SamplingParams(temperature=1.0, seed=8)})
    a, b, c = [(await run(engine, r))[0] for r in (req, req, other)]
    assert a == b and a != c


def test_piecewise_tokenizing_equals_the_tokenizers_own(tiny) -> None:
    from pensieve.engine.tokenize import CHECKS, PieceEncoder

    _, tokenizer = tiny
    encoder = PieceEncoder(tokenizer)
    system = {"role": "system", "content": "You follow the rules below.\n" + "Rule: be brief and exact. " * 80}
    for turn in range(CHECKS + 3):
        messages = [system, {"role": "user", "content": f"Question {turn}: what is {turn} times {turn}?"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert encoder.encode(text) == tokenizer.encode(text, add_special_tokens=False)
    assert encoder._checks_left == 0  # trusted after CHECKS agreeing prompts, and still exact


async def test_prefill_and_batches_run_on_the_unpacked_twin_lone_decoding_on_the_packed_model(tiny_model_dir: Path, make_engine) -> None:
    """CUDA's `both` layout: many-token passes on the twin, one-token steps of a lone sequence on
    the packed model; KV caches pass between the two."""
    import mlx.nn as nn

    from pensieve.metal.layout import choose_layout, unpacked_copy

    model, tokenizer = load(str(tiny_model_dir))
    nn.quantize(model, group_size=32, bits=4)
    assert choose_layout(model, 1 << 34, "auto", "cuda", blas_ready=False) == "both"
    twin = unpacked_copy(model, mx.float32)
    calls = {"packed": 0, "twin": 0}

    class Counting(nn.Module):
        def __init__(self, inner: nn.Module, key: str) -> None:
            super().__init__()
            self.inner, self.key = inner, key
            self.layers = inner.layers

        def __call__(self, *args, **kwargs):
            calls[self.key] += 1
            return self.inner(*args, **kwargs)

    engine = make_engine(Counting(model, "packed"), tokenizer, name="tiny", context_length=32768,
                         batch_model=Counting(twin, "twin"))
    alone = await run(engine, request("Alone.", 12))
    # The prompt in one pass, and each speculative verification (several tokens) on the twin;
    # every other decode step on the packed model.
    verified, passes = alone[1].timings["speculation_passes"], alone[1].timings["decode_passes"]
    assert calls["twin"] == 1 + verified
    assert calls["packed"] == passes - verified
    together = await asyncio.gather(*(run(engine, request(f"Batch {i}.", 16), delay=0.02 * i) for i in range(3)))
    assert calls["twin"] > 1 + 3
    assert all(f.usage.output_tokens > 0 for _, f in [alone, *together])
    assert engine.load.active == 0
