"""Decode speed with and without constrained decoding, in-process, at 1 and 5 streams.

    .venv/bin/python benchmarks/structured_bench.py            # GPU: a Phi-3-mini-shaped 4-bit model
    .venv/bin/python benchmarks/structured_bench.py --quick    # any machine: the tiny model, few tokens

The model has random weights (`pensieve.modelmgr.synthetic`, the embedded tokenizer), so the
figures are about speed only. The constrained requests ask for a JSON array of objects (enum,
integer and string fields, keys forced by the grammar) that cannot close before `--tokens`
tokens, so every generated token is masked; the free requests generate as many tokens. Rows:
- `free` / `json`: all streams unconstrained / all constrained;
- `tools`: tools offered under `tool_choice` auto (Claude Code's case): the grammar follows the
  free text, waiting for a call's start marker, and masks nothing until one comes;
- `mixed`: one constrained stream among free ones, reporting the free streams' tokens/s (what
  unconstrained neighbours pay for sharing a batch with a grammar).
Each row is the best of `--runs` after a warm-up; `ratio` is against `free` at the same streams
(the target is >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from mlx_lm import load

from pensieve.engine import Engine, EngineConfig
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.models import (
    ChatMessage,
    ChatRequest,
    Finished,
    ResponseFormat,
    SamplingParams,
    ToolSpec,
)


def schema(min_items: int) -> dict:
    item = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["alpha", "beta", "gamma", "delta"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9999},
            "label": {"type": "string", "maxLength": 12},
        },
        "required": ["kind", "count", "label"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {"items": {"type": "array", "items": item, "minItems": min_items}}, "required": ["items"]}


TOOL = ToolSpec(name="record", description="Store a record.", parameters=schema(1)["properties"]["items"]["items"])


def request(i: int, tokens: int, mode: str) -> ChatRequest:
    return ChatRequest(
        model="bench",
        messages=[ChatMessage(role="user", content=f"List record number {i} and many more.")],
        max_tokens=tokens,
        sampling=SamplingParams(temperature=0.0),
        response_format=ResponseFormat(json_schema=schema(tokens)) if mode == "json" else None,
        tools=[TOOL] if mode == "tools" else [],
    )


async def measure(engine: Engine, reqs: list[ChatRequest]) -> tuple[float, float]:
    """(aggregate tokens/s of all streams, of the unconstrained ones), decode phase only."""
    spans: list[tuple[float, float, int, bool]] = []

    async def one(req: ChatRequest) -> None:
        first = None
        async for event in engine.generate(req):
            first = first or time.perf_counter()
            if isinstance(event, Finished):
                spans.append((first, time.perf_counter(), event.usage.output_tokens, req.response_format is None and not req.tools))

    await asyncio.gather(*(one(r) for r in reqs))

    def rate(rows: list[tuple[float, float, int, bool]]) -> float:
        """Tokens per second from the first token of any row to the end of the last."""
        return sum(n for _, _, n, _ in rows) / (max(e for _, e, _, _ in rows) - min(s for s, _, _, _ in rows)) if rows else 0.0

    return rate(spans), rate([s for s in spans if s[3]])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model and few tokens (CPU check)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per stream (default 256; 48 with --quick)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    tokens = args.tokens or (48 if args.quick else 256)
    with tempfile.TemporaryDirectory() as tmp:
        preset, bits = ("tiny-llama", None) if args.quick else ("phi3-mini", 4)
        model, tokenizer = load(str(make_random_model(Path(tmp) / preset, preset, bits=bits, never_end=True)))
    engine = Engine(model, tokenizer, name="bench", context_length=4096, config=EngineConfig(max_concurrent_requests=5))
    await engine.warmup()
    for mode in ("free", "json", "tools"):  # compile the grammars and the mask kernels
        await measure(engine, [request(0, 8, mode), request(1, 8, mode)])
    print(f"model {preset}{f' {bits}-bit' if bits else ''}, {tokens} tokens per stream, best of {args.runs}")
    print("| streams | mode | tokens/s | ratio |")
    print("|---|---|---|---|")
    for streams in (1, 5):
        free = 0.0
        modes = ("free", "json", "tools") if streams == 1 else ("free", "json", "tools", "mixed")
        for mode in modes:
            best = 0.0
            for _ in range(args.runs):
                reqs = [request(i, tokens, "json" if mode == "mixed" and i == 0 else mode) for i in range(streams)]
                total, unconstrained = await measure(engine, reqs)
                best = max(best, unconstrained if mode == "mixed" else total)
            if mode == "mixed":
                best *= streams / (streams - 1)  # per free stream, as in `free`: same batch size
            free = best if mode == "free" else free
            print(f"| {streams} | {mode} | {best:.1f} | {best / free:.2f} |", flush=True)
    engine.close()


if __name__ == "__main__":
    asyncio.run(main())
