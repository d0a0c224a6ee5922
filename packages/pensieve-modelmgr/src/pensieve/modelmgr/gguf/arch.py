"""The GGUF architectures Pensieve maps onto mlx-lm's model classes, and how.

Each llama.cpp architecture differs from the others in three ways that matter here: its tensor
names (Phi-3 keeps q/k/v and gate/up fused, as its Hugging Face checkpoint does), its metadata
keys (prefixed with the architecture name), and whether llama.cpp's converter permuted the q/k
rows for rotary embeddings (only for `llama`, which MLX's "traditional" RoPE undoes for free).
Everything else (reading, quantization, the tokenizer) is shared by the other modules here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pensieve.modelmgr.gguf.errors import GGUFError

# Whole-model tensors are named alike in every architecture mapped here.
MODEL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_SPLIT = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    **_NORMS,
}
_FUSED = {
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.gate_up_proj",  # gate and up stacked, gate first, as in Hugging Face's Phi-3
    "ffn_down": "mlp.down_proj",
    **_NORMS,
}

# Llama 3.1+ files store their RoPE scaling as per-frequency factors instead of metadata; Phi-3
# 128k files store LongRoPE's two factor lists. They become config, not weights.
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

Getter = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Architecture:
    gguf_name: str
    model_type: str
    """mlx-lm's module under `mlx_lm.models`."""
    block_names: Mapping[str, str]
    extra_config: Callable[[Getter, int], dict[str, Any]]
    """Architecture-specific config keys, from the metadata getter and the head size."""


def _llama(get: Getter, head_dim: int) -> dict[str, Any]:
    # llama.cpp permutes the q/k rows so rotary pairs are adjacent, which is exactly MLX's
    # "traditional" RoPE; un-permuting quantized rows instead would mean unpacking them.
    return {"head_dim": head_dim, "rope_traditional": True}


def _whole_heads(get: Getter, head_dim: int) -> None:
    """mlx-lm's qwen2 and phi3 derive the head size from hidden_size / heads."""
    if get("embedding_length") // get("attention.head_count") != head_dim:
        raise GGUFError("This GGUF model's head size is not hidden_size / heads; it can't load.")


def _qwen2(get: Getter, head_dim: int) -> dict[str, Any]:
    _whole_heads(get, head_dim)
    return {"rope_traditional": False}


def _phi3(get: Getter, head_dim: int) -> dict[str, Any]:
    _whole_heads(get, head_dim)
    config: dict[str, Any] = {
        "rope_traditional": False,
        "partial_rotary_factor": get("rope.dimension_count", head_dim) / head_dim,
    }
    original = get("rope.scaling.original_context_length", 0)
    if original:
        config["original_max_position_embeddings"] = original
    return config


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", "llama", _SPLIT, _llama),
    "qwen2": Architecture("qwen2", "qwen2", _SPLIT, _qwen2),
    "phi3": Architecture("phi3", "phi3", _FUSED, _phi3),
}


def architecture(metadata: Mapping[str, Any]) -> Architecture:
    name = metadata.get("general.architecture")
    if name not in ARCHITECTURES:
        raise GGUFError(
            f"GGUF architecture {name!r} is not supported: Pensieve loads {', '.join(ARCHITECTURES)} "
            "GGUF files (Llama, Mistral, SmolLM, TinyLlama, Qwen2/2.5, Phi-3). Use an MLX model of "
            "it instead (`pensieve models pull mlx-community/<model>`)."
        )
    return ARCHITECTURES[name]


def mlx_name(arch: Architecture, gguf_name: str) -> str:
    """Map a llama.cpp tensor name (without its .weight/.scales suffix) to mlx-lm's."""
    if gguf_name.startswith("blk."):
        _, layer, part = gguf_name.split(".", 2)
        if part in arch.block_names:
            return f"model.layers.{layer}.{arch.block_names[part]}"
    elif gguf_name in MODEL_NAMES:
        return MODEL_NAMES[gguf_name]
    raise GGUFError(
        f"Unexpected tensor {gguf_name!r}: this {arch.gguf_name} variant is not supported from "
        "GGUF. Use an MLX model of it instead."
    )


def longrope_scaling(weights: Mapping[str, Any]) -> dict[str, Any] | None:
    """Phi-3 128k's LongRoPE factors, as mlx-lm's phi3 expects them in rope_scaling."""
    long, short = weights.get(ROPE_TENSORS[1]), weights.get(ROPE_TENSORS[2])
    if long is None or short is None:
        return None
    return {"type": "longrope", "long_factor": long.tolist(), "short_factor": short.tolist()}
