"""What this backend's kernels can run, where that differs between MLX's backends."""

from __future__ import annotations

from pensieve.metal.device import device_info

KV_GROUP_SIZE = 64
"""A quantized KV cache's group, along the head dimension (mlx-lm's default)."""


def quantized_kv_runs(bits: int, head_dim: int) -> bool:
    """Whether attention over a KV cache quantized to `bits` can run here.

    The head dimension must hold whole groups. And the backend needs quantized-matmul kernels
    for attention's many-query passes: Metal and the CPU have them; MLX 0.32's CUDA backend has
    them only for a single query ("[quantized_matmul] No implementation for problem shape:
    2029x2029x128x32, transpose: true, activation: bfloat16, bits: 8", the first prefill pass of
    a 21k-token prompt on an H200). A rule rather than a probe: a kernel that raises inside an
    evaluation leaves CUDA's command stream behind it in a state not worth risking.
    """
    if head_dim <= 0 or head_dim % KV_GROUP_SIZE or bits not in (2, 3, 4, 5, 6, 8):
        return False
    return device_info().backend != "cuda"
