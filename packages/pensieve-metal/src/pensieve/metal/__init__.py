"""MLX device choice, memory budget and figures, profiler."""

from pensieve.metal.device import DeviceInfo, device_info, select_device
from pensieve.metal.memory import (
    MemoryStats,
    apply_memory_limits,
    memory_budget_bytes,
    memory_stats,
    reset_peak_memory,
    total_system_memory,
)
from pensieve.metal.profiler import RequestProfile

__all__ = [
    "DeviceInfo",
    "MemoryStats",
    "RequestProfile",
    "apply_memory_limits",
    "device_info",
    "memory_budget_bytes",
    "memory_stats",
    "reset_peak_memory",
    "select_device",
    "total_system_memory",
]
