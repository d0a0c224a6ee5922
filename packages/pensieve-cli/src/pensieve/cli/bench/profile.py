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
    """One row per request: phase seconds, tokens, tokens per decode pass and the share of
    speculative proposals accepted (blank where speculation did not run), MLX's memory peak."""
    head = "| request | route | in | out | " + " | ".join(f"{p} s" for p in PHASES) + " | tok/pass | accepted | MLX peak GB |"
    lines = [head, "|" + "---|" * (7 + len(PHASES))]
    for r in requests:
        prof = r["profile"]
        phases = " | ".join(f"{prof.get(f'{p}_s', 0.0):.3f}" for p in PHASES)
        spec = f"{prof['tokens_per_pass']:.2f} | {prof['speculation_acceptance']:.0%}" if prof.get("decode_passes") else " | "
        lines.append(
            f"| {r['request_id']} | {r['route']} | {r.get('input_tokens', '')} | {r.get('output_tokens', '')} | "
            f"{phases} | {spec} | {prof.get('mlx_peak_bytes', 0) / 1e9:.2f} |"
        )
    return "\n".join(lines)
