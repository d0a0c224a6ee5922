"""One model over two GPUs (or two CPU processes): Pensieve under mlx.launch beside one GPU and mlx_lm.server.

    python benchmarks/distributed_bench.py [--preset qwen2.5-7b] [--bits 4] [--backend nccl]
        [--prompt-tokens 2000] [--max-tokens 256] [--workdir DIR] [--quick]

Builds a random-weight model of a real architecture (default: Qwen2.5-7B's shape, 4-bit;
mlx-lm can shard it, and its 28 heads and 4 KV heads split over two ranks) and serves it three
ways, one after the other, each alone on the machine:
- Pensieve on one GPU (`CUDA_VISIBLE_DEVICES=0`);
- Pensieve on two, `mlx.launch -n 2 --backend nccl pensieve start ...` (tensor parallel);
- `mlx_lm.server` on the same two, under the same `mlx.launch`.
Each gets the same streamed requests: a warm-up, one stream (decode tokens/s), five at once
(aggregate tokens/s and the median stream's), and three prompts of --prompt-tokens tokens one
at a time (time to first token, median; each prompt differs from its first token, so no prefix
cache helps). `--quick` runs the tiny model on the CPU with the ring backend, short prompts: it
checks the script, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from pensieve.cli.bench import harness
from pensieve.cli.bench.harness import (
    ServerProcess,
    concurrent,
    free_port,
    pensieve_server,
    stream_chat,
)

WORDS = ["river", "stone", "maple", "cloud", "amber", "delta", "orbit", "piano", "lemon", "tiger"]
LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"


def text(n: int, seed: int) -> str:
    """About n tokens (each of these words is one token of the embedded tokenizer)."""
    return " ".join(WORDS[(i * 7 + i // 10 + seed) % 10] for i in range(n))


class Launched(ServerProcess):
    """A server whose ranks `mlx.launch` starts; stopped by signalling every rank (the launcher
    itself, terminated, would leave them running)."""

    def stop(self) -> None:
        self._sampling = False
        if self.proc is None or self.proc.poll() is not None:
            return
        ranks = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in ranks:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            super().stop()


def servers(model: str, backend: str, workdir: Path) -> list[ServerProcess]:
    # mlx.launch as a module call and Pensieve's CLI as `-m`: the GPU machine installs the
    # packages onto PYTHONPATH, without console scripts.
    launch = [sys.executable, "-c", LAUNCH, "-n", "2", "--backend", backend]
    if backend == "ring":
        launch += ["--starting-port", str(free_port())]
    alone = pensieve_server(model, free_port(), workdir / "home-alone", concurrency=5)
    alone.env["CUDA_VISIBLE_DEVICES"] = "0"
    port = free_port()
    group = Launched("pensieve, 2 ranks", [*launch, sys.executable, "-m", "pensieve.cli", "start", "--model", model, "--port", str(port)], port,
                     {**pensieve_server(model, port, workdir / "home-group", concurrency=5).env})  # fmt: skip
    port = free_port()
    mlx_lm = Launched("mlx_lm.server, 2 ranks", [*launch, sys.executable, "-m", "mlx_lm", "server", "--model", model,
                      "--port", str(port), "--log-level", "WARNING"], port)  # fmt: skip
    alone.name = "pensieve, 1 rank"
    return [alone, group, mlx_lm]


async def measure(base: str, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    one = [[{"role": "user", "content": text(40, 1)}]]
    await concurrent(base, [[{"role": "user", "content": "warm up"}]], 8)
    _, (single,) = await concurrent(base, one, max_tokens)
    five = [[{"role": "user", "content": text(40, 10 + i)}] for i in range(5)]
    aggregate, streams = await concurrent(base, five, max_tokens)
    ttfts = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        for i in range(3):
            long = [{"role": "user", "content": f"{i} {WORDS[i]} " + text(prompt_tokens, 100 + i)}]
            result, _ = await stream_chat(session, base, long, 4)
            ttfts.append(result.ttft)
    return {
        "decode_1_tps": single.decode_tps,
        "decode_5_aggregate_tps": aggregate,
        "decode_5_median_stream_tps": statistics.median(s.decode_tps for s in streams),
        "ttft_long_s": statistics.median(ttfts),
    }


def describe(base: str) -> dict[str, Any]:
    """What Pensieve says it runs (mlx_lm.server has no /health)."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            state = json.loads(response.read())
    except Exception:
        return {}
    if "models" not in state:
        return {}
    model = next((m for m in state["models"] if m["state"] == "loaded"), {})
    group = state.get("distributed") or {}
    return {"layout": model.get("layout"), "backend": group.get("backend"), "device": state["device"]["name"]}


def run(server: ServerProcess, workdir: Path, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    server.start(workdir / f"{server.name.replace(' ', '_').replace(',', '')}.log")
    try:
        figures = asyncio.run(measure(server.base_url, prompt_tokens, max_tokens))
        figures.update(ready_s=server.ready_s, **describe(server.base_url))
        return figures
    finally:
        server.stop()


def report(results: dict[str, dict[str, Any]], prompt_tokens: int) -> str:
    rows = [
        ("time to ready, s", "ready_s"),
        ("decode, one stream, tokens/s", "decode_1_tps"),
        ("decode, five streams, aggregate tokens/s", "decode_5_aggregate_tps"),
        ("decode, five streams, median stream tokens/s", "decode_5_median_stream_tps"),
        (f"time to first token, {prompt_tokens}-token prompt (median of 3), s", "ttft_long_s"),
    ]
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key in rows:
        cells = [results[n].get(key) for n in names]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    for name in names:
        if results[name].get("layout"):
            lines.append(f"\n{name}: layout {results[name]['layout']}, on {results[name].get('device')}")
    return "\n".join(lines)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen2.5-7b")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--backend", default="nccl", choices=["nccl", "ring", "jaccl"])
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny model on the CPU, ring backend: check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.bits, args.backend, args.prompt_tokens, args.max_tokens = "tiny-llama", None, "ring", 200, 16
    # mlx.launch forwards its stdin to the ranks and, given /dev/null, polls its end in a loop
    # (a core's worth of CPU while measuring): hand it a pipe that stays open instead.
    keep, _ = os.pipe()
    os.dup2(keep, 0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pensieve-distributed-"))
    model = str(harness.random_model(args.preset, args.bits, workdir))
    harness.MODEL_NAME = model  # mlx_lm.server loads the model a request names
    results: dict[str, dict[str, Any]] = {}
    for server in servers(model, args.backend, workdir):
        results[server.name] = run(server, workdir, args.prompt_tokens, args.max_tokens)
        print(json.dumps({server.name: results[server.name]}), flush=True)
    print(report(results, args.prompt_tokens))


if __name__ == "__main__":
    main()
