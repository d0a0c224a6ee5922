"""Claude Code-sized conversations within a Mac's memory budget: Pensieve beside mlx_lm.server.

    python benchmarks/long_context_bench.py [--preset qwen3-coder-30b-a3b] [--bits 4]
        [--budget-gb 24] [--prompt-tokens 21000] [--workdir DIR] [--quick]

Builds a random-weight model of a real architecture (default: Qwen3-Coder-30B-A3B's shape,
4-bit), then serves it with Pensieve under `model.memory_budget_gb` (default 24: a 32 GB Mac's
budget, 0.75 of its RAM) and `performance.weights_layout = "quantized"` (the layout a Mac
keeps), and with `mlx_lm.server`, one after the other. Each gets the same streamed requests:
one Claude Code-sized conversation (--prompt-tokens, a system prompt shared by all
conversations plus a question of its own), then three such conversations at once, then a
follow-up turn of each of the three at once. Reported per server: time to ready, time to first
token, decode tokens/s, aggregate tokens/s, failed requests, and peak memory (MLX's own peak
from Pensieve's /health, and the process's device memory sampled from nvidia-smi, or RSS).
`--quick` runs the tiny model with short prompts on any machine, to check the script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from pensieve.cli.bench import harness
from pensieve.cli.bench.harness import (
    ServerProcess,
    free_port,
    mlx_lm_server,
    pensieve_server,
    stream_chat,
)

WORDS = ["river", "stone", "maple", "cloud", "amber", "delta", "orbit", "piano", "lemon", "tiger"]


def text(n: int, seed: int) -> str:
    """About n tokens (each of these words is one token of the embedded tokenizer)."""
    return " ".join(WORDS[(i * 7 + i // 10 + seed) % 10] for i in range(n))


def conversations(prompt_tokens: int) -> list[list[dict[str, str]]]:
    """Three conversations: one ~90% shared system prompt (Claude Code's system prompt and
    tools), then a user turn of their own."""
    shared = text(int(prompt_tokens * 0.9), 0)
    return [
        [{"role": "system", "content": shared},
         {"role": "user", "content": f"Task {i}: " + text(prompt_tokens // 10, i + 1)}]
        for i in range(3)
    ]  # fmt: skip


async def turn(base: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[dict[str, float], str]:
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            result, answer = await stream_chat(session, base, messages, max_tokens)
        except aiohttp.ClientError as exc:
            return {"failed": 1.0, "error": str(exc)}, ""  # type: ignore[dict-item]
    return {"ttft": result.ttft, "decode": result.decode_tps, "tokens": float(result.tokens), "total": result.total}, answer


async def drive(base: str, convs: list[list[dict[str, str]]], max_tokens: int) -> dict[str, Any]:
    one, _ = await turn(base, convs[0], max_tokens)
    start = time.perf_counter()
    three = await asyncio.gather(*(turn(base, c, max_tokens) for c in convs))
    wall3 = time.perf_counter() - start
    follow = [[*c, {"role": "assistant", "content": answer or "ok"}, {"role": "user", "content": "Now the next step."}]
              for c, (_, answer) in zip(convs, three, strict=True)]  # fmt: skip
    start = time.perf_counter()
    again = await asyncio.gather(*(turn(base, c, max_tokens) for c in follow))
    wall_f = time.perf_counter() - start
    rows = [one, *(r for r, _ in three), *(r for r, _ in again)]
    ok3 = [r for r, _ in three if "ttft" in r]
    okf = [r for r, _ in again if "ttft" in r]
    return {
        "failed": sum(1 for r in rows if "ttft" not in r),
        "ttft_one_s": one.get("ttft"),
        "decode_one_tps": one.get("decode"),
        "ttft_three_median_s": statistics.median(r["ttft"] for r in ok3) if ok3 else None,
        "aggregate_three_tps": sum(r["tokens"] for r in ok3) / wall3 if ok3 else None,
        "ttft_follow_median_s": statistics.median(r["ttft"] for r in okf) if okf else None,
        "aggregate_follow_tps": sum(r["tokens"] for r in okf) / wall_f if okf else None,
    }


def health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
        return json.loads(response.read())


def run(server: ServerProcess, workdir: Path, convs: list[list[dict[str, str]]], max_tokens: int) -> dict[str, Any]:
    server.start(workdir / f"{server.name}.log")
    try:
        figures = asyncio.run(drive(server.base_url, convs, max_tokens))
        figures["ready_s"] = server.ready_s
        figures["process_peak_gb"] = server.peak_bytes / 1e9
        if server.name == "pensieve":
            state = health(server.base_url)
            model = next(m for m in state["models"] if m["state"] == "loaded")
            figures["mlx_peak_gb"] = state["memory"]["peak_bytes"] / 1e9
            figures["budget_gb"] = state["memory"]["budget_bytes"] / 1e9
            figures["window"] = model.get("context_length")
            figures["window_at_concurrency"] = model.get("concurrent_context_length")
            figures["kv"] = model.get("kv")
            figures["layout"] = model.get("layout")
        return figures
    finally:
        server.stop()



def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("time to ready, s", "ready_s"),
        (f"time to first token, one {args.prompt_tokens}-token conversation, s", "ttft_one_s"),
        ("decode, one conversation, tokens/s", "decode_one_tps"),
        ("time to first token, three at once (median), s", "ttft_three_median_s"),
        ("aggregate, three at once, tokens/s", "aggregate_three_tps"),
        ("time to first token, three follow-up turns at once (median), s", "ttft_follow_median_s"),
        ("aggregate, three follow-ups, tokens/s", "aggregate_follow_tps"),
        ("failed requests (of 7)", "failed"),
        ("process peak memory (device or RSS), GB", "process_peak_gb"),
        ("MLX peak memory (its own counter), GB", "mlx_peak_gb"),
    ]
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key in rows:
        cells = [results[n].get(key) for n in names]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else (f"{c:.3f}" if isinstance(c, float) else str(c)) for c in cells) + " |")
    p = results.get("pensieve", {})
    lines.append("")
    lines.append(f"Pensieve: budget {p.get('budget_gb', 0):.1f} GB, window {p.get('window')} tokens for one conversation, "
                 f"{p.get('window_at_concurrency')} each at the configured concurrency; layout {p.get('layout')}; KV {p.get('kv')}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen3-coder-30b-a3b")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--budget-gb", type=float, default=24.0)
    parser.add_argument("--prompt-tokens", type=int, default=21000)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip-mlx-lm", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model, short prompts: check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.bits, args.budget_gb, args.prompt_tokens, args.max_tokens = "tiny-llama", None, 2.0, 600, 8
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pensieve-long-"))
    model = str(harness.random_model(args.preset, args.bits, workdir))
    harness.MODEL_NAME = model  # mlx_lm.server loads the model a request names
    convs = conversations(args.prompt_tokens)
    results: dict[str, dict[str, Any]] = {}
    pensieve = pensieve_server(model, free_port(), workdir / "home", concurrency=5)
    pensieve.env.update({"PENSIEVE_MODEL_MEMORY_BUDGET_GB": str(args.budget_gb), "PENSIEVE_PERFORMANCE_WEIGHTS_LAYOUT": "quantized"})
    results["pensieve"] = run(pensieve, workdir, convs, args.max_tokens)
    print(json.dumps({"pensieve": results["pensieve"]}), flush=True)
    if not args.skip_mlx_lm:
        results["mlx_lm.server"] = run(mlx_lm_server(model, free_port()), workdir, convs, args.max_tokens)
    print(report(results, args))


if __name__ == "__main__":
    main()
