"""The weights layout per MLX backend: keep a quantized model packed, or unpack it at load.

- Metal (Apple Silicon): MLX's quantized kernels are the fast path and memory is the limit, so
  quantized models stay quantized.
- CPU (Linux): MLX's quantized kernels are unoptimized while float32 products go to BLAS. With
  OpenBLAS preloaded (pensieve.utils.blas) a small model in float32 prefills about ten times
  faster than in 4-bit (docs/benchmarks.md).
- CUDA: MLX's quantized matrix kernel for more than one row costs almost a full pass over the
  weights per row, so batched decoding barely scales (4-bit Phi-3-mini on an H200: 382 tokens/s
  at 5 sequences), while bfloat16 weights serve 5 sequences for about the price of one
  (~640 tokens/s). A lone sequence is fastest on the packed weights, so CUDA keeps both: the
  packed model for the single-sequence path, a bfloat16 twin for batches.

Unpacking costs memory (float32: 8x 4-bit weights; bfloat16: 4x), so `auto` does it only when
the unpacked weights fit in a quarter of the memory budget.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

DEQUANTIZED_SHARE = 0.25
"""Unpacked weights may take at most this share of the memory budget."""


def _quantized_modules(model: nn.Module) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def float32_bytes(model: nn.Module) -> int:
    """The model's weight bytes with every tensor in float32 (scales and biases gone)."""
    quantized = dict(_quantized_modules(model))
    total = 0
    for name, value in tree_flatten(model.parameters()):
        owner, _, leaf = name.rpartition(".")
        if owner not in quantized:
            total += value.size * 4
        elif leaf == "weight":  # one uint32 packs 32 / bits weights
            total += value.size * (32 // quantized[owner].bits) * 4
        elif leaf == "bias":
            total += value.size * 4
    return total


UNPACKED_DTYPE = {"cpu": mx.float32, "cuda": mx.bfloat16, "metal": mx.float16}
"""What a dequantized model computes in, per backend (BLAS on the CPU wants float32)."""


def choose_layout(model: nn.Module, budget_bytes: int, strategy: str, backend: str, blas_ready: bool) -> str:
    """`quantized`, `dequantized`, or `both`, for a model about to serve on `backend`.

    `both` (CUDA): the packed weights for a lone sequence, whose matrix-vector kernel is the
    fastest there, and an unpacked copy for batches, which the quantized kernel serves poorly.
    """
    if strategy != "auto" or not _quantized_modules(model):
        return strategy if strategy != "auto" else "quantized"
    if backend == "metal" or (backend == "cpu" and not blas_ready):
        return "quantized"
    unpacked = float32_bytes(model) // (4 // UNPACKED_DTYPE[backend].size)
    if unpacked > budget_bytes * DEQUANTIZED_SHARE:
        return "quantized"
    return "both" if backend == "cuda" else "dequantized"


def apply_layout(model: nn.Module, layout: str, backend: str) -> nn.Module | None:
    """Lay `model` out as `choose_layout` decided: unpacked in place (`dequantized`), or kept and
    given an unpacked twin for batches (`both`, returned); None when there is no twin."""
    dtype = UNPACKED_DTYPE[backend]
    if layout == "dequantized":
        dequantize_model(model, dtype)
    elif layout == "both":
        return unpacked_copy(model, dtype)
    return None


def unpacked_copy(model: nn.Module, dtype: mx.Dtype) -> nn.Module:
    """A dequantized twin of `model`; the original keeps its packed weights."""
    twin = copy.deepcopy(model)
    dequantize_model(twin, dtype)
    return twin


def dequantize_model(model: nn.Module, dtype: mx.Dtype = mx.float32) -> None:
    """Replace quantized layers with float layers of the same weights, in place."""
    replaced = []
    for name, module in _quantized_modules(model):
        weight = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits).astype(dtype)
        if isinstance(module, nn.QuantizedEmbedding):
            layer: nn.Module = nn.Embedding(*weight.shape)
        else:
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
            if "bias" in module:
                layer.bias = module.bias.astype(dtype)
        layer.weight = weight
        replaced.append((name, layer))
    model.update_modules(tree_unflatten(replaced))
    model.set_dtype(dtype)
    mx.eval(model.parameters())
