"""Random-weight models of real architectures, written as ordinary MLX model folders.

They are honest for speed, memory and protocol tests (every forward pass, cache and kernel is
the real one) and say nothing about quality. They use the embedded model's tokenizer, so token
counts of real prompts match what the embedded model would see.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import save_config, save_model

from pensieve.modelmgr.embedded import embedded_model_path
from pensieve.modelmgr.gguf import read_gguf, tokenizer_wrapper_from_gguf

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    # A small Qwen2: mlx-lm splits this architecture by layers (pipeline) as well as by heads.
    "tiny-qwen2": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    # Qwen2.5-7B's shape (grouped-query attention: 4 KV heads of 128); the embedded vocabulary.
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
    # Long prompts are cheap on a CPU (two 64-wide heads), its KV cache is most of what a
    # sequence holds (8 KB per token in float32, 64 MB for its 8k window), and its head size
    # holds whole quantization groups: memory-budget and quantized-KV tests.
    "long-llama": {
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 8,
        "intermediate_size": 512,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
    # Qwen3-Coder-30B-A3B's shape (30B mixture of experts, 3B active); the vocabulary is the
    # embedded tokenizer's.
    "qwen3-coder-30b-a3b": {
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "num_hidden_layers": 48,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 262144,
    },
    # Phi-3-mini's shape (3.8B); the vocabulary is the embedded tokenizer's.
    "phi3-mini": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "num_hidden_layers": 32,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
}


def make_random_model(
    out_dir: Path,
    preset: str = "tiny-llama",
    *,
    seed: int = 0,
    bits: int | None = None,
    group_size: int = 64,
    context_length: int | None = None,
    dtype: mx.Dtype = mx.float32,
    hf_format: bool = False,
    tokenizer: Any = None,
    scale: float = 1.0,
    never_end: bool = False,
) -> Path:
    """Write `out_dir` (config.json, weights, tokenizer) and return it.

    `scale` multiplies every attention and MLP projection. At the default initialization a small
    model's greedy output is nearly constant (tiny-llama: 2 distinct tokens in 100); at 4 almost
    every token differs, which is what a token-for-token comparison of two paths needs.

    With `hf_format`, the folder looks like an unconverted Hugging Face checkpoint instead:
    `architectures` and `torch_dtype` in the config, PyTorch's safetensors metadata, no
    mlx-lm quantization. That is what `pensieve models convert` starts from.

    `never_end` zeroes the output rows of the end-of-sequence tokens: their logit is then 0
    where the others spread both ways, so greedy decoding never ends an answer early and
    sampling almost never does. Benchmarks that time decoding need answers that run to
    max_tokens; a random model otherwise ends one wherever its argmax happens to be EOS.
    """
    if tokenizer is None:  # an mlx-lm TokenizerWrapper; default: the embedded model's
        tokenizer = tokenizer_wrapper_from_gguf(read_gguf(embedded_model_path())[1])
    config = dict(PRESETS[preset])
    config["vocab_size"] = len(tokenizer.get_vocab())
    config["eos_token_id"] = sorted(tokenizer.eos_token_ids)
    if context_length:
        config["max_position_embeddings"] = context_length
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    model.set_dtype(dtype)
    if scale != 1.0:
        model.load_weights([(k, v * scale if "proj" in k else v) for k, v in tree_flatten(model.parameters())])
    if never_end:
        head = model.lm_head if hasattr(model, "lm_head") else model.model.embed_tokens
        head.weight[mx.array(config["eos_token_id"])] = 0
    if bits:
        nn.quantize(model, group_size=group_size, bits=bits)
        config["quantization"] = {"group_size": group_size, "bits": bits}
    mx.eval(model.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    if hf_format:
        _save_hf_checkpoint(out_dir, model, config, dtype)
    else:
        save_model(out_dir, model)
        save_config(config, out_dir / "config.json")
    tokenizer.save_pretrained(out_dir)
    return out_dir


_HF_CLASSES = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _save_hf_checkpoint(out_dir: Path, model: nn.Module, config: dict[str, Any], dtype: mx.Dtype) -> None:
    """mlx-lm's parameter names are the Hugging Face ones for these architectures."""
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "pt"})
    hf_config = {
        **config,
        "architectures": [_HF_CLASSES[config["model_type"]]],
        "torch_dtype": str(dtype).removeprefix("mlx.core."),
    }
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
