"""What the model pool reports about its models and memory, as typed records.

The pool (pensieve.modelmgr) builds these and every reader takes them as they are: `/health`,
`/v1/models`, `/metrics`, the SIGUSR1 dump and the CLI. They sit here, below both the pool and
the server, so neither has to agree with the other on dictionary keys. `as_dict()` is the JSON
shape of `/health` and `pensieve models list --json`: a figure that is not known is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

ModelState = Literal["loaded", "loading", "error", "available"]


def _known(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        out[f.name] = asdict(value) if hasattr(value, "__dataclass_fields__") else value
    return out


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """Sequences of one loaded model: decoding now, waiting for a slot, and admitted in all."""

    active: int
    queued: int
    inflight: int

    @property
    def busy(self) -> bool:
        return bool(self.active or self.queued or self.inflight)


@dataclass(frozen=True, slots=True)
class KVStatus:
    """A loaded model's KV memory: its share of the budget and who holds it."""

    capacity_bytes: int
    sequences_bytes: int
    """Held by the sequences running now."""
    prefix_cache_bytes: int
    """Held by cached prefixes (given back first when a live request needs room)."""
    preemptions: int
    """Sequences paused for memory and resumed later, since the model loaded."""
    kv_cache_bits: int | None = None


@dataclass(frozen=True, slots=True)
class CacheTier:
    """One tier of a model's prefix cache: lookups it answered, lookups it could not, and what
    it holds. A lookup goes to memory first and to disk only when memory missed, so the disk's
    hits and misses add up to the memory's misses."""

    hits: int
    misses: int
    bytes: int
    entries: int


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """A loaded model's prefix cache, per tier; `disk` is None when the disk tier is off."""

    memory: CacheTier
    disk: CacheTier | None = None


@dataclass(frozen=True, slots=True)
class DiskCacheReport:
    """The disk tier's folder as a whole: every model's files, against the configured bound."""

    path: str
    bytes: int
    files: int
    max_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return _known(self)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One servable model: its source and, once loaded, what it got."""

    name: str
    source: str
    state: ModelState
    quantization: str | None = None
    context_length: int | None = None
    """The window one conversation gets on this machine's budget (the model's own if it fits)."""
    concurrent_context_length: int | None = None
    """The window each of `performance.max_concurrent_requests` conversations could have at once."""
    kv_cache_bits: int | None = None
    size_bytes: int | None = None
    estimated_bytes: int | None = None
    weight_bytes: int | None = None
    layout: str | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    idle_seconds: float | None = None
    load: EngineLoad | None = None
    kv: KVStatus | None = None
    prefix_cache: PrefixCacheStats | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return _known(self)


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """MLX's allocator figures beside the budget and what the loaded models reserved of it."""

    active_bytes: int
    peak_bytes: int
    cache_bytes: int
    budget_bytes: int
    reserved_bytes: int

    def as_dict(self) -> dict[str, int]:
        return _known(self)


@dataclass(frozen=True, slots=True)
class RankStatus:
    """One process of a distributed group: the machine it runs on and its memory."""

    rank: int
    host: str
    active_bytes: int | None = None
    """MLX's live allocations on that rank, as of its last step."""
    peak_bytes: int | None = None
    budget_bytes: int | None = None
    """That machine's memory budget (model.memory_budget_*)."""
    weight_bytes: int | None = None
    """Its share of the weights, as loaded."""
    kv_pool_bytes: int | None = None
    """What its plan leaves for KV caches (every rank admits by the smallest)."""

    def as_dict(self) -> dict[str, Any]:
        return _known(self)


@dataclass(frozen=True, slots=True)
class DistributedStatus:
    """A model served by several processes (`mx.distributed`), as rank 0 sees the group."""

    backend: str
    """`ring`, `jaccl`, `nccl` or `mpi`."""
    world_size: int
    parallel: str
    """`tensor` or `pipeline`."""
    ranks: tuple[RankStatus, ...]
    healthy: bool = True
    error: str | None = None
    """Why the group broke (it is exiting); None while it serves."""

    def as_dict(self) -> dict[str, Any]:
        out = _known(self)
        out["ranks"] = [r.as_dict() for r in self.ranks]
        return out
