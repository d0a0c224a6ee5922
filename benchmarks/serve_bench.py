"""Pensieve against mlx_lm.server on the same model: `python benchmarks/serve_bench.py --help`.

The benchmark itself ships with the CLI as `pensieve bench` (pensieve.cli.bench.compare).
"""

from pensieve.cli.bench import bench

if __name__ == "__main__":
    bench()
