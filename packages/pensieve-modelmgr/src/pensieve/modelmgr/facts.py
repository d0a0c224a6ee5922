"""What a model source is, read from file headers without loading a tensor.

`pensieve models list`, the memory estimate and the checks before a load all need the same
facts: the architecture's config, the quantization, the context window, the bytes the weights
take on disk and in memory. Reading them from headers (safetensors' JSON header, the GGUF
header) takes milliseconds, so a broken model is refused with a clear reason before mlx-lm or
MLX gets to fail on it with a less helpful one.
"""

from __future__ import annotations

import functools
import importlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pensieve.engine import KVCost
from pensieve.modelmgr.gguf import GGUFError, gguf_model_config, read_gguf_header
from pensieve.modelmgr.sources import ModelSource
from pensieve.modelmgr.store import disk_bytes
from pensieve.utils import ModelLoadError

_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length", "context_length")
DEFAULT_CONTEXT = 4096
# Any one of these makes a tokenizer transformers can load (with tokenizer_config.json if any).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_FLOAT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    config: dict[str, Any]
    """The mlx-lm config (for a GGUF file, the one its metadata translates to)."""
    quantization: str
    """`4-bit (group 64)`, `Q4_0`, `bf16`…"""
    context_length: int
    disk_bytes: int
    weight_bytes: int
    """Bytes the weights take once loaded (GGUF types MLX expands count as float16)."""
    activation_bytes: int
    """Bytes per activation and KV-cache element: 4 for a float32 model, else 2."""

    def text_config(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key)
        if value is None:
            value = (self.config.get("text_config") or {}).get(key)
        return default if value is None else value

    @property
    def kv_bytes_per_layer_token(self) -> int:
        """Keys and values of one token in one attention layer."""
        heads = self.text_config("num_attention_heads", 1)
        kv_heads = self.text_config("num_key_value_heads") or heads
        head_dim = self.text_config("head_dim") or self.text_config("hidden_size", 0) // heads
        return 2 * kv_heads * head_dim * self.activation_bytes

    @property
    def head_dim(self) -> int:
        heads = self.text_config("num_attention_heads", 1)
        return self.text_config("head_dim") or self.text_config("hidden_size", 0) // heads

    @property
    def kv_cost(self) -> KVCost:
        """One sequence's KV bytes by length, counted per layer type (see `layer_kinds`)."""
        per = self.kv_bytes_per_layer_token
        kinds = layer_kinds(self)
        window = self.text_config("sliding_window") or 0
        windowed = ((window, per * kinds.count("sliding")),) if window and "sliding" in kinds else ()
        return KVCost(full=per * kinds.count("full"), windowed=windowed)


def layer_kinds(facts: ModelFacts) -> list[str]:
    """Each layer's kind as far as its cache goes: `full` (keeps every token), `sliding` (keeps
    `sliding_window` tokens) or `state` (recurrent or linear attention: no per-token cache).

    Read from the config the way the architectures define it: an explicit `layer_types` list
    (recent Hugging Face configs: Gemma 3, Qwen3-Next, hybrids), a `sliding_window_pattern`
    (Gemma 2/3: every Nth layer global), a `full_attention_interval` (Qwen3-Next), or else
    every layer full. A `sliding_window` alone (Mistral 7B v0.1) changes nothing: mlx-lm's
    llama and mistral modules keep every token.
    """
    layers = facts.text_config("num_hidden_layers", 0)
    types = facts.text_config("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return [_kind(t) for t in types]
    pattern = facts.text_config("sliding_window_pattern")
    if pattern is None and facts.text_config("model_type", facts.config.get("model_type")) in ("gemma2",):
        pattern = 2
    if isinstance(pattern, int) and pattern > 1 and facts.text_config("sliding_window"):
        return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(layers)]
    interval = facts.text_config("full_attention_interval")
    if isinstance(interval, int) and interval > 1:
        return ["full" if (i + 1) % interval == 0 else "state" for i in range(layers)]
    if facts.config.get("model_type") in ("mamba", "mamba2", "rwkv7"):
        return ["state"] * layers
    return ["full"] * layers


def _kind(layer_type: str) -> str:
    if "sliding" in layer_type or "local" in layer_type or "chunked" in layer_type:
        return "sliding"
    return "full" if "attention" in layer_type and "linear" not in layer_type else "state"


def context_length_of(config: dict[str, Any]) -> int:
    for key in _CONTEXT_KEYS:
        value = config.get(key) or (config.get("text_config") or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def model_facts(source: ModelSource) -> ModelFacts:
    """Facts about a source; ModelLoadError saying what is wrong if it cannot load."""
    return _cached_facts(source.kind, source.path, _signature(source.path))


def source_signature(source: ModelSource) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and times of the files, so a replaced or repaired model is read afresh."""
    return _signature(source.path)


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    stats = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        stats.append((file.name, stat.st_size, stat.st_mtime_ns))
    return tuple(stats)


@functools.lru_cache(maxsize=256)
def _cached_facts(kind: str, path: Path, signature: tuple[Any, ...]) -> ModelFacts:
    return _mlx_facts(path) if kind == "mlx" else _gguf_facts(path)


def _gguf_facts(path: Path) -> ModelFacts:
    header = read_gguf_header(path)
    header.check_loadable()
    if "tokenizer.ggml.model" not in header.metadata:
        raise GGUFError(f"{path.name} has no tokenizer in its metadata; use a GGUF file that does.")
    config = gguf_model_config(header.metadata)
    embedding = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    if embedding is not None:
        config["vocab_size"] = embedding.shape[0]
    all_f32 = {t.type_name for t in header.tensors} == {"F32"}
    return ModelFacts(
        config=config,
        quantization=header.quantization,
        context_length=context_length_of(config),
        disk_bytes=path.stat().st_size,
        weight_bytes=header.memory_bytes,
        activation_bytes=4 if all_f32 else 2,
    )


def _mlx_facts(path: Path) -> ModelFacts:
    config = _read_config(path)
    _check_architecture(path, config)
    weight_files = sorted(path.glob("model*.safetensors"))
    if not weight_files:
        raise ModelLoadError(
            f"{path} has no model*.safetensors weights. Re-download it, or convert it with "
            "`pensieve models convert`"
        )
    dtypes: Counter[str] = Counter()
    weight_bytes = 0
    for file in weight_files:
        header, data_bytes = _safetensors_header(file)
        weight_bytes += data_bytes
        dtypes.update(t["dtype"] for k, t in header.items() if k != "__metadata__")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}). Copy the tokenizer "
            "files from the original model, or pull/convert it again"
        )
    floats = [d for d in dtypes if d in _FLOAT_BYTES]
    activation = 4 if floats and all(d == "F32" for d in floats) else 2
    return ModelFacts(
        config=config,
        quantization=_describe_quantization(config, dtypes),
        context_length=context_length_of(config),
        disk_bytes=disk_bytes(path),
        weight_bytes=weight_bytes,
        activation_bytes=activation,
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}/config.json is unreadable ({exc}); re-download or re-convert the model"
        ) from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{path}/config.json has no model_type; it is not a model config")
    return config


def _check_architecture(path: Path, config: dict[str, Any]) -> None:
    """The loader's answer: mlx-lm's model module for this config, found the way mlx-lm does.

    mlx-lm's own lookup (`mlx_lm.utils._get_classes`) is private; its remapping tables are
    public, so they are applied here and the module imported as mlx-lm would import it.
    """
    import mlx_lm
    from mlx_lm.utils import MODEL_ARCHITECTURE_REMAPPING, MODEL_REMAPPING

    model_type = config["model_type"]
    architectures = config.get("architectures") or ()
    named = [architectures] if isinstance(architectures, str) else list(architectures)
    module = next(
        (MODEL_ARCHITECTURE_REMAPPING[(model_type, a)] for a in named if (model_type, a) in MODEL_ARCHITECTURE_REMAPPING),
        MODEL_REMAPPING.get(model_type, model_type),
    )
    try:
        importlib.import_module(f"mlx_lm.models.{module}")
    except (ImportError, ValueError, TypeError):
        raise ModelLoadError(
            f"{path.name}: model_type '{model_type}' is not an architecture mlx-lm "
            f"{mlx_lm.__version__} knows. Upgrade mlx-lm (pip install -U mlx-lm), or use a "
            "model of a supported architecture"
        ) from None


def _safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header and the data size it promises, checked against the file's length."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        data_bytes = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{file} is corrupt or not a safetensors file ({exc}). Download or convert it again"
        ) from None
    if 8 + length + data_bytes > size:
        raise ModelLoadError(
            f"{file} is truncated: it has {size} bytes of the {8 + length + data_bytes} its header "
            "describes; the download was probably interrupted. Download or convert it again"
        )
    return header, data_bytes


def _describe_quantization(config: dict[str, Any], dtypes: Counter[str]) -> str:
    quantization = config.get("quantization") or config.get("quantization_config")
    if isinstance(quantization, dict) and "bits" in quantization:
        return f"{quantization['bits']}-bit (group {quantization.get('group_size', 64)})"
    floats = Counter({d: n for d, n in dtypes.items() if d in _FLOAT_BYTES})
    return floats.most_common(1)[0][0].lower() if floats else "unknown"
