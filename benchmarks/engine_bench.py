"""Pensieve's engine in-process (no HTTP) against mlx-lm's `batch_generate` on the same prompts.

    python benchmarks/engine_bench.py MODEL_DIR [--tokens N]

Separates what the scheduler costs from what HTTP costs: aggregate tokens/s at 1, 3 and 5
concurrent sequences, each measured twice after a warm-up, best run reported.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from mlx_lm import batch_generate, load

from pensieve.engine import Engine, EngineConfig
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams


def requests(n: int, tokens: int) -> list[ChatRequest]:
    return [
        ChatRequest(
            model="bench",
            messages=[ChatMessage(role="user", content=f"Tell story number {i} about a dragon.")],
            max_tokens=tokens,
            sampling=SamplingParams(temperature=0.0),
        )
        for i in range(n)
    ]


async def engine_tps(engine: Engine, reqs: list[ChatRequest]) -> float:
    async def one(req: ChatRequest) -> int:
        async for event in engine.generate(req):
            if isinstance(event, Finished):
                return event.usage.output_tokens
        return 0

    start = time.perf_counter()
    produced = await asyncio.gather(*(one(r) for r in reqs))
    return sum(produced) / (time.perf_counter() - start)


def mlx_lm_tps(model, tokenizer, engine: Engine, reqs: list[ChatRequest]) -> float:
    prompts = [engine.prepare(r).tokens for r in reqs]
    start = time.perf_counter()
    result = batch_generate(model, tokenizer, prompts, max_tokens=reqs[0].max_tokens)
    return result.stats.generation_tokens / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    engine = Engine(model, tokenizer, name="bench", context_length=4096, config=EngineConfig(max_concurrent_requests=8))
    await engine.warmup()
    mlx_lm_tps(model, tokenizer, engine, requests(2, 8))
    print("| streams | Pensieve engine, tokens/s | mlx-lm batch_generate, tokens/s | ratio |")
    print("|---:|---:|---:|---:|")
    for n in (1, 3, 5):
        reqs = requests(n, args.tokens)
        ours = max([await engine_tps(engine, reqs) for _ in range(2)])
        theirs = max(mlx_lm_tps(model, tokenizer, engine, reqs) for _ in range(2))
        print(f"| {n} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |", flush=True)
    engine.close()


if __name__ == "__main__":
    asyncio.run(main())
