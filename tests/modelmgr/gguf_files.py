"""Write GGUF files from random-weight mlx-lm models, the way llama.cpp's converter would.

The `gguf` package (llama.cpp's own Python writer, a dev dependency) quantizes and writes the
tensors, so the files test Pensieve's loader against an implementation that is not MLX's. Each
writer returns the weights as a GGUF reader should see them after dequantizing, in mlx-lm's
names, so a test can build the model the file *should* load as and compare logits.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from pensieve.modelmgr.embedded import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf
from pensieve.modelmgr.gguf.arch import ARCHITECTURES, MODEL_NAMES

T = gguf.GGMLQuantizationType

# Shapes of each architecture, small enough for CPU; the vocabulary is the embedded model's.
SHAPES: dict[str, dict[str, Any]] = {
    "llama": {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "max_position_embeddings": 2048,
    },
    # Mistral 7B's traits: GQA 4:1, untied head, a larger RoPE base. llama.cpp writes it as llama.
    "mistral": {
        "model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 224,
        "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "max_position_embeddings": 4096,
    },
    "qwen2": {
        "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 160,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "max_position_embeddings": 4096,
    },
    "phi3": {
        "model_type": "phi3", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 4096,
    },
}  # fmt: skip
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "phi3": "phi3"}
FILE_TYPES = {T.F32: 0, T.F16: 1, T.Q4_0: 2, T.Q4_1: 3, T.Q8_0: 7, T.BF16: 32}


@functools.cache
def tokenizer_metadata() -> dict[str, Any]:
    """The embedded model's tokenizer.* metadata, as plain Python values."""
    metadata = read_gguf(embedded_model_path())[1]
    plain = {}
    for key, value in metadata.items():
        if key.startswith("tokenizer."):
            plain[key] = value.tolist() if isinstance(value, mx.array) else value
    return plain


def random_model(shape: str, vocab_size: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    config = {**SHAPES[shape], "vocab_size": vocab_size}
    module = importlib.import_module(f"mlx_lm.models.{'llama' if shape == 'mistral' else shape}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    if shape == "qwen2":  # mlx-lm initializes biases to zero; make them count
        model.update(
            {"model": {"layers": [
                {"self_attn": {p: {"bias": mx.random.normal(getattr(layer.self_attn, p).bias.shape)}
                               for p in ("q_proj", "k_proj", "v_proj")}}
                for layer in model.model.layers
            ]}}
        )  # fmt: skip
    mx.eval(model.parameters())
    return model, config


def _gguf_name(arch: str, mlx_name: str) -> str:
    stem, _, kind = mlx_name.rpartition(".")
    for gguf_name, name in MODEL_NAMES.items():
        if stem == name:
            return f"{gguf_name}.{kind}"
    _, _, layer, part = stem.split(".", 3)  # model.layers.N.<part>
    by_mlx = {v: k for k, v in ARCHITECTURES[arch].block_names.items()}
    return f"blk.{layer}.{by_mlx[part]}.{kind}"


def _llama_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation for the llama architecture (convert_hf_to_gguf.py)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(
    path: Path, model: Any, config: dict[str, Any], shape: str, weight_type: T
) -> dict[str, mx.array]:
    """Write `model` as a GGUF file; return the weights a correct reader recovers from it."""
    arch = GGUF_ARCH[shape]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_file_type(FILE_TYPES[weight_type])
    for key, value in tokenizer_metadata().items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)

    expected = {}
    for name, value in tree_flatten(model.parameters()):
        data = np.array(value.astype(mx.float32))
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            data = _llama_permute(data, heads)
        if data.ndim == 2 and weight_type not in (T.F32, T.F16):  # BF16 included
            packed = gguf.quants.quantize(data, weight_type)
            writer.add_tensor(_gguf_name(arch, name), packed, raw_dtype=weight_type)
            data = gguf.quants.dequantize(packed, weight_type)
        elif data.ndim == 2 and weight_type == T.F16:
            data = data.astype(np.float16)
            writer.add_tensor(_gguf_name(arch, name), data)
        else:  # norms and biases stay F32, as llama.cpp writes them
            writer.add_tensor(_gguf_name(arch, name), data)
        expected[name] = mx.array(data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def expected_model(shape: str, config: dict[str, Any], weights: dict[str, mx.array]) -> Any:
    """The float32 mlx-lm model holding exactly what the file holds (un-permuted)."""
    model, _ = random_model(shape, config["vocab_size"])
    if GGUF_ARCH[shape] == "llama":
        for name, value in list(weights.items()):
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
                # The inverse of the permutation: rows (h, j, 2) back to (h, 2, j).
                head_dim = value.shape[0] // heads
                weights[name] = (
                    value.reshape(heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(value.shape)
                )
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    return model


def write_unsupported_gguf(path: Path, weight_type: T) -> None:
    """A llama-labelled file whose one tensor uses `weight_type` (bytes left zero)."""
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[weight_type]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, block_bytes), dtype=np.uint8), raw_dtype=weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
