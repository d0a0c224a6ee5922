"""Load a resolved source into an mlx-lm model and tokenizer, the same shape for every format.

Every source is checked from its headers first (``facts``), so a truncated file, a missing
tokenizer or an architecture mlx-lm does not know is refused with a message that says what to
do, and whatever still fails inside mlx-lm or MLX is wrapped into a ModelLoadError naming the
model, never a bare traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pensieve.modelmgr.facts import ModelFacts, context_length_of, model_facts
from pensieve.modelmgr.gguf import load_gguf
from pensieve.modelmgr.sources import ModelSource
from pensieve.utils import ModelLoadError
from pensieve.utils.logging import logger

__all__ = ["LoadedModel", "check_source", "context_length_of", "load_source"]


@dataclass(slots=True)
class LoadedModel:
    source: ModelSource
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    context_length: int
    load_seconds: float
    weight_bytes: int
    layout: str = "as stored"
    """`as stored`, or how the weights were unpacked at load for this backend."""
    batch_model: Any = None
    """An unpacked twin of `model` serving batches, where the backend wants one (CUDA)."""


def _load_mlx_folder(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    from mlx_lm.utils import load

    try:
        model, tokenizer, config = load(str(path), return_config=True)
    except ValueError as exc:
        raise ModelLoadError(
            f"mlx-lm cannot load {path}: {exc}. Check the config matches the weights, or "
            "re-download or re-convert the model"
        ) from exc
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is incomplete: {exc}. Re-download or re-convert the model") from exc
    return model, tokenizer, config


def check_source(source: ModelSource) -> ModelFacts:
    """The source's facts, or a ModelLoadError that names the model and says what is wrong."""
    try:
        return model_facts(source)
    except ModelLoadError as exc:
        raise _named(exc, source) from exc


def _named(exc: ModelLoadError, source: ModelSource) -> ModelLoadError:
    if source.name in exc.message:
        return exc
    return ModelLoadError(f"could not load model '{source.name}': {exc.message}")


def load_source(source: ModelSource) -> LoadedModel:
    """Blocking load; call it off the event loop."""
    start = time.perf_counter()
    check_source(source)
    try:
        if source.kind in ("embedded", "gguf"):
            model, tokenizer, config = load_gguf(source.path)
        else:
            model, tokenizer, config = _load_mlx_folder(source.path)
    except ModelLoadError as exc:
        raise _named(exc, source) from exc
    except Exception as exc:
        raise ModelLoadError(f"could not load model '{source.name}' from {source.path}: {exc}") from exc
    weight_bytes = sum(v.nbytes for _, v in _flat_parameters(model))
    seconds = time.perf_counter() - start
    logger.info("loaded {} ({}, {:.1f} MB) in {:.2f}s", source.name, source.kind, weight_bytes / 1e6, seconds)
    return LoadedModel(source, model, tokenizer, config, context_length_of(config), seconds, weight_bytes)


def _flat_parameters(model: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())
