"""The benchmark runs (on the tiny model, figures not judged) and the profiler explains requests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest

from tests.support import API_KEY, ServerThread

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_bench_compares_against_mlx_lm_server_end_to_end(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pensieve.cli", "bench", "--model", "synthetic:tiny-llama", "--quick",
         "--json", str(tmp_path / "figures.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for row in ("single-stream decode", "aggregate, 5 streams", "follow-up turn", "peak memory", "bandwidth floor", "alternating the two run by run"):
        assert row in table
    import json

    figures = json.loads((tmp_path / "figures.json").read_text())
    for side in ("pensieve", "mlx_lm"):
        assert figures[side]["decode_tps"] > 0 and figures[side]["aggregate_5_tps"] > 0
    assert figures["pensieve"]["paired_decode_ratio"] > 0  # HTTP decode over in-process, taken in turns


def test_profile_shows_each_phase_of_recent_requests(tiny_server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=tiny_server.base_url, api_key=API_KEY)
    client.messages.create(model="x", max_tokens=8, messages=[{"role": "user", "content": "profile me"}])
    result = subprocess.run(
        [sys.executable, "-m", "pensieve.cli", "bench", "--profile", "--url", tiny_server.base_url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    header, _, *rows = result.stdout.strip().splitlines()
    for phase in ("queue s", "tokenize s", "prefill s", "decode s", "detokenize s", "MLX peak GB"):
        assert phase in header
    assert any("/v1/messages" in row for row in rows)


def test_disk_cache_bench_replays_claude_codes_request_cold_from_memory_and_from_disk() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "disk_cache_bench.py"), "--quick"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:38].strip(): line[38:].split() for line in result.stdout.splitlines() if line.startswith(("cold", "new session"))}
    assert set(rows) == {"cold (fresh server)", "new session, from memory", "new session after a restart (disk)"}
    prompt = int(re.search(r"first request: (\d+) tokens", result.stdout)[1])  # type: ignore[index]
    assert prompt > 15_000 and int(rows["cold (fresh server)"][-1]) == 0
    assert int(rows["new session, from memory"][-1]) > 0.85 * prompt
    assert int(rows["new session after a restart (disk)"][-1]) > 0.85 * prompt


def test_distributed_bench_runs_pensieve_alone_in_a_group_and_mlx_lm_server_in_a_group() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "distributed_bench.py"), "--quick"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("| measure"))
    assert header.split("|")[2:5] == [" pensieve, 1 rank ", " pensieve, 2 ranks ", " mlx_lm.server, 2 ranks "]
    for row in ("decode, one stream", "five streams, aggregate", "time to first token, 200-token prompt"):
        line = next(line for line in result.stdout.splitlines() if row in line)
        assert all(float(cell) > 0 for cell in line.split("|")[2:5]), line
    assert "pensieve, 2 ranks: layout tensor parallel, 1 of 2 shares" in result.stdout
