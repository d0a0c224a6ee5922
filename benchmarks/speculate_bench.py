"""Speculative decoding: Pensieve against itself with speculation off, and against mlx_lm.server.

    python benchmarks/speculate_bench.py [--quick] [--workdir DIR] [--json FILE]

Three workloads, each as single-stream decode tokens/s (best of the runs, counted from the first
to the last streamed token, as `pensieve bench` counts it) and as aggregate tokens/s of 5
concurrent streams (which Pensieve runs batched, without speculation):

  (a) code editing, embedded model (real weights; `--model DIR` for another): the prompt
      holds a file of ~1.4k tokens (the first 120 lines of Python's own textwrap.py) and asks
      for all of it back with one class renamed, so the answer should repeat the file with
      small changes. How much of the file the answer really holds is printed with it: the
      135M embedded model does not copy a file that long (it explains or loops instead),
      so its figure says how speculation does on what it writes, not on a faithful copy.
      Target: 2x or more over speculation off.
  (b) free prose. Target: 0.97x or more (never slower beyond noise).
  (c) the draft-model path: a random-weight Phi-3-mini-shaped target at 8 bits whose draft
      (`model.draft`) is the same weights at 4 bits, which agrees with it often even though
      the weights are random. mlx_lm.server runs once plain and once with `--draft-model`.

Every server runs alone while it is measured and is warmed up first (one request of each
workload). Pensieve's tokens per forward pass and acceptance rate come from its own
/v1/debug/requests. `--quick` shrinks everything (a shorter file, a few tokens, the tiny
random model for (c)) to prove the script runs, on a CPU too. Models are prepared into
`--workdir` and reused from there.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp

from pensieve.cli.bench import harness
from pensieve.cli.bench.compare import prepare_model
from pensieve.cli.bench.harness import (
    ServerProcess,
    concurrent,
    free_port,
    mlx_lm_server,
    pensieve_server,
    stream_chat,
)
from pensieve.cli.bench.profile import recent_profiles

PROSE = "Write a long story about a dragon who learns to paint."


@dataclass(frozen=True)
class Sizes:
    file_lines: int
    copy_tokens: int
    prose_tokens: int
    stream_tokens: int
    """max_tokens of each of the 5 concurrent streams."""
    runs: int
    synthetic: str
    """The random-weight preset of workload (c)."""


FULL = Sizes(file_lines=120, copy_tokens=1600, prose_tokens=256, stream_tokens=256, runs=2, synthetic="phi3-mini")
QUICK = Sizes(file_lines=12, copy_tokens=48, prose_tokens=24, stream_tokens=12, runs=1, synthetic="tiny-llama")


@dataclass
class Workload:
    name: str
    messages: list[dict[str, str]]
    max_tokens: int
    reference: str | None = None
    """The file the answer should repeat: how much of it the answer holds is reported."""


def copied(reference: str, answer: str) -> float:
    """Share of the reference's non-blank lines that the answer holds (renamed or not)."""
    wanted = [line.strip() for line in reference.splitlines() if line.strip()]
    held = {line.strip() for line in answer.replace("LineWrapper", "TextWrapper").splitlines()}
    return sum(line in held for line in wanted) / len(wanted)


def code_edit(sizes: Sizes) -> Workload:
    source = "".join(inspect.getsource(textwrap).splitlines(keepends=True)[: sizes.file_lines])
    ask = (
        f"Here is textwrap.py:\n```python\n{source}```\n"
        "Rename the class `TextWrapper` to `LineWrapper`, everywhere it appears. "
        "Reply with the whole updated file in one code block and nothing else."
    )
    return Workload("(a) code edit", [{"role": "user", "content": ask}], sizes.copy_tokens, source)


def prose(name: str, sizes: Sizes) -> Workload:
    return Workload(name, [{"role": "user", "content": PROSE}], sizes.prose_tokens)


@dataclass
class Contender:
    label: str
    make: Callable[[], ServerProcess]
    figures: dict[str, dict[str, float]] = field(default_factory=dict)


def pensieve(model: Path, home: Path, **env: str) -> Callable[[], ServerProcess]:
    def make() -> ServerProcess:
        server = pensieve_server(str(model), free_port(), home, 5)
        server.env.update(env)
        return server

    return make


def mlx_lm(model: Path, draft: Path | None = None) -> Callable[[], ServerProcess]:
    def make() -> ServerProcess:
        server = mlx_lm_server(str(model), free_port())
        if draft is not None:
            server.argv += ["--draft-model", str(draft)]
        return server

    return make


async def measure(server: ServerProcess, workloads: list[Workload], sizes: Sizes) -> dict[str, dict[str, float]]:
    url, out = server.base_url, {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        for w in workloads:  # warm-up: every shape of every workload compiles before timing
            await stream_chat(session, url, w.messages, min(w.max_tokens, 64))
        for w in workloads:
            answers = [await stream_chat(session, url, w.messages, w.max_tokens) for _ in range(sizes.runs)]
            runs = [r for r, _ in answers]
            figures = {"single_tps": max(r.decode_tps for r in runs), "tokens": median(r.tokens for r in runs)}
            if w.reference is not None:
                figures["copied"] = copied(w.reference, answers[-1][1])
            if server.name == "pensieve":
                profiles = [r["profile"] for r in recent_profiles(url, harness.API_KEY)[-sizes.runs :]]
                figures["tokens_per_pass"] = median(p.get("tokens_per_pass", 1.0) for p in profiles)
                figures["acceptance"] = median(p.get("speculation_acceptance", 0.0) for p in profiles)
            streams = [[{"role": "system", "content": f"stream {i}"}, *w.messages] for i in range(5)]
            figures["five_tps"] = (await concurrent(url, streams, sizes.stream_tokens))[0]
            out[w.name] = figures
            print(f"  {server.name} {w.name}: {figures}", flush=True)
    return out


def run_contenders(contenders: list[Contender], workloads: list[Workload], sizes: Sizes, model: Path, work: Path) -> None:
    harness.MODEL_NAME = str(model)  # mlx_lm.server loads what a request names
    for c in contenders:
        server = c.make()
        print(f"{c.label} ...", flush=True)
        server.start(work / f"{c.label.replace(' ', '_').replace(',', '')}.log")
        try:
            c.figures = asyncio.run(measure(server, workloads, sizes))
        finally:
            server.stop()


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def table(groups: list[tuple[list[Workload], list[Contender]]]) -> str:
    lines = ["| workload | measure | " + " | ".join(["contender", "tokens/s", "/ speculation off", "/ mlx_lm.server"]) + " |",
             "|---|---|---|---:|---:|---:|"]
    for workloads, contenders in groups:
        off = next(c for c in contenders if "off" in c.label)
        plain_mlx = next(c for c in contenders if c.label == "mlx_lm.server")
        for w in workloads:
            for key, measure in (("single_tps", "single-stream decode"), ("five_tps", "aggregate, 5 streams")):
                for c in contenders:
                    value = c.figures[w.name][key]
                    lines.append(f"| {w.name} | {measure} | {c.label} | {value:.1f} | "
                                 f"{ratio(value, off.figures[w.name][key])} | {ratio(value, plain_mlx.figures[w.name][key])} |")
    return "\n".join(lines)


def summary(groups: list[tuple[list[Workload], list[Contender]]]) -> str:
    lines = []
    for workloads, contenders in groups:
        spec, off = contenders[0], next(c for c in contenders if "off" in c.label)
        for w in workloads:
            f = spec.figures[w.name]
            fidelity = f", the answer holds {f['copied']:.0%} of the file's lines" if "copied" in f else ""
            lines.append(f"- {w.name}: {spec.label} {f['tokens_per_pass']:.2f} tokens per forward pass, "
                         f"{f['acceptance']:.0%} of proposals accepted, single stream "
                         f"{ratio(f['single_tps'], off.figures[w.name]['single_tps'])} of speculation off "
                         f"(answers of {f['tokens']:.0f} and {off.figures[w.name]['tokens']:.0f} tokens{fidelity})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
    parser.add_argument("--workdir", type=Path, help="keep prepared models here for the next run")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--only", choices=["embedded", "draft"], help="run one group of workloads: (a)+(b), or (c)")
    parser.add_argument("--file-lines", type=int, help="lines of textwrap.py in the code-edit prompt")
    parser.add_argument("--copy-tokens", type=int, help="max_tokens of the code-edit answer")
    parser.add_argument("--runs", type=int, help="single-stream runs per workload (the best counts)")
    parser.add_argument("--model", type=Path, help="an MLX model folder for (a) and (b) instead of the embedded model")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    changes = {"file_lines": args.file_lines, "copy_tokens": args.copy_tokens, "runs": args.runs}
    sizes = replace(sizes, **{k: v for k, v in changes.items() if v is not None})
    started = time.perf_counter()
    import mlx.core as mx

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        embedded = args.model or work / "smollm2-135m-instruct"
        if not (embedded / "config.json").is_file():
            prepare_model("embedded", work)
        target, draft = work / f"{sizes.synthetic}-8bit", work / f"{sizes.synthetic}-4bit"
        for path, bits in ((target, 8), (draft, 4)):
            if args.only != "embedded" and not (path / "config.json").is_file():
                from pensieve.modelmgr.synthetic import make_random_model

                make_random_model(path, sizes.synthetic, seed=0, bits=bits, dtype=mx.bfloat16, never_end=True)
        print(f"models ready in {time.perf_counter() - started:.0f}s", flush=True)
        home = work / "home"
        real = [code_edit(sizes), prose("(b) free prose", sizes)]
        real_contenders = [
            Contender("Pensieve", pensieve(embedded, home)),
            Contender("Pensieve, speculation off", pensieve(embedded, home, PENSIEVE_PERFORMANCE_SPECULATION="off")),
            Contender("mlx_lm.server", mlx_lm(embedded)),
        ]
        synthetic = [prose(f"(c) draft model, {sizes.synthetic} 8-bit, 4-bit draft", sizes)]
        draft_contenders = [
            Contender("Pensieve + draft", pensieve(target, home, PENSIEVE_MODEL_DRAFT=str(draft))),
            Contender("Pensieve, speculation off", pensieve(target, home, PENSIEVE_PERFORMANCE_SPECULATION="off")),
            Contender("mlx_lm.server", mlx_lm(target)),
            Contender("mlx_lm.server --draft-model", mlx_lm(target, draft)),
        ]
        measuring = time.perf_counter()
        groups = []
        if args.only != "draft":
            run_contenders(real_contenders, real, sizes, embedded, work)
            groups.append((real, real_contenders))
        if args.only != "embedded":
            run_contenders(draft_contenders, synthetic, sizes, target, work)
            groups.append((synthetic, draft_contenders))
    print(f"\nmachine: {sys.platform} {mx.default_device()}  mlx {mx.__version__}  "
          f"measured in {time.perf_counter() - measuring:.0f}s (all: {time.perf_counter() - started:.0f}s)\n")
    print(table(groups))
    print()
    print(summary(groups))
    if args.json is not None:
        raw: dict[str, Any] = {c.label + " | " + w.name: c.figures[w.name] for ws, cs in groups for c in cs for w in ws}
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
