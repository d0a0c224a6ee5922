"""Soak: concurrent streaming clients against a real `pensieve start`, for a bounded time.

    python benchmarks/soak.py [--minutes 10] [--clients 5] [--json figures.json]

Starts the server on the tiny random-weight fixture model (or --model) on a loopback port,
then keeps --clients streaming requests in flight, alternating the Anthropic and OpenAI APIs
with varied prompts and lengths, until the time or the request budget is spent. Every stream
is checked to its end (`message_stop`, or `[DONE]` after a finish reason, with no error
event); anything else is a failure. Reported: requests served, failures by kind, p50/p99 time
to first token (client side), and the server's memory (process RSS and MLX active) when ready,
after the warm-up and at the end. The two later samples are taken with no request in flight,
so they compare like with like; growth between them beyond --max-growth percent, or any
failure, makes the exit status 1. docs/reliability.md keeps the last figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pensieve.cli.bench.harness import API_KEY, ServerProcess, free_port, pensieve_server

REQUEST_TIMEOUT_S = 120.0


@dataclass
class Memory:
    rss_bytes: int
    mlx_active_bytes: int
    prefix_cache_bytes: int = 0
    """Of the MLX memory, what the prefix cache holds (bounded by the KV budget and its entries)."""


@dataclass
class Figures:
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    memory: dict[str, Memory] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from `ps` (Linux and macOS alike)."""
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=10).stdout
    return int(out.strip() or 0) * 1024


def memory(server: ServerProcess) -> Memory:
    assert server.proc is not None
    with urllib.request.urlopen(f"{server.base_url}/health", timeout=10) as response:
        state = json.loads(response.read())
    cached = sum((m.get("kv") or {}).get("prefix_cache_bytes", 0) for m in state["models"])
    return Memory(rss_bytes(server.proc.pid), state["memory"]["active_bytes"], cached)


def request_body(api: str, n: int, max_tokens: int) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The n-th request: path, body and headers, varied so prompts and lengths differ."""
    prompt = f"Request {n}: write about topic {n % 23} in {3 + n % 5} sentences."
    body = {
        "model": "soak",
        "max_tokens": 8 + (n * 7) % max(1, max_tokens - 7),
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    if api == "anthropic":
        return "/v1/messages", body, {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body, {"Authorization": f"Bearer {API_KEY}"}


async def one_stream(session: aiohttp.ClientSession, base: str, api: str, n: int, max_tokens: int, figures: Figures) -> None:
    """Run the n-th request to its end; count it served, or count its failure."""
    path, body, headers = request_body(api, n, max_tokens)
    started = time.perf_counter()
    first: float | None = None
    last: Any = None
    tokens = 0
    try:
        async with session.post(base + path, json=body, headers=headers) as response:
            if response.status != 200:
                figures.fail(f"http {response.status}")
                return
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                last = line[6:] if line == "data: [DONE]" else json.loads(line[6:])
                if isinstance(last, dict) and (last.get("type") == "error" or "error" in last):
                    figures.fail("error event")
                    return
                if first is None and _has_text(last):
                    first = time.perf_counter()
                tokens = _usage(last, tokens)
    except (aiohttp.ClientError, TimeoutError) as exc:
        figures.fail(type(exc).__name__)
        return
    if not _ended(last):
        figures.fail("stream cut short")
        return
    figures.requests += 1
    figures.tokens += tokens
    if first is not None:
        figures.ttft_s.append(first - started)


def _has_text(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    if event.get("type") == "content_block_delta":
        return True
    return any((c.get("delta") or {}).get("content") for c in event.get("choices", []))


def _usage(event: Any, tokens: int) -> int:
    if isinstance(event, dict) and event.get("type") == "message_delta":
        return event["usage"]["output_tokens"]
    if isinstance(event, dict) and event.get("usage"):
        return event["usage"]["completion_tokens"]
    return tokens


def _ended(last: Any) -> bool:
    return last == "[DONE]" or (isinstance(last, dict) and last.get("type") == "message_stop")


class Clients:
    """`count` workers sending requests back to back; they can be paused for a quiet sample."""

    def __init__(self, base: str, count: int, max_tokens: int, max_requests: int, figures: Figures) -> None:
        self.base, self.count, self.max_tokens, self.max_requests = base, count, max_tokens, max_requests
        self.figures = figures
        self.sent = 0
        self.busy = 0
        self.running = asyncio.Event()
        self.running.set()
        self.stop_at = 0.0

    async def worker(self, session: aiohttp.ClientSession, index: int) -> None:
        while time.monotonic() < self.stop_at and self.sent < self.max_requests:
            await self.running.wait()
            if time.monotonic() >= self.stop_at:
                return
            n, self.sent = self.sent, self.sent + 1
            self.busy += 1
            try:
                api = "anthropic" if (n + index) % 2 == 0 else "openai"
                await one_stream(session, self.base, api, n, self.max_tokens, self.figures)
            finally:
                self.busy -= 1

    async def quiet(self) -> None:
        """Hold new requests and wait (bounded) for those in flight to finish."""
        self.running.clear()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the server finishes its bookkeeping after the last byte

    async def run(self, seconds: float, warmup: float, sample: Any) -> None:
        self.stop_at = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            workers = [asyncio.create_task(self.worker(session, i)) for i in range(self.count)]
            await asyncio.sleep(min(warmup, seconds))
            await self.quiet()
            self.figures.memory["after_warmup"] = await asyncio.to_thread(sample)
            self.stop_at = time.monotonic() + max(0.0, seconds - warmup)  # the quiet spell is not load time
            self.running.set()
            await asyncio.gather(*workers)
            await self.quiet()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def growth(figures: Figures, key: str) -> float:
    before = getattr(figures.memory["after_warmup"], key)
    after = getattr(figures.memory["end"], key)
    return 100.0 * (after - before) / before if before else 0.0


def machine() -> dict[str, Any]:
    import mlx.core as mx

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pensieve-soak-"))
    model = args.model
    if model is None:
        from pensieve.modelmgr.synthetic import make_random_model

        model = str(make_random_model(workdir / "tiny-llama", "tiny-llama", seed=0))
    server = pensieve_server(model, free_port(), workdir / "home", args.clients)
    figures = Figures()
    server.start(workdir / "server.out", timeout=300)
    started = time.perf_counter()
    try:
        figures.memory["ready"] = memory(server)
        clients = Clients(server.base_url, args.clients, args.max_tokens, args.max_requests, figures)
        asyncio.run(clients.run(args.minutes * 60, args.warmup, lambda: memory(server)))
        figures.memory["end"] = memory(server)
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    attempted = figures.requests + sum(figures.failures.values())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "settings": {"minutes": args.minutes, "clients": args.clients, "warmup_s": args.warmup, "max_tokens": args.max_tokens, "model": args.model or "tiny-llama (random weights)"},
        "elapsed_s": round(elapsed, 1),
        "requests_served": figures.requests,
        "requests_attempted": attempted,
        "failures": figures.failures,
        "tokens_generated": figures.tokens,
        "ttft_p50_s": round(statistics.median(figures.ttft_s), 4) if figures.ttft_s else None,
        "ttft_p99_s": round(percentile(figures.ttft_s, 0.99), 4) if figures.ttft_s else None,
        "memory": {k: asdict(v) for k, v in figures.memory.items()},
        "growth_after_warmup_pct": {"rss": round(growth(figures, "rss_bytes"), 2), "mlx_active": round(growth(figures, "mlx_active_bytes"), 2)},
        "peak_rss_bytes": server.peak_bytes,
    }


def report(result: dict[str, Any]) -> str:
    mib = 1024 * 1024
    mem = result["memory"]
    rows = [
        f"soak: {result['settings']['clients']} streaming clients for {result['settings']['minutes']:g} min on {result['settings']['model']} ({result['date']})",
        f"  requests served      {result['requests_served']} of {result['requests_attempted']}",
        f"  failures             {sum(result['failures'].values())} {result['failures'] or ''}",
        f"  tokens generated     {result['tokens_generated']}",
        f"  time to first token  p50 {result['ttft_p50_s']}s  p99 {result['ttft_p99_s']}s",
        "  memory               ready    after warm-up   end",
        f"    RSS (MiB)          {mem['ready']['rss_bytes'] / mib:7.1f}  {mem['after_warmup']['rss_bytes'] / mib:13.1f}  {mem['end']['rss_bytes'] / mib:6.1f}",
        f"    MLX active (MiB)   {mem['ready']['mlx_active_bytes'] / mib:7.2f}  {mem['after_warmup']['mlx_active_bytes'] / mib:13.2f}  {mem['end']['mlx_active_bytes'] / mib:6.2f}",
        f"     prefix cache      {mem['ready']['prefix_cache_bytes'] / mib:7.2f}  {mem['after_warmup']['prefix_cache_bytes'] / mib:13.2f}  {mem['end']['prefix_cache_bytes'] / mib:6.2f}",
        f"  growth after warm-up RSS {result['growth_after_warmup_pct']['rss']:+.2f}%  MLX active {result['growth_after_warmup_pct']['mlx_active']:+.2f}%",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="load time, warm-up included (default 10)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline memory sample (default 60)")
    parser.add_argument("--clients", type=int, default=5, help="concurrent streaming clients (default 5)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="longest answer asked for (default 64)")
    parser.add_argument("--model", help="model to serve (default: the tiny random-weight fixture model)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="memory growth after warm-up that fails the run, in percent")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = soak(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    worst = max(result["growth_after_warmup_pct"].values())
    ok = not result["failures"] and worst <= args.max_growth
    print("PASS" if ok else f"FAIL: {sum(result['failures'].values())} failures, memory growth {worst:+.2f}% (limit {args.max_growth}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
