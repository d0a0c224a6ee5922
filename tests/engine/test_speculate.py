"""Speculative decoding through the real engine: the same answers as plain decoding, faster passes.

Each test runs the same requests on two engines over the same model, one with speculation off,
and compares the tokens the compute thread produced (each job's history), not just the text.
Every test also checks that speculation really ran and drafts were accepted, so none can pass
with speculation silently off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from pensieve.engine import Engine
from pensieve.engine.job import Job
from pensieve.engine.proposers import DraftModel
from pensieve.engine.speculate import SpeculationConfig
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.models import (
    ChatMessage,
    ChatRequest,
    Finished,
    ResponseFormat,
    SamplingParams,
    ToolSpec,
)
from tests.engine.conftest import answer

OFF = SpeculationConfig(mode="off")


def ask(text: str, max_tokens: int = 48, *, stop: list[str] | None = None, **sampling: Any) -> ChatRequest:
    sampling.setdefault("temperature", 0.0)
    return ChatRequest(model="t", messages=[ChatMessage(role="user", content=text)], max_tokens=max_tokens,
                       stop=stop or [], sampling=SamplingParams(**sampling))


class Run:
    """One request's text, Finished event and the tokens its sequence generated."""

    def __init__(self, text: str, finished: Finished, job: Job) -> None:
        self.text, self.finished = text, finished
        self.tokens = job.history[len(job.prompt) :]
        self.figures = finished.timings

    @property
    def outcome(self) -> tuple[Any, ...]:
        usage = self.finished.usage
        return self.text, self.tokens, self.finished.stop_reason, self.finished.stop_sequence, usage.output_tokens


async def run(engine: Engine, request: ChatRequest) -> Run:
    jobs: list[Job] = []
    submit = engine.submit
    engine.submit = lambda job: (jobs.append(job), submit(job))[1]  # type: ignore[method-assign]
    try:
        text, finished = await answer(engine, request)
    finally:
        engine.submit = submit  # type: ignore[method-assign]
    return Run(text, finished, jobs[0])


def accepted(runs: list[Run]) -> int:
    return int(sum(r.figures.get("speculation_accepted", 0) for r in runs))


def proposed(runs: list[Run]) -> int:
    return int(sum(r.figures.get("speculation_proposed", 0) for r in runs))


FOX = "The quick brown fox"
PROMPTS = ["Hello", "Write a story.", "List three colours.", FOX]


async def test_greedy_answers_are_token_for_token_those_of_plain_decoding(tiny, make_engine) -> None:
    model, tokenizer = tiny
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    fast = [await run(on, ask(p, 64)) for p in PROMPTS]
    plain = [await run(off, ask(p, 64)) for p in PROMPTS]
    assert [r.outcome for r in fast] == [r.outcome for r in plain]
    assert all("speculation_accepted" not in r.figures for r in plain)
    # The random model repeats itself in runs, so its own tokens are proposed and accepted,
    # until a run ends (a rejection).
    assert 0 < accepted(fast) < proposed(fast)
    assert max(r.figures["tokens_per_pass"] for r in fast) > 2
    # Every token after the prompt's own came out of a counted decode pass.
    assert all(r.figures["decode_pass_tokens"] == len(r.tokens) - 1 for r in fast)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 9, 10, 17, 33])
async def test_max_tokens_is_never_overrun(max_tokens: int, tiny, make_engine) -> None:
    model, tokenizer = tiny
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    fast, plain = await run(on, ask("Hello", max_tokens)), await run(off, ask("Hello", max_tokens))
    assert fast.outcome == plain.outcome
    assert len(fast.tokens) == fast.finished.usage.output_tokens == max_tokens
    assert fast.finished.stop_reason == "max_tokens"
    if max_tokens >= 9:
        assert fast.figures["speculation_accepted"] > 0


@pytest.mark.parametrize("prompt", ["The quick brown fox", "List three colours."])
async def test_stop_sequences_cut_at_the_same_place(prompt: str, tiny, make_engine) -> None:
    """The stop string is the token where the random model's run of one token ends (45 and 11
    tokens into these answers), so it first shows up mid-answer, after accepted drafts."""
    model, tokenizer = tiny
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    tokens = (await run(off, ask(prompt, 64))).tokens
    change = next(i for i in range(1, len(tokens)) if tokens[i] != tokens[0])
    stop = tokenizer.decode([tokens[change]])
    assert change > 10 and stop not in tokenizer.decode(tokens[:change])
    fast = await run(on, ask(prompt, 64, stop=[stop]))
    plain = await run(off, ask(prompt, 64, stop=[stop]))
    assert fast.text == plain.text and fast.finished.stop_sequence == stop
    assert fast.finished.stop_reason == plain.finished.stop_reason == "stop_sequence"
    assert fast.finished.usage.output_tokens == plain.finished.usage.output_tokens
    assert fast.figures["speculation_accepted"] > 0


async def test_the_prefix_cache_left_behind_holds_exactly_the_answer(tiny, make_engine) -> None:
    """No rejected draft stays in the KV cache a finished sequence leaves for the next turn."""
    model, tokenizer = tiny
    cached = make_engine(model, tokenizer, prefix_cache_bytes=1 << 26)
    first = await run(cached, ask(FOX, 60))  # a run of one token for 45 tokens, then another
    assert 0 < first.figures["speculation_accepted"] < first.figures["speculation_proposed"]
    prefix = cached._scheduler._prefix
    assert prefix is not None and len(prefix) == 1
    (entry,) = prefix._entries.values()
    tokens = entry.tokens.tolist()
    assert tokens == cached.prepare(ask(FOX, 60)).tokens + first.tokens[:-1]  # the last is not fed yet
    fresh = make_prompt_cache(model)
    model(mx.array(tokens)[None], cache=fresh)
    for ours, theirs in zip(entry.cache, fresh, strict=True):
        assert ours.offset == theirs.offset == len(tokens)
        for a, b in zip(ours.state[:2], theirs.state[:2], strict=True):  # keys, values
            assert a.shape == b.shape and mx.allclose(a, b, atol=1e-4).item()
    # And the next turn, read from that cache, answers as an engine without any cache does.
    follow = ChatRequest(model="t", max_tokens=24, sampling=SamplingParams(temperature=0), messages=[
        ChatMessage(role="user", content=FOX), ChatMessage(role="assistant", content=first.text),
        ChatMessage(role="user", content="And then?")])  # fmt: skip
    second = await run(cached, follow)
    assert second.finished.usage.cache_read_input_tokens > 0
    assert second.outcome == (await run(make_engine(model, tokenizer, speculation=OFF), follow)).outcome


async def test_seeded_sampling_gives_the_same_tokens_with_or_without_speculation(tiny, make_engine) -> None:
    """Verification samples each position with that position's own noise, so a seed fixes the
    answer whichever path produced each token."""
    model, tokenizer = tiny
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    requests = [ask(p, 48, temperature=0.7, top_k=8, seed=seed) for seed, p in enumerate(PROMPTS)]
    fast = [await run(on, r) for r in requests]
    plain = [await run(off, r) for r in requests]
    assert [r.outcome for r in fast] == [r.outcome for r in plain]
    assert 0 < accepted(fast) < proposed(fast)
    again = await run(on, requests[0])
    assert again.outcome == fast[0].outcome
    other = await run(on, requests[0].model_copy(update={"sampling": SamplingParams(temperature=0.7, top_k=8, seed=99)}))
    assert other.tokens != fast[0].tokens


async def test_concurrent_requests_move_between_paths_with_speculation_in_flight(tiny, make_engine) -> None:
    """Sequences join and leave mid-decode: detach() and the batch take over their caches."""
    model, tokenizer = tiny
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    requests = [ask(p, 30 + 10 * i, **({"temperature": 0.8, "seed": i} if i % 2 else {})) for i, p in enumerate(PROMPTS)]
    alone = [await run(off, r) for r in requests]

    async def later(request: ChatRequest, delay: float) -> Run:
        await asyncio.sleep(delay)
        return await run(on, request)

    together = await asyncio.gather(*(later(r, 0.03 * i) for i, r in enumerate(requests)))
    assert [r.outcome for r in together] == [r.outcome for r in alone]
    assert on.load.active == 0


@pytest.fixture(scope="module")
def quantized_draft(tiny_model_dir: Path) -> DraftModel:
    small, _ = load(str(tiny_model_dir))
    nn.quantize(small, group_size=32, bits=4)
    mx.eval(small.parameters())  # here, not lazily on the compute thread
    return DraftModel(small)


async def test_a_draft_model_changes_no_answer(tiny, quantized_draft, make_engine) -> None:
    model, tokenizer = tiny
    drafted = make_engine(model, tokenizer, draft=quantized_draft)
    off = make_engine(model, tokenizer, speculation=OFF)
    requests = [ask(p, 40) for p in PROMPTS] + [ask(p, 40, temperature=0.7, top_k=8, seed=3) for p in PROMPTS]
    fast = [await run(drafted, r) for r in requests]
    plain = [await run(off, r) for r in requests]
    assert [r.outcome for r in fast] == [r.outcome for r in plain]
    assert 0 < accepted(fast) < proposed(fast)


async def test_speculation_that_does_not_pay_is_switched_off(tiny, tmp_path: Path, make_engine) -> None:
    """At a high temperature with a draft model of unrelated weights, the drafts are (almost)
    never right; after a few passes the sequence decodes plainly, probing only now and then."""
    model, tokenizer = tiny
    stranger, _ = load(str(make_random_model(tmp_path / "other", "tiny-llama", seed=7)))
    engine = make_engine(model, tokenizer, draft=DraftModel(stranger))
    request = ask("Write a story.", 300, temperature=1.5, seed=1)
    result = await run(engine, request)
    plain = await run(make_engine(model, tokenizer, speculation=OFF), request)
    assert result.outcome == plain.outcome
    passes, tokens = result.figures["decode_passes"], result.figures["decode_pass_tokens"]
    assert result.figures["speculation_acceptance"] < 0.2
    # Each verification proposes at least one draft: fewer drafts than a third of the passes
    # means most passes were plain.
    assert result.figures["speculation_proposed"] < passes / 3, result.figures
    assert tokens == 299  # all but the prompt pass's token


CODE = '''def add(a, b):
    return a + b


def scale(values, factor):
    return [v * factor for v in values]
'''


async def test_the_embedded_model_copying_code_gives_the_same_answer_faster_per_pass(make_engine) -> None:
    """A real model asked to repeat code from the prompt: the lookup proposes the code, the
    model accepts it, and the answer (to its end-of-turn token) is the plain one."""
    from pensieve.modelmgr import embedded_model_path
    from pensieve.modelmgr.gguf import load_gguf

    model, tokenizer, _ = load_gguf(embedded_model_path())
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    request = ask(f"Repeat this Python code exactly, in a code block:\n```python\n{CODE}```", 64)
    fast, plain = await run(on, request), await run(off, request)
    assert fast.outcome == plain.outcome
    assert fast.finished.stop_reason == "end_turn" and "def scale(values, factor):" in fast.text
    assert fast.figures["speculation_accepted"] >= 8
    assert fast.figures["tokens_per_pass"] > 1.2


NOTE = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["text", "count"],
    "additionalProperties": False,
}
SHAPES = {
    "json answer": {"response_format": ResponseFormat(json_schema=NOTE)},
    "forced call": {"tools": [ToolSpec(name="note", parameters=NOTE)], "tool_choice": "note"},
    "auto": {"tools": [ToolSpec(name="note", parameters=NOTE)]},
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_constrained_answers_are_token_for_token_those_of_plain_decoding(shape: str, tiny, quantized_draft, make_engine) -> None:
    """Under a grammar only the drafts it accepts are verified, each row masked as a plain step
    would be: greedy and seeded answers are unchanged, and the random model's runs of one
    token (inside a JSON string, or in free text before any call) are still accepted."""
    model, tokenizer = tiny
    engines = [make_engine(model, tokenizer), make_engine(model, tokenizer, draft=quantized_draft)]
    off = make_engine(model, tokenizer, speculation=OFF)
    requests = [ask(p, 64).model_copy(update=SHAPES[shape]) for p in PROMPTS]
    requests += [ask(p, 64, temperature=0.7, top_k=8, seed=i).model_copy(update=SHAPES[shape]) for i, p in enumerate(PROMPTS)]
    plain = [await run(off, r) for r in requests]
    for engine in engines:
        fast = [await run(engine, r) for r in requests]
        assert [r.outcome for r in fast] == [r.outcome for r in plain]
        assert 0 < accepted(fast) < proposed(fast)


async def test_the_embedded_model_with_tools_under_auto_answers_as_without_speculation(make_engine) -> None:
    """Claude Code's shape: tools under `tool_choice` auto, so the free text before any call is
    constrained too. A real model's answers, greedy, are the plain ones token for token (a
    rollback inside llguidance once made these answers empty), and prompt lookup still pays."""
    from pensieve.modelmgr import embedded_model_path
    from pensieve.modelmgr.gguf import load_gguf

    model, tokenizer, _ = load_gguf(embedded_model_path())
    on, off = make_engine(model, tokenizer), make_engine(model, tokenizer, speculation=OFF)
    tools = {"tools": [ToolSpec(name="edit_file", description="Replace text in a file.", parameters={
        "type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"}, "new": {"type": "string"}},
        "required": ["path", "old", "new"]})]}  # fmt: skip
    prompts = [f"In utils.py, rename add to plus:\n```python\n{CODE}```", f"Repeat this code:\n{CODE}", "Say hello."]
    fast = [await run(on, ask(p, 96).model_copy(update=tools)) for p in prompts]
    plain = [await run(off, ask(p, 96).model_copy(update=tools)) for p in prompts]
    assert [r.outcome for r in fast] == [r.outcome for r in plain]
    assert all(len(r.tokens) > 2 for r in plain)
    assert accepted(fast) >= 8
