"""Per-request phase timings and memory high-water marks.

A slow request is explained by where its time went: waiting for a batch slot, rendering and
tokenizing the prompt, prefill, decode, or turning tokens back into text. The engine records
each phase here; the figures end up in the request's log line and on the debug endpoint
(`GET /v1/debug/requests`, `pensieve bench --profile`), so no debugger is needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlx.core as mx


@dataclass(slots=True)
class RequestProfile:
    """Seconds per phase (accumulated) and memory marks for one request."""

    phases: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    """Other per-request figures, by name (speculative decoding's acceptance, tokens per pass)."""

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def mark_memory(self) -> None:
        """MLX's peak (process-wide high-water since start) and active bytes, now."""
        self.memory = {"mlx_peak_bytes": mx.get_peak_memory(), "mlx_active_bytes": mx.get_active_memory()}

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f"{name}_s": round(value, 6) for name, value in self.phases.items()}
        out.update({name: float(value) for name, value in self.memory.items()})
        out.update(self.figures)
        return out
