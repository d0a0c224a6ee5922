"""Claude Code's first request, cold, from memory, and from disk after a restart.

    python benchmarks/disk_cache_bench.py             # Qwen2.5-7B-shaped, 4-bit (a GPU or a Mac)
    python benchmarks/disk_cache_bench.py --quick     # a one-layer tiny model: proves the script runs

The request is the one the real Claude Code CLI sends first (tests/fixtures/, ~21k tokens of
system prompt and tools), streamed to a `pensieve start` server with `max_tokens` 1, so the
client's wall time is its time to first token. A synthetic model of the real shape serves it
(random weights: the timings are real, the answers are not).

1. cold: a fresh server, an empty disk tier;
2. from memory: a new session on the same server (same system prompt and tools, another question);
3. from disk: the server restarted (the prefix read back from disk at load), another new session.

Each row gives the client's time, the server's prefill time (`/v1/debug/requests`), and the
cached-token count that `message_start` reported before any token.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlx.core as mx

from pensieve.cli.bench.harness import API_KEY, free_port, pensieve_server
from pensieve.modelmgr.synthetic import PRESETS, make_random_model
from pensieve.utils import prefix_folder

REQUEST = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "claude_code_first_request.json"
QUESTIONS = ("Say hello.", "List the files in this project.", "Which tests are slow?")


def model_dir(work: Path, quick: bool) -> Path:
    """The synthetic model, made once per work folder."""
    if quick:
        PRESETS["tiny-llama-1layer"] = {**PRESETS["tiny-llama"], "num_hidden_layers": 1}
        preset, kwargs = "tiny-llama-1layer", {}
    else:
        preset, kwargs = "qwen2.5-7b", {"bits": 4, "dtype": mx.bfloat16}
    path = work / preset
    if not (path / "config.json").exists():
        start = time.perf_counter()
        make_random_model(path, preset, context_length=32768, **kwargs)
        print(f"made {preset} in {time.perf_counter() - start:.1f}s")
    return path


def session(question: str) -> dict[str, Any]:
    """Claude Code's first request with another first question (a new session, or a subagent)."""
    body = json.loads(REQUEST.read_text())
    text = json.dumps(body["messages"]).replace(QUESTIONS[0], question)
    return {**body, "messages": json.loads(text), "max_tokens": 1, "stream": True}


def send(base_url: str, body: dict[str, Any]) -> tuple[float, dict[str, int]]:
    """Wall time of one streamed request, and the usage its `message_start` carried."""
    request = urllib.request.Request(
        f"{base_url}/v1/messages", data=json.dumps(body).encode(), method="POST",
        headers={"x-api-key": API_KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"},
    )  # fmt: skip
    start = time.perf_counter()
    usage: dict[str, int] = {}
    with urllib.request.urlopen(request, timeout=900) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:") and not usage:
                data = json.loads(line[5:])
                if data.get("type") == "message_start":
                    usage = data["message"]["usage"]
    return time.perf_counter() - start, usage


def server_prefill(base_url: str) -> float:
    request = urllib.request.Request(f"{base_url}/v1/debug/requests", headers={"x-api-key": API_KEY})
    with urllib.request.urlopen(request, timeout=30) as response:
        recent = json.loads(response.read())["requests"]
    return next(r for r in reversed(recent) if r["path"].startswith("/v1/messages"))["profile"]["prefill_s"]


def run(work: Path, quick: bool) -> None:
    model = model_dir(work, quick)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    rows: list[tuple[str, float, float, dict[str, int]]] = []

    def serve(label: str) -> Any:
        server = pensieve_server(str(model), free_port(), home, concurrency=2)
        server.env["PENSIEVE_LOG_LEVEL"] = "INFO"
        server.start(work / f"{label}.log")
        return server

    first = serve("first")
    try:
        for label, question in (("cold (fresh server)", QUESTIONS[0]), ("new session, from memory", QUESTIONS[1])):
            wall, usage = send(first.base_url, session(question))
            rows.append((label, wall, server_prefill(first.base_url), usage))
    finally:
        first.stop()  # SIGTERM: in-flight writes to the disk tier finish before the exit
    files, nbytes = prefix_folder.usage(home / "state" / "prefix-cache")

    second = serve("second")
    try:
        wall, usage = send(second.base_url, session(QUESTIONS[2]))
        rows.append(("new session after a restart (disk)", wall, server_prefill(second.base_url), usage))
    finally:
        second.stop()
    read_back = re.search(r"read \d+ prefixes .* in ([\d.]+)s", (work / "second.log").read_text())

    prompt = rows[0][3]["input_tokens"] + rows[0][3]["cache_read_input_tokens"]
    print(f"\nClaude Code's first request: {prompt} tokens, {model.name}, MLX {mx.__version__} on {mx.default_device()}")
    print(f"{'':38}{'to first token':>16}{'server prefill':>16}{'cached (message_start)':>24}")
    for label, wall, prefill, usage in rows:
        print(f"{label:38}{wall:>14.2f} s{prefill:>14.2f} s{usage['cache_read_input_tokens']:>24}")
    print(f"disk tier after the first server: {files} file(s), {nbytes / 1e9:.2f} GB; "
          f"read back at the restart in {read_back[1] if read_back else '?'} s (before the server reported ready)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a one-layer tiny model: checks the script, not the speed")
    parser.add_argument("--work", type=Path, help="folder for the model and the servers' homes (kept; default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pensieve-disk-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run(work, args.quick)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
