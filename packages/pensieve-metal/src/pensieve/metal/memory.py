"""MLX memory figures and limits.

MLX keeps freed buffers in a cache for reuse; without limits that cache grows until the OS
swaps, which on a 16 GB Mac is the difference between a slow answer and a frozen machine. The
budget is applied once at model load and reported in /health.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import mlx.core as mx


@dataclass(frozen=True, slots=True)
class MemoryStats:
    active_bytes: int
    peak_bytes: int
    cache_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def memory_stats() -> MemoryStats:
    return MemoryStats(
        active_bytes=mx.get_active_memory(),
        peak_bytes=mx.get_peak_memory(),
        cache_bytes=mx.get_cache_memory(),
    )


def total_system_memory() -> int:
    """Physical RAM in bytes (unified memory on Apple Silicon)."""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    info = mx.device_info()
    return int(info.get("memory_size", 0))


def memory_budget_bytes(fraction: float = 0.75, absolute_gb: float | None = None) -> int:
    """The bytes Pensieve may use for weights, KV caches and buffers."""
    if absolute_gb is not None:
        return int(absolute_gb * 1024**3)
    return int(total_system_memory() * fraction)


def apply_memory_limits(budget_bytes: int) -> None:
    """Cap MLX's allocator and its buffer cache to the budget.

    The cache gets a quarter of the budget: enough to avoid re-allocating every decode step,
    small enough that idle memory goes back to the system.
    """
    mx.set_memory_limit(budget_bytes)
    mx.set_cache_limit(budget_bytes // 4)
    if sys.platform == "darwin" and mx.metal.is_available():
        max_wired = int(mx.device_info().get("max_recommended_working_set_size", 0))
        if max_wired:
            mx.set_wired_limit(min(budget_bytes, max_wired))
