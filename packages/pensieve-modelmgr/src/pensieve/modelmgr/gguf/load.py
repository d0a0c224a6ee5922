"""Load GGUF files (llama.cpp's format) of llama, Qwen2 and Phi-3 models with MLX's reader.

MLX already parses GGUF and keeps Q4_0, Q4_1 and Q8_0 tensors packed as its affine quantization,
so a GGUF file can run without re-quantizing or an extra copy on disk. What MLX does not do is
turn llama.cpp's tensor names and metadata into an mlx-lm model, nor build a tokenizer; that is
this module's job (per-architecture names live in ``arch``, the tokenizer in ``tokenizer``,
the header checks in ``header``).
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import save_config, save_model

from pensieve.modelmgr.gguf.arch import (
    ROPE_TENSORS,
    Architecture,
    architecture,
    longrope_scaling,
    mlx_name,
)
from pensieve.modelmgr.gguf.errors import GGUFError
from pensieve.modelmgr.gguf.header import read_gguf_header
from pensieve.modelmgr.gguf.tokenizer import tokenizer_wrapper_from_gguf
from pensieve.utils.logging import logger

# Every GGUF quantization MLX keeps packed (Q4_0, Q4_1, Q8_0) uses blocks of 32 weights.
_GROUP_SIZE = 32

# general.file_type values whose tensors MLX keeps as stored: F32, F16, Q4_0, Q4_1, Q8_0. Others
# it can read (Q4_K, Q6_K, Q2_K, BF16) it silently expands to float16.
_KEPT_FILE_TYPES = {0, 1, 2, 3, 7}
_ROPE_FREQS = ROPE_TENSORS[0]


def read_gguf(path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Read the tensors and metadata, turning MLX's errors into advice a user can act on.

    The header is checked first: MLX fails on most quantization types without naming them,
    silently drops some, and reports a truncated file only as an offset past the end.
    """
    path = Path(path)
    read_gguf_header(path).check_loadable()
    try:
        # The explicit format lets files without a .gguf suffix (blobs in a cache) load too.
        return mx.load(str(path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise GGUFError(_explain_read_failure(path, exc)) from exc


def _explain_read_failure(path: Path, exc: Exception) -> str:
    reason = str(exc)
    if "gguf_tensor_to_f16" in reason:
        return (
            f"{path.name} uses a quantization MLX cannot read (for example Q5_K, Q3_K, Q5_0 or "
            "an IQ type). Download the Q4_0, Q4_1, Q8_0 or F16 variant, or an MLX model, instead."
        )
    if "past the end of the file" in reason or "gguf_init failed" in reason:
        return (
            f"{path} is truncated or not a GGUF file ({path.stat().st_size} bytes); "
            f"the download was probably interrupted. Download it again. (MLX said: {reason})"
        )
    return f"Could not read the GGUF file {path}: {reason}"


def gguf_model_config(
    metadata: Mapping[str, Any], weights: Mapping[str, mx.array] | None = None
) -> dict[str, Any]:
    """Translate GGUF metadata into the config.json that mlx-lm's model class expects.

    Whether embeddings are tied, the vocabulary size (files may pad it past the token list),
    how the weights are quantized and RoPE scaling factors are not in the metadata but in the
    tensors, so they are only filled in when ``weights`` (as returned by ``read_gguf``) are
    given. Metadata values may be MLX arrays (``read_gguf``) or plain Python values (the header
    reader).
    """
    arch = architecture(metadata)

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch.gguf_name}.{key}", default)
        if value is None:
            raise GGUFError(f"The GGUF metadata lacks {arch.gguf_name}.{key}; the file is incomplete.")
        if isinstance(value, mx.array) and value.dtype == mx.float32:
            return float(str(np.float32(value.item())))  # 1e-05, not 9.999999747378752e-06
        return value.item() if isinstance(value, mx.array) else value

    heads = get("attention.head_count")
    head_dim = get("attention.key_length", get("embedding_length") // heads)
    if get("rope.dimension_count", head_dim) != head_dim and arch.gguf_name != "phi3":
        raise GGUFError("This GGUF model rotates only part of each head, which MLX's llama lacks.")
    tokens = metadata.get("tokenizer.ggml.tokens", ())
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "vocab_size": get("vocab_size", len(tokens) or None),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length"),
        **arch.extra_config(get, head_dim),
    }
    scaling = get("rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": get("rope.scaling.factor")}
    elif scaling not in ("none", "longrope"):  # longrope: Phi-3's factor tensors, below
        raise GGUFError(f"This GGUF file uses {scaling} RoPE scaling, which Pensieve cannot map.")
    if weights is not None:
        config["tie_word_embeddings"] = "output.weight" not in weights
        if "token_embd.weight" in weights:
            config["vocab_size"] = weights["token_embd.weight"].shape[0]
        if _ROPE_FREQS in weights:
            config["rope_scaling"] = _llama3_rope_scaling(weights[_ROPE_FREQS], config)
        if longrope := longrope_scaling(weights):
            config["rope_scaling"] = longrope
        if quantization := _quantization(arch, weights):
            config["quantization"] = quantization
    return config


def _llama3_rope_scaling(factors: mx.array, config: Mapping[str, Any]) -> dict[str, Any]:
    """Recover the llama3 rope_scaling that llama.cpp's converter baked into ``rope_freqs``.

    The converter only stores the resulting factors, so assume Llama 3.1's published parameters
    and check that they reproduce every factor rather than run with a silently wrong RoPE.
    """
    actual = factors.tolist()
    factor, low, high, old_context = max(actual), 1.0, 4.0, 8192
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    expected = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * config["rope_theta"] ** (i / dim)
        if wavelen < old_context / high:
            expected.append(1.0)
        elif wavelen > old_context / low:
            expected.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            expected.append(1 / ((1 - smooth) / factor + smooth))
    if len(actual) != len(expected) or not all(
        math.isclose(a, b, rel_tol=1e-3) for a, b in zip(actual, expected, strict=True)
    ):
        raise GGUFError("This GGUF file uses a RoPE scaling that is not Llama 3's; it can't load.")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old_context,
    }


def _quantization(arch: Architecture, weights: Mapping[str, mx.array]) -> dict[str, Any] | None:
    """Describe the packed tensors in mlx-lm's terms: a default plus per-module exceptions.

    GGUF files mix bit widths (the embedding is often 8-bit while the rest is 4-bit); mlx-lm
    reads a module path key in ``quantization`` as that module's own settings.
    """
    bits: dict[str, int] = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            stem = name.removesuffix(".scales")
            # Each group of 32 weights packs into 32 * bits / 32 = bits uint32 words.
            bits[mlx_name(arch, stem)] = weights[f"{stem}.weight"].shape[-1] // scales.shape[-1]
    if not bits:
        return None
    default = Counter(bits.values()).most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": _GROUP_SIZE, "bits": default, "mode": "affine"}
    for module, module_bits in sorted(bits.items()):
        if module_bits != default:
            quantization[module] = {
                "group_size": _GROUP_SIZE,
                "bits": module_bits,
                "mode": "affine",
            }
    return quantization


def _mlx_weights(arch: Architecture, weights: Mapping[str, mx.array]) -> dict[str, mx.array]:
    renamed = {}
    for name, value in weights.items():
        if name not in ROPE_TENSORS:  # already folded into the config's rope_scaling
            stem, _, kind = name.rpartition(".")
            renamed[f"{mlx_name(arch, stem)}.{kind}"] = value
    return renamed


def load_gguf(path: str | Path) -> tuple[nn.Module, TokenizerWrapper, dict[str, Any]]:
    """Load a GGUF file as a ready mlx-lm model, its tokenizer and its mlx-lm config.

    The config can be saved next to the weights (``save_mlx_folder``) to get an ordinary MLX
    model folder, so a GGUF download only needs converting once.
    """
    weights, metadata = read_gguf(path)
    file_type = metadata.get("general.file_type")
    if file_type is not None and file_type.item() not in _KEPT_FILE_TYPES:
        logger.warning(
            "{}: MLX expands this GGUF quantization (file type {}) to float16, so it takes "
            "several times its file size in memory; a Q4_0/Q8_0 GGUF or an MLX model is smaller",
            Path(path).name,
            file_type.item(),
        )
    arch = architecture(metadata)
    config = gguf_model_config(metadata, weights)
    tokenizer = tokenizer_wrapper_from_gguf(metadata)
    # mlx_lm.load reads the stop tokens from the config, so keep them for save_mlx_folder.
    config["eos_token_id"] = sorted(tokenizer.eos_token_ids)

    module = importlib.import_module(f"mlx_lm.models.{arch.model_type}")
    model = module.Model(module.ModelArgs.from_dict(config))
    weights = _mlx_weights(arch, weights)
    if quantization := config.get("quantization"):

        def settings(module_path: str, module: nn.Module) -> bool | dict[str, Any]:
            if module_path in quantization:
                return quantization[module_path]
            return f"{module_path}.scales" in weights

        nn.quantize(
            model, group_size=_GROUP_SIZE, bits=quantization["bits"], class_predicate=settings
        )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise GGUFError(f"The GGUF tensors do not fit a {arch.gguf_name} model: {exc}") from exc
    model.eval()
    mx.eval(model.parameters())
    return model, tokenizer, config


def save_mlx_folder(
    model: nn.Module, tokenizer: TokenizerWrapper, config: dict[str, Any], out_dir: Path
) -> None:
    """Write a model folder that ``mlx_lm.load`` opens like any converted MLX model.

    mlx-lm's own writers are used so sharding, the weight index and the config layout stay
    whatever mlx-lm expects.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(out_dir, model)
    save_config(dict(config), out_dir / "config.json")  # save_config edits the dict it gets
    tokenizer.save_pretrained(out_dir)
