"""The pool of loaded models, handing out engines by request model name.

A request's `model` goes through the alias table (glob patterns, so `claude-*` can map every
Claude name Claude Code sends), then to a served model: the default, the embedded model, or a
model store entry. Loading happens once per model even when many requests ask at the same time:
they all await the same task.

Memory is planned, not discovered: before a load the model's plan (`estimate.py`) must fit
the budget next to what is already loaded; idle models are unloaded, least recently used first,
to make room, and a model that cannot fit even alone is refused with the reason. With
`keep_alive_s` set, a model idle that long is unloaded and comes back on its next request.

Started as one rank of a group (`sharded.py`), the pool serves the default model alone: every
rank loads its share at start, in step with the others, and keeps it until the group stops.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_flatten

from pensieve.engine import DraftModel, Engine, EngineConfig, SpeculationConfig
from pensieve.engine.disk_cache import DiskTier
from pensieve.metal import device_info, memory_stats
from pensieve.metal.layout import UNPACKED_DTYPE, apply_layout, choose_layout
from pensieve.modelmgr.catalog import (
    budget_bytes,
    describe_source,
    plan_for,
    prefix_cache_bytes,
    servable,
    windows,
)
from pensieve.modelmgr.draft import check_draft, check_pair, draft_source, target_vocab
from pensieve.modelmgr.estimate import MemoryPlan, gib
from pensieve.modelmgr.facts import ModelFacts, source_signature
from pensieve.modelmgr.fingerprint import model_identity
from pensieve.modelmgr.loader import LoadedModel, check_source, load_source
from pensieve.modelmgr.sharded import Sharding
from pensieve.modelmgr.sources import ModelSource, resolve_source
from pensieve.modelmgr.store import ModelStore
from pensieve.models import (
    DiskCacheReport,
    DistributedStatus,
    MemoryReport,
    ModelState,
    ModelStatus,
)
from pensieve.utils import ModelLoadError, NotFoundError, OverloadedError, PensieveError, Settings
from pensieve.utils.blas import openblas_loaded
from pensieve.utils.logging import logger
from pensieve.utils.paths import model_store_dir
from pensieve.utils.prefix_folder import usage as folder_usage

T = TypeVar("T")


@dataclass(slots=True)
class ServedModel:
    source: ModelSource
    engine: Engine | None = None
    loaded: LoadedModel | None = None
    loading: asyncio.Task[Engine] | None = None
    error: str | None = None
    error_signature: tuple[Any, ...] | None = None
    """The files as they were when loading failed: the same files fail the same way."""
    plan: MemoryPlan | None = None
    """Its share of the budget, reserved from the start of a load until the unload."""
    last_used: float = 0.0
    warmup_seconds: float = 0.0

    @property
    def state(self) -> ModelState:
        if self.engine is not None:
            return "loaded"
        if self.loading is not None and not self.loading.done():
            return "loading"
        return "error" if self.error else "available"

    @property
    def busy(self) -> bool:
        return self.engine is not None and self.engine.load.busy


class ModelPool:
    """Resolve names, load on demand (or at start) within the memory budget, keep engines."""

    def __init__(self, settings: Settings, *, store: Path | ModelStore | None = None, sharding: Sharding | None = None) -> None:
        self.settings = settings
        self.sharding = sharding
        """This process is one rank of a group serving the default model (None: it serves alone)."""
        self.store = store if isinstance(store, ModelStore) else ModelStore(store or model_store_dir())
        default = resolve_source(settings.model.default, self.store, allow_paths=True)
        self.default_name = default.name
        self.budget_bytes = budget_bytes(settings)
        self._models: dict[str, ServedModel] = {default.name: ServedModel(default)}
        self._admission = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        # Loads and unloads run on the pool's own threads, joined by close(): a thread that ran
        # MLX and outlives the interpreter's shutdown aborts the process as it exits.
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pensieve-load")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def engine_config(self, plan: MemoryPlan) -> EngineConfig:
        perf = self.settings.performance
        return EngineConfig(
            max_concurrent_requests=perf.max_concurrent_requests,
            max_queued_requests=perf.max_queued_requests,
            prefill_step_size=perf.prefill_step_size,
            prefix_cache_bytes=prefix_cache_bytes(self.settings, plan.kv_pool),
            prefix_cache_entries=perf.prefix_cache_entries,
            context_policy=self.settings.model.context_policy,
            kv_bits=plan.kv_bits,
            kv_cost=plan.kv_cost,
            kv_capacity_bytes=self._kv_capacity(plan),
            attention_scores_bytes=plan.attention_scores_bytes,
            attention_score_bytes=2 * plan.activation_element_bytes,
            idle_release_s=perf.idle_release_s,
            speculation=SpeculationConfig(
                mode=perf.speculation,
                ngram_min=perf.speculation_ngram_min,
                ngram_max=perf.speculation_ngram_max,
                max_draft=perf.speculation_max_draft,
            ),
        )

    def _kv_capacity(self, plan: MemoryPlan) -> int:
        """An engine's KV bytes: its own full window plus an equal share of what no model reserved."""
        planned = [m.plan for m in self._models.values() if m.plan is not None]
        if plan not in planned:
            planned.append(plan)
        spare = max(0, self.budget_bytes - sum(p.reserved for p in planned))
        return plan.kv_cost.bytes(plan.context_length) + spare // len(planned)

    def _rebalance(self) -> None:
        """A model (un)loaded: each engine's KV capacity follows (engine/kv_budget.py)."""
        for served in self._models.values():
            if served.engine is not None and served.plan is not None:
                served.engine.set_kv_capacity(self._kv_capacity(served.plan))

    # -- names ------------------------------------------------------------------------------

    def resolve_name(self, requested: str | None) -> str:
        """Request model name -> served model name, through aliases; NotFoundError if none.

        Alias targets come from the operator's settings, so they may be paths; the request's own
        name only ever reaches the embedded model and the model store.
        """
        if not requested:
            return self.default_name
        target, from_alias = requested, False
        for pattern, aliased in self.settings.model.aliases.items():
            if fnmatch.fnmatchcase(requested, pattern):
                target, from_alias = aliased, True
                break
        if target in self._models:
            return target
        try:
            source = resolve_source(target, self.store, allow_paths=from_alias)
        except NotFoundError:
            if self.settings.model.unknown == "default":
                return self.default_name
            raise
        self._models.setdefault(source.name, ServedModel(source))
        return source.name

    # -- loading ----------------------------------------------------------------------------

    async def engine(self, requested: str | None) -> Engine:
        name = self.resolve_name(requested)
        if self.sharding is not None and name != self.default_name:
            raise NotFoundError(
                f"model '{name}' is not served: this server runs '{self.default_name}' across "
                f"{self.sharding.group.size} processes and serves that model alone; ask for it, or alias this name to it",
                param="model",
            )
        served = self._models[name]
        served.last_used = time.monotonic()
        if served.engine is not None:
            return served.engine
        if served.loading is None or served.loading.done():
            if served.error and served.error_signature == source_signature(served.source):
                raise ModelLoadError(served.error)  # unchanged files: fail fast, no reload
            served.loading = asyncio.create_task(self._load(served))
            served.loading.add_done_callback(lambda t: t.cancelled() or t.exception())
        engine = await asyncio.shield(served.loading)
        served.last_used = time.monotonic()  # idle time starts now, not before a long load
        return engine

    def _draft_for(self, served: ServedModel) -> ModelSource | None:
        """`model.draft` drafts for the default model only (it must share that model's tokenizer)."""
        if served.source.name != self.default_name or self.settings.performance.speculation == "off":
            return None
        try:
            return draft_source(self.settings, self.store)
        except PensieveError as exc:
            raise ModelLoadError(f"model.draft: {exc.message}") from exc

    def _load_draft(self, source: ModelSource, target: LoadedModel) -> DraftModel:
        """Load the draft next to its target, refuse it unless they share a tokenizer, lay it out."""
        loaded = load_source(source)
        check_pair(target, loaded)
        self._choose_layout(loaded)
        logger.info("{}: {} drafts for it", target.source.name, source.name)
        return DraftModel(loaded.model, loaded.batch_model, target_vocab(target))

    async def _load(self, served: ServedModel) -> Engine:
        served.error = served.error_signature = None
        name = served.source.name
        try:
            draft = None
            if self.sharding is not None:  # this rank's share, planned with the other ranks
                facts, plan = await self._off_loop(self.sharding.plan, served.source, self.settings)
            else:
                facts = await self._off_loop(check_source, served.source)
                draft = self._draft_for(served)
                draft_facts = await self._off_loop(check_draft, draft) if draft is not None else None
                plan = plan_for(facts, self.settings, name=name, draft=draft_facts)
            async with self._admission:
                await self._make_room(served, plan.reserved)
                served.plan = plan
            if plan.context_length < facts.context_length and not self.settings.model.context_length:
                logger.warning(
                    "{}: serving a {}-token context window instead of the model's {} to stay within the "
                    "memory budget; set performance.kv_cache_bits to 8 or 4 for a longer one",
                    name, plan.context_length, facts.context_length,
                )  # fmt: skip
            self._log_windows(name, facts)
            loaded = await self._off_loop(self.sharding.load if self.sharding else load_source, served.source)
            if self.sharding is None:  # a share stays as stored: its sharded layers must stay what they are
                await self._off_loop(self._choose_layout, loaded)
            drafting = await self._off_loop(self._load_draft, draft, loaded) if draft is not None else None
            # The layout may have added a twin: the KV pool is what is left beside what loaded.
            plan = served.plan = replace(plan, weights=plan.weights - facts.weight_bytes + loaded.weight_bytes)
            if self.sharding is not None:
                plan = served.plan = await self._off_loop(self.sharding.agree, plan)
                self.budget_bytes = plan.budget  # this rank's weights beside the group's common KV pool
            engine = Engine(
                loaded.model,
                loaded.tokenizer,
                name=name,
                context_length=min(plan.context_length, loaded.context_length),
                config=replace(self.engine_config(plan), prefix_disk=await self._off_loop(self._disk_tier, loaded)),
                batch_model=loaded.batch_model,
                draft=drafting,
                group=self.sharding.group if self.sharding is not None else None,
            )
            if self.settings.performance.warmup and (self.sharding is None or self.sharding.group.leads):
                served.warmup_seconds = await engine.warmup()
                logger.info("warmed up {} in {:.2f}s", name, served.warmup_seconds)
        except BaseException as exc:
            served.plan = None
            if isinstance(exc, PensieveError) and not isinstance(exc, OverloadedError):
                served.error = exc.message
                served.error_signature = source_signature(served.source)
            elif isinstance(exc, Exception):
                served.error = f"could not load model '{name}': {exc}"
            raise
        served.loaded, served.engine = loaded, engine
        served.last_used = time.monotonic()
        self._rebalance()
        logger.info("model {} ready: loaded in {:.2f}s; memory plan: {}", name, loaded.load_seconds, plan.describe())
        return engine

    def _disk_tier(self, loaded: LoadedModel) -> DiskTier | None:
        """Where the model's prefixes are kept on disk; None when the disk tier is off."""
        perf = self.settings.performance
        if perf.prefix_cache_disk_gb <= 0 or self.sharding is not None:  # a rank's files hold only its share
            return None
        identity = model_identity(loaded.source.path, loaded.layout)
        return DiskTier(perf.prefix_cache_path, int(perf.prefix_cache_disk_gb * 1024**3), identity)

    def _log_windows(self, name: str, facts: ModelFacts) -> None:
        n = self.settings.performance.max_concurrent_requests
        rows = [
            f"{'unquantized' if w.kv_bits is None else f'{w.kv_bits}-bit'} KV: "
            + (f"{w.single} tokens alone, {w.concurrent} each at {n}" if w.single else "does not fit")
            for w in windows(facts, self.settings)
        ]
        logger.info("{}: windows on this budget: {}", name, "; ".join(rows))

    def _choose_layout(self, loaded: LoadedModel) -> None:
        """Unpack a quantized model where this backend computes faster that way (metal/layout.py)."""
        backend = device_info().backend
        strategy = self.settings.performance.weights_layout
        layout = choose_layout(loaded.model, self.budget_bytes, strategy, backend, openblas_loaded())
        if layout not in ("dequantized", "both"):
            return
        loaded.batch_model = apply_layout(loaded.model, layout, backend)
        dtype = UNPACKED_DTYPE[backend]
        loaded.layout = f"dequantized ({dtype})" if layout == "dequantized" else f"as stored for one sequence, {dtype} for batches"
        models = [loaded.model] + ([loaded.batch_model] if loaded.batch_model is not None else [])
        loaded.weight_bytes = sum(v.nbytes for m in models for _, v in tree_flatten(m.parameters()))
        logger.info("{}: weights {} on the {} backend ({:.0f} MB)",
                    loaded.source.name, loaded.layout, backend, loaded.weight_bytes / 1e6)  # fmt: skip

    async def _make_room(self, served: ServedModel, need: int) -> None:
        """Unload idle models, least recently used first, until `need` more bytes fit."""
        while True:
            others = [m for m in self._models.values() if m is not served and m.plan is not None]
            in_use = sum(m.plan.reserved for m in others if m.plan is not None)
            if in_use + need <= self.budget_bytes:
                return
            idle = [m for m in others if m.engine is not None and not m.busy]
            if not idle:
                holders = ", ".join(f"{m.source.name} ({m.state})" for m in others)
                raise OverloadedError(
                    f"model '{served.source.name}' needs {gib(need)} and the memory budget of "
                    f"{gib(self.budget_bytes)} is held by models that are busy or loading: "
                    f"{holders}. Retry in a few seconds",
                    headers={"retry-after": "5"},
                )
            victim = min(idle, key=lambda m: m.last_used)
            await self._unload(victim, f"least recently used; making room for {served.source.name}")

    async def _unload(self, served: ServedModel, reason: str) -> None:
        engine = served.engine
        served.engine = served.loaded = served.plan = None
        if engine is not None:
            await self._off_loop(engine.close)
            del engine
            gc.collect()
            mx.clear_cache()
        self._rebalance()
        logger.info("unloaded {} ({})", served.source.name, reason)

    async def _unload_idle(self) -> None:
        """Every few seconds, unload what has been idle for keep_alive_s."""
        keep = self.settings.model.keep_alive_s
        while True:
            await asyncio.sleep(min(max(keep / 4, 0.05), 30.0))
            async with self._admission:
                now = time.monotonic()
                for served in list(self._models.values()):
                    if served.busy:
                        served.last_used = now  # idle time counts from the end of the work
                    elif served.engine is not None and now - served.last_used >= keep:
                        await self._unload(served, f"idle for {keep:g}s")

    async def start(self) -> None:
        """Preload the default model (a group's ranks always do, together, and never unload it)."""
        if self.settings.model.keep_alive_s > 0 and self._reaper is None and self.sharding is None:
            self._reaper = asyncio.create_task(self._unload_idle())
        if self.settings.model.preload or self.sharding is not None:
            await self.engine(self.default_name)

    # -- reporting --------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        """Every servable model: loaded, loading, failed, or available (store, embedded)."""
        if self.sharding is not None:  # a group serves its one model
            return [self._describe(self._models[self.default_name])]
        out = [self._describe(served) for served in self._models.values()]
        for name, found in servable(self.store):
            if name in self._models:
                continue
            if isinstance(found, PensieveError):
                out.append(ModelStatus(name=name, source="store", state="error", error=found.message))
            else:
                out.append(describe_source(found, self.settings))
        return out

    def _describe(self, served: ServedModel) -> ModelStatus:
        status = describe_source(served.source, self.settings, served.state)
        if served.plan is not None:
            plan = served.plan
            status = replace(status, estimated_bytes=plan.reserved, concurrent_context_length=plan.window_at(plan.concurrency))
        if served.loaded is not None and served.engine is not None:
            status = replace(
                status,
                context_length=served.engine.context_length,
                weight_bytes=served.loaded.weight_bytes,
                layout=served.loaded.layout,
                load_seconds=round(served.loaded.load_seconds, 3),
                warmup_seconds=round(served.warmup_seconds, 3),
                idle_seconds=round(time.monotonic() - served.last_used, 1),
                load=served.engine.load,
                kv=served.engine.kv_status(),
                prefix_cache=served.engine.prefix_cache,
            )
        return replace(status, error=served.error) if served.error else status

    def distributed(self) -> DistributedStatus | None:
        """The group this process serves its model with (rank 0's view); None when it serves alone."""
        return self.sharding.group.status() if self.sharding is not None else None

    def loaded_engines(self) -> list[Engine]:
        return [m.engine for m in self._models.values() if m.engine is not None]

    def disk_cache(self) -> DiskCacheReport | None:
        """The prefix cache's disk tier as a whole (every model's files); None when it is off."""
        perf = self.settings.performance
        if perf.prefix_cache_disk_gb <= 0 or self.sharding is not None:
            return None
        files, nbytes = folder_usage(perf.prefix_cache_path)
        return DiskCacheReport(str(perf.prefix_cache_path), nbytes, files, int(perf.prefix_cache_disk_gb * 1024**3))

    def memory(self) -> MemoryReport:
        reserved = sum(m.plan.reserved for m in self._models.values() if m.plan is not None)
        stats = memory_stats()
        return MemoryReport(
            active_bytes=stats.active_bytes,
            peak_bytes=stats.peak_bytes,
            cache_bytes=stats.cache_bytes,
            budget_bytes=self.budget_bytes,
            reserved_bytes=reserved,
        )

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        for served in self._models.values():
            if served.loading is not None and not served.loading.done():
                served.loading.cancel()
            if served.engine is not None:
                await self._off_loop(served.engine.close)
                served.engine = served.loaded = served.plan = None
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)
