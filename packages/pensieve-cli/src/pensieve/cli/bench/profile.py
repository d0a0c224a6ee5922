"""`pensieve bench --profile`: where the time of a running server's recent requests went."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

PHASES = ("queue", "tokenize", "prefill", "decode", "detokenize", "total")


def recent_profiles(base_url: str, api_key: str | None) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{base_url}/v1/debug/requests", headers={"x-api-key": api_key or ""})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [r for r in json.loads(response.read())["requests"] if r.get("profile")]


def profile_table(requests: list[dict[str, Any]]) -> str:
    """One row per request: phase seconds, tokens, and MLX's memory high-water mark."""
    head = "| request | route | in | out | " + " | ".join(f"{p} s" for p in PHASES) + " | MLX peak GB |"
    lines = [head, "|" + "---|" * (5 + len(PHASES))]
    for r in requests:
        prof = r["profile"]
        phases = " | ".join(f"{prof.get(f'{p}_s', 0.0):.3f}" for p in PHASES)
        lines.append(
            f"| {r['request_id']} | {r['route']} | {r.get('input_tokens', '')} | {r.get('output_tokens', '')} | "
            f"{phases} | {prof.get('mlx_peak_bytes', 0) / 1e9:.2f} |"
        )
    return "\n".join(lines)
