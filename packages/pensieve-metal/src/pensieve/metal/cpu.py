"""The weights layout for MLX's CPU backend.

On the CPU, MLX's quantized matrix kernels are unoptimized, while float32 products go to BLAS:
with OpenBLAS preloaded (see pensieve.utils.blas) a small model dequantized to float32 prefills
about ten times faster and decodes about twice as fast as in 4-bit (docs/benchmarks.md). That
trade costs memory (8x the 4-bit weights), so it is taken only when OpenBLAS is there and the
float32 weights fit comfortably in the budget; otherwise the model stays quantized.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

DEQUANTIZED_SHARE = 0.25
"""Float32 weights may take at most this share of the memory budget."""


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


def choose_layout(model: nn.Module, budget_bytes: int, strategy: str, blas_ready: bool) -> str:
    """`dequantized` or `quantized`, for a model about to serve on the CPU."""
    if strategy in ("quantized", "dequantized"):
        return strategy
    if not _quantized_modules(model) or not blas_ready:
        return "quantized"
    return "dequantized" if float32_bytes(model) <= budget_bytes * DEQUANTIZED_SHARE else "quantized"


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
