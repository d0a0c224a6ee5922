"""Servers under test and the HTTP client that drives them, shared by the benchmark scripts.

Both servers are driven the same way: OpenAI-style streaming chat completions over loopback,
each server alone on the machine while it is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

API_KEY = "pensieve-local-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gpu_memory(pid: int) -> int | None:
    """Device memory of a process via nvidia-smi (CUDA backend), else None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        p, _, mib = line.partition(",")
        if p.strip() == str(pid):
            return int(mib.strip()) * 1024 * 1024
    return 0


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ServerProcess:
    """A server in a subprocess, with its readiness time and sampled peak memory."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float = 0.0
    peak_bytes: int = 0
    _sampling: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path, timeout: float = 900) -> None:
        started = time.perf_counter()
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-3000:]}")
            if self._answers():
                self.ready_s = time.perf_counter() - started
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {log.read_text()[-3000:]}")

    def _answers(self) -> bool:
        for path in ("/health", "/v1/models"):  # mlx_lm.server has no /health
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as r:
                    body = json.loads(r.read())
                    return path != "/health" or body.get("status") in ("ok", None)
            except urllib.error.HTTPError as exc:
                if exc.code == 503:  # Pensieve: up, still loading
                    return False
            except Exception:
                continue
        return False

    def _sample(self) -> None:
        while self._sampling and self.proc is not None and self.proc.poll() is None:
            gpu = _gpu_memory(self.proc.pid)
            self.peak_bytes = max(self.peak_bytes, gpu if gpu else _rss(self.proc.pid))
            time.sleep(0.2)

    def stop(self) -> None:
        self._sampling = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pensieve_server(model: str, port: int, home: Path, concurrency: int) -> ServerProcess:
    argv = [sys.executable, "-m", "pensieve.cli", "start", "--model", model, "--port", str(port)]
    env = {
        "PENSIEVE_HOME": str(home),
        "PENSIEVE_PERFORMANCE_MAX_CONCURRENT_REQUESTS": str(concurrency),
        "PENSIEVE_LOG_LEVEL": "WARNING",
    }
    return ServerProcess("pensieve", argv, port, env)


def mlx_lm_server(model: str, port: int) -> ServerProcess:
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", model, "--port", str(port), "--log-level", "WARNING"]
    return ServerProcess("mlx_lm.server", argv, port)


@dataclass
class StreamResult:
    ttft: float
    total: float
    tokens: int

    @property
    def decode_tps(self) -> float:
        span = self.total - self.ttft
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


MODEL_NAME = "default"
"""Sent as `model`: mlx_lm.server loads whatever it names, so the benchmark sets the model path."""


async def stream_chat(
    session: aiohttp.ClientSession, base_url: str, messages: list[dict], max_tokens: int
) -> tuple[StreamResult, str]:
    """One streaming chat completion; returns timings and the generated text."""
    body = {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    chunks, usage_tokens, text = 0, None, []
    async with session.post(
        f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    chunks += 1
                    text.append(piece)
    end = time.perf_counter()
    first = first or end
    return StreamResult(first - start, end - start, usage_tokens or chunks), "".join(text)


async def concurrent(base_url: str, prompts: list[list[dict]], max_tokens: int) -> tuple[float, list[StreamResult]]:
    """Run streams at once; returns aggregate generated tokens/s over the wall time."""
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(session, base_url, p, max_tokens) for p in prompts))
        wall = time.perf_counter() - start
    streams = [r for r, _ in results]
    return sum(r.tokens for r in streams) / wall, streams


def random_model(preset: str, bits: int | None, workdir: Path) -> Path:
    """A random-weight model of `preset`'s shape under `workdir`, built once (bfloat16 when
    quantized), whose answers run to max_tokens (`never_end`): the benchmarks time decoding."""
    import mlx.core as mx

    from pensieve.modelmgr.synthetic import make_random_model

    out = workdir / f"{preset}-{bits or 'f'}"
    if not (out / "config.json").exists():
        started = time.perf_counter()
        make_random_model(out, preset, bits=bits, dtype=mx.bfloat16 if bits else mx.float32, never_end=True)
        print(f"built {out} in {time.perf_counter() - started:.0f}s", flush=True)
    return out
