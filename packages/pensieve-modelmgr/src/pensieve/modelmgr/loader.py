"""Load a resolved source into an mlx-lm model and tokenizer, the same shape for every format."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pensieve.modelmgr.gguf import load_gguf
from pensieve.modelmgr.sources import ModelSource
from pensieve.utils import ModelLoadError
from pensieve.utils.logging import logger

_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length", "context_length")
_DEFAULT_CONTEXT = 4096


@dataclass(slots=True)
class LoadedModel:
    source: ModelSource
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    context_length: int
    load_seconds: float
    weight_bytes: int


def context_length_of(config: dict[str, Any]) -> int:
    for key in _CONTEXT_KEYS:
        value = config.get(key) or config.get("text_config", {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return _DEFAULT_CONTEXT


def _load_mlx_folder(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    from mlx_lm.utils import load

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}/config.json is unreadable ({exc}); re-download or re-convert the model") from exc
    try:
        model, tokenizer = load(str(path))
    except ValueError as exc:
        raise ModelLoadError(
            f"mlx-lm cannot load {path}: {exc}. Check that model_type '{config.get('model_type')}' "
            "is supported by your mlx-lm version (pip install -U mlx-lm)"
        ) from exc
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is incomplete: {exc}. Re-download or re-convert the model") from exc
    return model, tokenizer, config


def load_source(source: ModelSource) -> LoadedModel:
    """Blocking load; call it off the event loop."""
    start = time.perf_counter()
    try:
        if source.kind in ("embedded", "gguf"):
            model, tokenizer, config = load_gguf(source.path)
        else:
            model, tokenizer, config = _load_mlx_folder(source.path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load model '{source.name}' from {source.path}: {exc}") from exc
    weight_bytes = sum(v.nbytes for _, v in _flat_parameters(model))
    seconds = time.perf_counter() - start
    logger.info("loaded {} ({}, {:.1f} MB) in {:.2f}s", source.name, source.kind, weight_bytes / 1e6, seconds)
    return LoadedModel(source, model, tokenizer, config, context_length_of(config), seconds, weight_bytes)


def _flat_parameters(model: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())
