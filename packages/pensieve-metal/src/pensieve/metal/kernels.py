"""What this backend's kernels can do, asked of the kernels themselves.

MLX's backends do not all implement every kernel for every shape: CUDA's quantized matmul
(0.32) has no kernel for the many-query passes that attention over a quantized KV cache runs
in prefill, which Metal has. Asking once with a small problem of the same kind is cheaper and
truer than a table of versions and backends.
"""

from __future__ import annotations

import functools

import mlx.core as mx

KV_GROUP_SIZE = 64
"""A quantized KV cache's group, along the head dimension (mlx-lm's default)."""
QUERIES = 64
"""Rows of the probe: many, like a prefill chunk (a single row takes another kernel)."""


@functools.lru_cache(maxsize=16)
def quantized_kv_runs(bits: int, head_dim: int) -> bool:
    """Whether attention over a KV cache quantized to `bits` can run here: the head dimension
    holds whole groups, and the backend has the kernels for scores against the quantized keys
    and the weighted sum of the quantized values, for one query and for many."""
    if head_dim <= 0 or head_dim % KV_GROUP_SIZE:
        return False
    keys = mx.random.normal((1, 2, QUERIES, head_dim)).astype(mx.bfloat16)
    packed = mx.quantize(keys, group_size=KV_GROUP_SIZE, bits=bits)
    try:
        for rows in (1, QUERIES):
            scores = mx.quantized_matmul(keys[:, :, :rows], *packed, transpose=True, group_size=KV_GROUP_SIZE, bits=bits)
            mx.eval(mx.quantized_matmul(scores, *packed, transpose=False, group_size=KV_GROUP_SIZE, bits=bits))
    except (RuntimeError, ValueError):
        return False
    return True
