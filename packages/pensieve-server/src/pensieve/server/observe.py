"""What the running server knows about its own requests, for logs, metrics, status and dumps.

One `Observer` per app records every request while it runs (so SIGUSR1 can list them and
SIGINT can cancel them), keeps the last few finished ones with their latencies, counts requests
served, and carries the daemon's own state: whether it is draining and how often its
configuration was reloaded. The per-request figures come from the engine's final `Finished`
event, which `streaming.watched()` stores on the request under `keys.FINISHED`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from pensieve.engine import Generation
from pensieve.models import Finished
from pensieve.server.keys import BODY, FINISHED, REQUEST_ID

RECENT = 50
"""Finished requests kept for the diagnostic dump."""


@dataclass(slots=True)
class ActiveRequest:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[Any] | None = None
    generation: Generation | None = None
    """Set once the engine admitted the request (`streaming.watched`): its live token count."""

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "running_s": round(time.monotonic() - self.started, 3),
        }
        if self.generation is not None:
            described.update(
                model=self.generation.engine.name,
                input_tokens=self.generation.input_tokens,
                output_tokens=self.generation.produced,
            )
        return described


@dataclass(slots=True)
class RequestSummary:
    """One finished request, as logged, counted and dumped. No content, ever."""

    request_id: str
    method: str
    path: str
    route: str
    status: int
    duration_s: float
    model: str | None = None
    requested_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens served from the prefix cache."""
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    time_per_token_s: float | None = None
    queue_s: float | None = None
    stop_reason: str | None = None
    tokens_per_pass: float | None = None
    """Decode tokens per forward pass of the single-sequence path (above 1 with speculation)."""
    speculation_acceptance: float | None = None
    """Share of speculatively proposed tokens the model accepted."""
    profile: dict[str, float] | None = None
    """Phase timings and memory marks from the engine's profiler (see pensieve.metal.profiler)."""

    @property
    def generated(self) -> bool:
        return self.output_tokens is not None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def line(self) -> str:
        """The human-readable request log line."""
        text = f"{self.method} {self.path} {self.status} {self.duration_s:.3f}s"
        if self.generated:
            text += f" model={self.model} in={self.input_tokens} out={self.output_tokens}"
            if self.ttft_s is not None:
                text += f" ttft={self.ttft_s:.3f}s"
            if self.tokens_per_s is not None:
                text += f" {self.tokens_per_s:.1f} tok/s"
            if self.tokens_per_pass is not None:
                text += f" {self.tokens_per_pass:.2f} tok/pass accepted={self.speculation_acceptance or 0:.0%}"
            text += f" stop={self.stop_reason}"
        return text


def summarize(
    request: web.Request, status: int, duration_s: float, served_model: str | None, requested: str | None
) -> RequestSummary:
    """Build a request's summary from its status, timing and the engine's Finished event."""
    info = request.match_info.route.resource if request.match_info.route is not None else None
    summary = RequestSummary(
        request_id=request.get(REQUEST_ID, ""),
        method=request.method,
        path=request.path,
        route=info.canonical if info is not None else "unmatched",
        status=status,
        duration_s=round(duration_s, 6),
    )
    finished: Finished | None = request.get(FINISHED)
    if finished is None:
        return summary
    timings = finished.timings
    out = finished.usage.output_tokens
    decode = timings.get("decode_s", 0.0)
    summary.model, summary.requested_model = served_model, requested
    summary.input_tokens, summary.output_tokens = finished.usage.input_tokens, out
    summary.cached_tokens = finished.usage.cache_read_input_tokens
    summary.stop_reason = finished.stop_reason
    summary.profile = dict(finished.timings)
    if timings.get("decode_passes"):
        summary.tokens_per_pass = timings.get("tokens_per_pass")
        summary.speculation_acceptance = timings.get("speculation_acceptance")
    if "prefill_s" in timings:
        summary.ttft_s = round(timings.get("queue_s", 0.0) + timings["prefill_s"], 6)
        summary.queue_s = round(timings.get("queue_s", 0.0), 6)
    if out > 1 and decode > 0:
        # The first token comes out of prefill; decode time covers the other out - 1.
        summary.time_per_token_s = round(decode / (out - 1), 6)
        summary.tokens_per_s = round((out - 1) / decode, 3)
    return summary


def requested_model(request: web.Request) -> str | None:
    """The `model` a generation request asked for, from the body its handler read (`BODY`).

    Only called after a generation finished, so the body was read by the handler.
    """
    raw = request.get(BODY)
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


@dataclass(slots=True)
class TokenTotals:
    """Tokens of the generations that ended since start, for rates and the prefix-cache hit rate."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    """Counted for every generation that produced tokens, finished or cut short."""


class Observer:
    """Per-app request registry and daemon state."""

    def __init__(self) -> None:
        self.active: dict[str, ActiveRequest] = {}
        self.recent: deque[RequestSummary] = deque(maxlen=RECENT)
        self.served = 0
        self.draining = False
        self.reloads = 0
        self.reloaded_at: float | None = None
        self.pid_file: str | None = None
        self.tokens = TokenTotals()

    def begin(self, request: web.Request) -> ActiveRequest:
        entry = ActiveRequest(request.get(REQUEST_ID, ""), request.method, request.path, task=asyncio.current_task())
        self.active[entry.request_id] = entry
        return entry

    def attach(self, request_id: str, generation: Generation) -> None:
        """Link a running request to its generation, so its tokens can be counted while it runs."""
        if (entry := self.active.get(request_id)) is not None:
            entry.generation = generation

    def end(self, summary: RequestSummary, *, counted: bool = True) -> None:
        """Forget a finished request; `counted` ones (not health polls) count as served."""
        entry = self.active.pop(summary.request_id, None)
        if entry is not None and entry.generation is not None:
            self.tokens.output_tokens += entry.generation.produced  # cut short ones too
        else:
            self.tokens.output_tokens += summary.output_tokens or 0
        if summary.generated:
            self.tokens.input_tokens += summary.input_tokens or 0
            self.tokens.cached_tokens += summary.cached_tokens or 0
        if counted:
            self.recent.append(summary)
            self.served += 1

    def in_flight(self, *, exclude_open: frozenset[str] = frozenset()) -> list[ActiveRequest]:
        return [a for a in self.active.values() if a.path not in exclude_open]

    def output_tokens(self) -> int:
        """Tokens generated since start, those of requests still running included."""
        running = sum(a.generation.produced for a in self.active.values() if a.generation is not None)
        return self.tokens.output_tokens + running

    def cancel_all(self) -> int:
        """Cancel every running request (SIGINT: stop now). Returns how many were cancelled."""
        cancelled = 0
        for entry in list(self.active.values()):
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
                cancelled += 1
        return cancelled

    def latencies(self) -> list[dict[str, Any]]:
        keys = ("request_id", "path", "status", "duration_s", "model", "ttft_s", "tokens_per_s", "output_tokens")
        return [{k: getattr(s, k) for k in keys} for s in self.recent]


OBSERVER = web.AppKey("observer", Observer)
