"""What a quantized KV cache costs: quality on the embedded model, speed at 1 and 5 streams.

    python benchmarks/kv_quant_bench.py [--model embedded|PATH] [--tokens 512] [--quick]

Quality: the embedded model (real weights) writes `--tokens` tokens greedily with an ordinary
cache; the same tokens are then fed through caches quantized to 8 and 4 bits (teacher forcing,
so every position compares like with like), and the logits at each position are compared with
the unquantized ones: maximum and mean absolute difference, and how often the greedy token is
the same. Speed: the engine in-process (no HTTP), prefill of a ~2k-token prompt, single-stream
decode, and aggregate decode of 5 concurrent streams, for each width. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import mlx.core as mx

from pensieve.engine import Engine, EngineConfig
from pensieve.engine.quantized_cache import make_cache
from pensieve.metal import device_info
from pensieve.metal.layout import apply_layout, choose_layout
from pensieve.metal.memory import memory_budget_bytes
from pensieve.models import ChatMessage, ChatRequest, Finished, SamplingParams
from pensieve.utils.blas import openblas_loaded

WIDTHS: tuple[int | None, ...] = (None, 8, 4)


def load(spec: str) -> tuple[Any, Any, Any]:
    """The model, its tokenizer, and the twin batches run on (None: the model itself)."""
    if spec == "embedded":
        from pensieve.modelmgr.embedded import embedded_model_path
        from pensieve.modelmgr.gguf import load_gguf

        model, tokenizer, _ = load_gguf(embedded_model_path())
    else:
        from mlx_lm import load as mlx_load

        model, tokenizer = mlx_load(spec)[:2]
    return model, tokenizer, as_served(model)


def as_served(model: Any) -> Any:
    """Lay the weights out as `pensieve start` would (`metal/layout.py`: float32 on a Linux CPU
    with OpenBLAS preloaded, a bfloat16 twin for batches on CUDA), so the speed columns are the
    server's; returns the batch twin, if any. Run it under
    `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0` on Linux, as the server runs itself;
    without it MLX's reference BLAS and its quantized CPU kernels are several times slower."""
    backend = device_info().backend
    return apply_layout(model, choose_layout(model, memory_budget_bytes(), "auto", backend, openblas_loaded()), backend)


def teacher_forced_logits(model: Any, prompt: list[int], tokens: list[int], bits: int | None) -> mx.array:
    """Logits at every generated position, feeding `tokens` one at a time after the prompt."""
    cache = make_cache(model, bits)
    rows = [model(mx.array(prompt)[None], cache=cache)[0, -1]]
    for token in tokens[:-1]:
        rows.append(model(mx.array([[token]]), cache=cache)[0, -1])
        mx.eval(rows[-1])
    return mx.stack(rows).astype(mx.float32)


def quality(model: Any, tokenizer: Any, n: int) -> dict[int | None, tuple[float, float, float]]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a detailed essay about the history of rivers and the cities built on them."}],
        add_generation_prompt=True,
    )
    cache = make_cache(model, None)
    logits = model(mx.array(prompt)[None], cache=cache)[0, -1]
    tokens = []
    for _ in range(n):  # greedy, not stopping at end-of-text: n positions to compare
        tokens.append(int(mx.argmax(logits).item()))
        logits = model(mx.array([[tokens[-1]]]), cache=cache)[0, -1]
    reference = teacher_forced_logits(model, prompt, tokens, None)
    out: dict[int | None, tuple[float, float, float]] = {}
    for bits in WIDTHS:
        got = reference if bits is None else teacher_forced_logits(model, prompt, tokens, bits)
        diff = mx.abs(got - reference)
        agree = mx.mean((mx.argmax(got, axis=-1) == mx.argmax(reference, axis=-1)).astype(mx.float32))
        out[bits] = (diff.max().item(), diff.mean().item(), agree.item())
    return out


def request(text: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content=text)], max_tokens=max_tokens,
                       sampling=SamplingParams(temperature=0.0))  # fmt: skip


async def finish(engine: Engine, req: ChatRequest) -> Finished:
    async for event in engine.generate(req):
        if isinstance(event, Finished):
            return event
    raise RuntimeError("no Finished event")


async def speed(model: Any, tokenizer: Any, twin: Any, bits: int | None, decode_tokens: int, prompt_words: int) -> tuple[float, float, float]:
    """(prefill tokens/s, single-stream decode tokens/s, aggregate tokens/s at 5 streams)."""
    engine = Engine(model, tokenizer, name="m", context_length=32768,
                    config=EngineConfig(kv_bits=bits, prefix_cache_bytes=0), batch_model=twin)  # fmt: skip
    try:
        await finish(engine, request("warm up " * 40, 8))
        long = request(" ".join(f"word{i}" for i in range(prompt_words)), 1)
        done = await finish(engine, long)
        prefill = done.usage.input_tokens / done.timings["prefill_s"]
        one = await finish(engine, request("Tell me a long story about a lighthouse.", decode_tokens))
        decode = (one.usage.output_tokens - 1) / one.timings["decode_s"]
        start = time.perf_counter()
        many = await asyncio.gather(*(finish(engine, request(f"Story {i} about the sea.", decode_tokens)) for i in range(5)))
        aggregate = sum(f.usage.output_tokens for f in many) / (time.perf_counter() - start)
        return prefill, decode, aggregate
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--tokens", type=int, default=512, help="generated tokens compared for quality")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, to check the script runs")
    args = parser.parse_args()
    n, decode_tokens, prompt_words = (32, 16, 200) if args.quick else (args.tokens, 128, 1000)
    model, tokenizer, twin = load(args.model)
    print(f"MLX {mx.__version__} on {mx.default_device()}; model {args.model}; OpenBLAS {openblas_loaded()}", flush=True)
    started = time.perf_counter()
    scores = quality(model, tokenizer, n)
    print(f"quality over {n} tokens: {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for bits in WIDTHS:
        rows.append((bits, scores[bits], asyncio.run(speed(model, tokenizer, twin, bits, decode_tokens, prompt_words))))
        print(f"speed, {bits or 'unquantized'} KV: done at {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n| KV cache | max abs logit diff | mean abs logit diff | greedy agreement ({n} tokens) "
          "| prefill tok/s | decode tok/s | 5 streams tok/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bits, (high, mean, agree), (prefill, decode, aggregate) in rows:
        label = "unquantized" if bits is None else f"{bits}-bit"
        print(f"| {label} | {high:.4f} | {mean:.4f} | {agree:.1%} | {prefill:.0f} | {decode:.1f} | {aggregate:.1f} |")


if __name__ == "__main__":
    main()
