"""What the server needs from the layers below, as protocols, so each side tests alone."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from pensieve.engine import Generation
from pensieve.models import (
    ChatRequest,
    DiskCacheReport,
    DistributedStatus,
    MemoryReport,
    ModelStatus,
)


class EngineLike(Protocol):
    name: str
    context_length: int

    def open(self, request: ChatRequest) -> AbstractAsyncContextManager[Generation]: ...

    def count_tokens(self, request: ChatRequest) -> int: ...


class ModelProvider(Protocol):
    default_name: str

    def resolve_name(self, requested: str | None) -> str: ...

    async def engine(self, requested: str | None) -> EngineLike: ...

    def status(self) -> list[ModelStatus]: ...

    def memory(self) -> MemoryReport: ...

    def disk_cache(self) -> DiskCacheReport | None: ...

    def distributed(self) -> DistributedStatus | None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
