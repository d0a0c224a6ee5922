"""One sequence as both threads see it: what the request asked for, and the compute thread's record.

The request's event loop creates it and reads its messages; the compute thread fills in
`history`, the timestamps and the cache figures, and sends `Admitted`, `TokenOut` and
`SequenceEnd` through the request's loop, never touching the loop's objects itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pensieve.engine.channel import Admitted, FinishReason, Output, SequenceEnd, Sink, TokenOut
from pensieve.engine.speculate import Speculation
from pensieve.models import SamplingParams


@dataclass(eq=False)
class Job:
    """One sequence, as seen from both threads."""

    prompt: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    sink: Sink
    sampler: Any = None
    sampling: SamplingParams | None = None
    """What `sampler` was made from: the other ranks of a group make theirs from it."""
    constraint: Any = None
    """Structured output: the sequence's `SequenceConstraint`, or None (unconstrained)."""
    speculation: Speculation | None = None
    """Speculative decoding on the single-sequence path; None where it is off."""
    cached: int = 0
    """Prompt tokens served from the prefix cache (set on the compute thread at admission)."""
    persist: int = 0
    """Leading prompt tokens worth keeping past this request (the prefix cache's lower tier)."""
    history: list[int] = field(default_factory=list)
    """Prompt plus generated tokens (compute thread only)."""
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    cancelled: bool = False
    finished: bool = False
    retried: bool = False
    """Resumed alone after a failed batched step; a second failure is its own."""
    preempted: int = 0
    """Times it gave its memory back and waited to resume."""
    on_gone: Callable[[Job], None] | None = None
    """Called when its reader's event loop is gone (default: mark it cancelled)."""

    @property
    def produced(self) -> int:
        return len(self.history) - len(self.prompt)

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.produced

    def admitted(self) -> None:
        self._send(Admitted(self.cached))

    def emit(self, token: int) -> None:
        self._send(TokenOut(token))

    def end(self, reason: FinishReason, token: int | None = None, error: BaseException | None = None) -> None:
        if self.speculation is not None:
            self.speculation.release()  # its memory is back before the reader hears of the end
        self._send(SequenceEnd(reason, token, error))

    def _send(self, output: Output) -> None:
        try:
            self.loop.call_soon_threadsafe(self.sink, output)
        except RuntimeError:  # the request's loop is gone: nobody is listening any more
            if self.on_gone is None:
                self.cancelled = True
            else:
                self.on_gone(self)
