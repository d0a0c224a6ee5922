"""mlx-lm called directly, in this process: the ceiling an HTTP server can approach.

Run as a script (`python -m pensieve.cli.bench.inprocess MODEL_DIR`); prints one JSON object with
single-stream decode tokens/s (`stream_generate`), aggregate tokens/s at 5 sequences
(`batch_generate`), weight bytes and measured memory bandwidth.

With `--serve` it loads the model once and answers each line `decode N` on stdin with one
JSON line `{"tps": ...}`, so the benchmark can alternate it with HTTP decodes and compare runs
taken a second apart (on a shared host, runs minutes apart differ by 10% or more).
"""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import batch_generate, load, stream_generate
from mlx_lm.sample_utils import make_sampler


def memory_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of a large elementwise copy: one read and one write of every byte."""
    a = mx.ones((nbytes // 4,), dtype=mx.float32)
    mx.eval(a)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        b = a + 1.0
        mx.eval(b)
        best = min(best, time.perf_counter() - start)
        del b
    return 2 * nbytes / best


def decode_tps(model, tokenizer, prompt: list[int], max_tokens: int) -> float:
    first = None
    count = 0
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(0.0)):
        count += 1
        if first is None:
            first = time.perf_counter()
    return (count - 1) / (time.perf_counter() - first) if count > 1 else 0.0


def batch_tps(model, tokenizer, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    result = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens)
    return result.stats.generation_tokens / (time.perf_counter() - start)


def load_warm(path: str):
    """The model, its tokenizer and the decode prompt, after one short decode (kernels compile
    on first use)."""
    model, tokenizer = load(path)
    prompt = tokenizer.encode("Write a long story about a dragon who learns to paint.")
    decode_tps(model, tokenizer, prompt, 16)
    return model, tokenizer, prompt


def serve(path: str) -> None:
    model, tokenizer, prompt = load_warm(path)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, count = line.split()
        if command != "decode":
            raise SystemExit(f"unknown command {command!r}; the only one is `decode N`")
        print(json.dumps({"tps": decode_tps(model, tokenizer, prompt, int(count))}), flush=True)


def main() -> None:
    if sys.argv[-1] == "--serve":
        serve(sys.argv[1])
        return
    path, max_tokens = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 256
    model, tokenizer, prompt = load_warm(path)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    prompts = [tokenizer.encode(f"Story number {i}: once upon a time") for i in range(5)]
    batch_tps(model, tokenizer, prompts, 8)
    out = {
        "weight_bytes": weight_bytes,
        "bandwidth_bytes_s": memory_bandwidth(),
        "stream_generate_tps": max(decode_tps(model, tokenizer, prompt, max_tokens) for _ in range(5)),
        "batch_generate_5_tps": batch_tps(model, tokenizer, prompts, max_tokens),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
