"""The pool of loaded models, handing out engines by request model name.

A request's `model` goes through the alias table (glob patterns, so `claude-*` can map every
Claude name Claude Code sends), then to a served model. Loading happens once per model even when
many requests ask at the same time: they all await the same task.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pensieve.engine import Engine, EngineConfig
from pensieve.metal import memory_stats
from pensieve.modelmgr.loader import LoadedModel, load_source
from pensieve.modelmgr.sources import ModelSource, resolve_source
from pensieve.utils import NotFoundError, Settings
from pensieve.utils.logging import logger
from pensieve.utils.paths import model_store_dir


@dataclass(slots=True)
class ServedModel:
    source: ModelSource
    engine: Engine | None = None
    loaded: LoadedModel | None = None
    loading: asyncio.Task[Engine] | None = None
    error: str | None = None
    last_used: float = 0.0
    warmup_seconds: float = 0.0

    @property
    def state(self) -> str:
        if self.engine is not None:
            return "loaded"
        if self.loading is not None and not self.loading.done():
            return "loading"
        return "error" if self.error else "available"


class ModelPool:
    """Resolve names, load on demand (or at start), and keep engines."""

    def __init__(self, settings: Settings, *, store: Path | None = None) -> None:
        self.settings = settings
        self.store = store or model_store_dir()
        default = resolve_source(settings.model.default, self.store, allow_paths=True)
        self.default_name = default.name
        self._models: dict[str, ServedModel] = {default.name: ServedModel(default)}

    @property
    def engine_config(self) -> EngineConfig:
        perf = self.settings.performance
        return EngineConfig(
            max_concurrent_requests=perf.max_concurrent_requests,
            max_queued_requests=perf.max_queued_requests,
            prefill_step_size=perf.prefill_step_size,
            context_policy=self.settings.model.context_policy,
        )

    def resolve_name(self, requested: str | None) -> str:
        """Request model name -> served model name, through aliases; NotFoundError if none."""
        if not requested:
            return self.default_name
        for pattern, target in self.settings.model.aliases.items():
            if fnmatch.fnmatchcase(requested, pattern):
                requested = target
                break
        if requested in self._models:
            return requested
        try:
            source = resolve_source(requested, self.store, allow_paths=False)
        except NotFoundError:
            if self.settings.model.unknown == "default":
                return self.default_name
            raise
        self._models.setdefault(source.name, ServedModel(source))
        return source.name

    async def engine(self, requested: str | None) -> Engine:
        served = self._models[self.resolve_name(requested)]
        served.last_used = time.monotonic()
        if served.engine is not None:
            return served.engine
        if served.loading is None or served.loading.done():
            served.loading = asyncio.create_task(self._load(served))
        return await asyncio.shield(served.loading)

    async def _load(self, served: ServedModel) -> Engine:
        served.error = None
        try:
            loaded = await asyncio.to_thread(load_source, served.source)
            context = loaded.context_length
            if self.settings.model.context_length:
                context = min(context, self.settings.model.context_length)
            engine = Engine(
                loaded.model,
                loaded.tokenizer,
                name=served.source.name,
                context_length=context,
                config=self.engine_config,
            )
            if self.settings.performance.warmup:
                served.warmup_seconds = await engine.warmup()
                logger.info("warmed up {} in {:.2f}s", served.source.name, served.warmup_seconds)
        except Exception as exc:
            served.error = str(exc)
            raise
        served.loaded, served.engine = loaded, engine
        return engine

    async def start(self) -> None:
        if self.settings.model.preload:
            await self.engine(self.default_name)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, served in self._models.items():
            entry: dict[str, Any] = {"name": name, "source": served.source.kind, "state": served.state}
            if served.loaded is not None:
                entry.update(
                    context_length=served.engine.context_length if served.engine else served.loaded.context_length,
                    weight_bytes=served.loaded.weight_bytes,
                    load_seconds=round(served.loaded.load_seconds, 3),
                    warmup_seconds=round(served.warmup_seconds, 3),
                )
            if served.engine is not None:
                entry["load"] = served.engine.load
            if served.error:
                entry["error"] = served.error
            out.append(entry)
        return out

    def loaded_engines(self) -> list[Engine]:
        return [m.engine for m in self._models.values() if m.engine is not None]

    def memory(self) -> dict[str, int]:
        return memory_stats().as_dict()

    async def close(self) -> None:
        for served in self._models.values():
            if served.loading is not None and not served.loading.done():
                served.loading.cancel()
            if served.engine is not None:
                await asyncio.to_thread(served.engine.close)
                served.engine = None
