"""MLX device choice, memory budget and figures, profiler."""

from pensieve.metal.device import DeviceInfo, configure_cuda_attention, device_info
from pensieve.metal.kernels import KV_GROUP_SIZE, quantized_kv_runs
from pensieve.metal.memory import (
    MemoryStats,
    apply_memory_limits,
    memory_budget_bytes,
    memory_stats,
    total_system_memory,
)
from pensieve.metal.profiler import RequestProfile

__all__ = [
    "KV_GROUP_SIZE",
    "DeviceInfo",
    "MemoryStats",
    "RequestProfile",
    "apply_memory_limits",
    "configure_cuda_attention",
    "device_info",
    "memory_budget_bytes",
    "memory_stats",
    "quantized_kv_runs",
    "total_system_memory",
]
