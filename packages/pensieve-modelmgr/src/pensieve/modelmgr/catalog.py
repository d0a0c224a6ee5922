"""What can be served, described the same way for `pensieve models list` and `/health`.

Both show each model's source, quantization, context window (for one conversation and at the
configured concurrency), size on disk and the memory it reserves under the current settings on
this machine; sharing one function keeps the CLI and the server from disagreeing about a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pensieve.metal import device_info, memory_budget_bytes, quantized_kv_runs
from pensieve.modelmgr.embedded import EMBEDDED_NAME
from pensieve.modelmgr.estimate import MemoryPlan, plan_memory
from pensieve.modelmgr.facts import ModelFacts, model_facts
from pensieve.modelmgr.sources import ModelSource, resolve_source
from pensieve.modelmgr.store import ModelStore
from pensieve.models import ModelState, ModelStatus
from pensieve.utils import ModelLoadError, PensieveError, Settings

AUTO_KV_BITS = 8
"""What `kv_cache_bits = "auto"` falls back to: near-lossless (benchmarks.md), half the memory."""


def plan_for(
    facts: ModelFacts,
    settings: Settings,
    *,
    name: str = "model",
    bits: int | None | str = "settings",
    draft: ModelFacts | None = None,
) -> MemoryPlan:
    """The model's memory plan on this machine under `settings` (`bits` overrides the KV width).

    `kv_cache_bits = "auto"` keeps the cache unquantized when the model's window fits that way
    and quantizes it to 8 bits when that gives the window (or more of it) instead. A width the
    model or the backend cannot run (`quantized_kv_runs`) is planned unquantized, as the engine
    will then run it.
    """
    chosen = settings.performance.kv_cache_bits if bits == "settings" else bits
    width = AUTO_KV_BITS if chosen == "auto" else chosen
    if isinstance(width, int) and not quantized_kv_runs(width, facts.head_dim):
        chosen = None  # the engine keeps such a cache unquantized (and says why): plan for that
    if chosen == "auto":
        try:
            plain = plan_for(facts, settings, name=name, bits=None, draft=draft)
        except ModelLoadError:
            return plan_for(facts, settings, name=name, bits=AUTO_KV_BITS, draft=draft)
        wanted = min(facts.context_length, settings.model.context_length or facts.context_length)
        if plain.context_length >= wanted:
            return plain
        try:
            packed = plan_for(facts, settings, name=name, bits=AUTO_KV_BITS, draft=draft)
        except ModelLoadError:
            return plain
        return packed if packed.context_length > plain.context_length else plain
    return plan_memory(
        facts,
        name=name,
        budget=budget_bytes(settings),
        concurrency=settings.performance.max_concurrent_requests,
        prefill_step=settings.performance.prefill_step_size,
        configured_context=settings.model.context_length,
        kv_bits=None if chosen == "none" else chosen,  # type: ignore[arg-type]
        fused_attention=device_info().backend == "metal",
        draft=draft,
    )


def budget_bytes(settings: Settings) -> int:
    return memory_budget_bytes(settings.model.memory_budget_fraction, settings.model.memory_budget_gb)


def prefix_cache_bytes(settings: Settings, kv_pool: int) -> int:
    """The prefix cache's cap: as configured, or (unset) the whole KV pool it shares."""
    megabytes = settings.performance.prefix_cache_mb
    return kv_pool if megabytes is None else int(megabytes * 1024**2)


@dataclass(frozen=True, slots=True)
class Windows:
    """The longest window on this machine's budget at one sequence and at the configured
    concurrency, for one KV cache width; None where the model does not fit at all."""

    kv_bits: int | None
    single: int | None
    concurrent: int | None


def windows(facts: ModelFacts, settings: Settings) -> list[Windows]:
    """What fits, unquantized and with 8- and 4-bit KV, for `models list`, `doctor` and the load log."""
    out = []
    for bits in (None, 8, 4):
        try:
            plan = plan_for(facts, settings, bits=bits)
        except PensieveError:
            out.append(Windows(bits, None, None))
            continue
        out.append(Windows(bits, plan.context_length, plan.window_at(plan.concurrency)))
    return out


def describe_source(source: ModelSource, settings: Settings, state: ModelState = "available") -> ModelStatus:
    """The model as its files describe it, with its planned memory (or why it cannot be read)."""
    try:
        facts = model_facts(source)
    except PensieveError as exc:
        return ModelStatus(name=source.name, source=source.kind, state=state, error=exc.message)
    status = ModelStatus(name=source.name, source=source.kind, state=state, quantization=facts.quantization,
                         size_bytes=facts.disk_bytes)  # fmt: skip
    try:
        plan = plan_for(facts, settings, name=source.name)
    except PensieveError as exc:
        return replace(status, error=exc.message)
    return replace(
        status,
        context_length=plan.context_length,
        concurrent_context_length=plan.window_at(plan.concurrency),
        kv_cache_bits=plan.kv_bits,
        estimated_bytes=plan.reserved,
    )


def servable(store: ModelStore) -> list[tuple[str, ModelSource | PensieveError]]:
    """Every store entry and the embedded model, resolved as a request's name would be."""
    names = [entry.name for entry in store.entries()] + [EMBEDDED_NAME]
    found: list[tuple[str, ModelSource | PensieveError]] = []
    for name in names:
        try:
            found.append((name, resolve_source(name, store, allow_paths=False)))
        except PensieveError as exc:
            found.append((name, exc))
    return found
