"""What can be served, described the same way for `pensieve models list` and `/health`.

Both show each model's source, quantization, context window, size on disk and estimated memory
under the current settings; sharing one function keeps the CLI and the server from disagreeing
about a model.
"""

from __future__ import annotations

from pensieve.metal import memory_budget_bytes
from pensieve.modelmgr.embedded import EMBEDDED_NAME
from pensieve.modelmgr.estimate import MemoryEstimate, estimate_memory
from pensieve.modelmgr.facts import ModelFacts, model_facts
from pensieve.modelmgr.sources import ModelSource, resolve_source
from pensieve.modelmgr.store import ModelStore
from pensieve.models import ModelState, ModelStatus
from pensieve.utils import PensieveError, Settings


def default_estimate(facts: ModelFacts, settings: Settings) -> MemoryEstimate:
    """The estimate at the model's window (or the configured one, if smaller)."""
    configured = settings.model.context_length
    return estimate_memory(
        facts,
        context_length=min(facts.context_length, configured or facts.context_length),
        concurrency=settings.performance.max_concurrent_requests,
        prefill_step=settings.performance.prefill_step_size,
        prefix_cache_bytes=prefix_cache_bytes(settings),
    )


def budget_bytes(settings: Settings) -> int:
    return memory_budget_bytes(settings.model.memory_budget_fraction, settings.model.memory_budget_gb)


def prefix_cache_bytes(settings: Settings) -> int:
    """Each engine's prompt-prefix cache: as configured, or (unset) a quarter of the budget."""
    megabytes = settings.performance.prefix_cache_mb
    return budget_bytes(settings) // 4 if megabytes is None else int(megabytes * 1024**2)


def describe_source(source: ModelSource, settings: Settings, state: ModelState = "available") -> ModelStatus:
    """The model as its files describe it, with its estimated memory (or why it cannot be read)."""
    try:
        facts = model_facts(source)
    except PensieveError as exc:
        return ModelStatus(name=source.name, source=source.kind, state=state, error=exc.message)
    estimate = default_estimate(facts, settings)
    return ModelStatus(
        name=source.name,
        source=source.kind,
        state=state,
        quantization=facts.quantization,
        context_length=estimate.context_length,
        size_bytes=facts.disk_bytes,
        estimated_bytes=estimate.total,
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
