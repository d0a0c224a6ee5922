"""Reading a GGUF header: Pensieve's walk against the `gguf` package's GGUFReader, same file.

    python benchmarks/gguf_header_bench.py [GGUF_FILE] [--runs N]

The figure behind `pensieve.modelmgr.gguf.header` keeping its own walk: GGUFReader decodes every
vocabulary entry and merge, which `models list`, the memory estimate and the pre-load check do
not need. Defaults to the embedded SmolLM2 file; prints the best of N runs of each, and the peak
resident memory of a process that has done both.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gguf import GGUFReader

from pensieve.modelmgr.embedded import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf_header


def best_seconds(read: Callable[[Path], Any], path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    path = args.path or embedded_model_path()
    walk = best_seconds(read_gguf_header, path, args.runs)
    reader = best_seconds(GGUFReader, path, args.runs)
    header = read_gguf_header(path)
    tokens = len(header.metadata.get("tokenizer.ggml.tokens", ()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)
    print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB, {len(header.tensors)} tensors, {tokens} tokens")
    print(f"read_gguf_header  {walk * 1000:8.1f} ms  (best of {args.runs})")
    print(f"gguf.GGUFReader   {reader * 1000:8.1f} ms  ({reader / walk:.0f}x)")
    print(f"peak RSS of this process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
