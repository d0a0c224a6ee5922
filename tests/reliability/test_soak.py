"""The soak script for one minute, as CI runs it: zero failures, bounded memory growth.

benchmarks/soak.py runs 10 minutes by default (docs/reliability.md has the last figures); here
5 streaming clients run 1 minute on the tiny model, and its figures are checked, not timed.
The memory check compares two samples taken with nothing in flight, after a 15-second warm-up
(which fills the prompt-prefix cache to its steady state). The tolerance is 10%: the prefix
cache's entries differ in size from one sample to the next (a few percent of MLX memory),
while a leak of even one KV cache per request would add well over 100% in a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_PCT = 10.0


def test_one_minute_soak_has_no_failures_and_no_memory_growth(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "1", "--warmup", "15",
         "--clients", "5", "--max-growth", str(TOLERANCE_PCT), "--json", str(figures)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    soak = json.loads(figures.read_text())
    assert soak["failures"] == {} and soak["requests_served"] == soak["requests_attempted"] > 50
    assert soak["tokens_generated"] > 0 and soak["ttft_p50_s"] is not None
    for kind, grown in soak["growth_after_warmup_pct"].items():
        assert grown <= TOLERANCE_PCT, f"{kind} grew {grown}% after warm-up"
    assert "time to first token" in result.stdout and "PASS" in result.stdout
