"""The last few minutes of the server's figures, for the web page's plots: `GET /v1/pensieve/history`.

Prometheus keeps history for those who run one; the page must plot the last minutes without
it, and parsing `/metrics` text in a browser would be the wrong way round. So a task samples the
server once a second into a ring buffer (a bounded `deque`): output tokens per second, requests
finished, requests in flight and queued, MLX memory, and the prompt and prefix-cache tokens of
what finished. Rates come from differences of running totals (`Observer.output_tokens()`
counts the tokens of requests still running); a sample reads what `/health` reads (the
provider's status and MLX's memory counters) and computes nothing on the model's thread. The endpoint also lists the requests in flight with their decode speed.

The endpoint needs the API key, like every other figure beyond `/health`; the page polls it
with `?since=` so each poll carries only the new samples.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from pensieve.server.observe import Observer
from pensieve.server.protocols import ModelProvider
from pensieve.utils import InvalidRequestError

HISTORY_PATH = "/v1/pensieve/history"
SAMPLE_INTERVAL_S = 1.0
WINDOW_S = 600.0
"""Ten minutes: enough to see a burst and what followed it; 600 samples are ~60 kB of JSON."""

routes = web.RouteTableDef()


@dataclass(slots=True, frozen=True)
class Sample:
    """The server over one sampling interval (counts) and at its end (levels)."""

    t: float
    """Unix time at the end of the interval."""
    tokens_per_s: float
    """Output tokens generated per second over the interval, every request together."""
    requests: int
    """API requests that ended in the interval."""
    in_flight: int
    """API requests being handled (generating, waiting for a slot, or for a model to load)."""
    queued: int
    """Requests waiting for a batch slot, every model together."""
    active_bytes: int
    cache_bytes: int
    input_tokens: int
    """Prompt tokens of the generations that ended in the interval..."""
    cached_tokens: int
    """...and how many of them came from the prefix cache."""


@dataclass(slots=True)
class _Seen:
    """When a running request was first seen with tokens, to give its decode speed."""

    at: float
    produced: int


class History:
    """A ring buffer of `Sample`s, and the live view of requests in flight."""

    def __init__(
        self,
        observer: Observer,
        provider: ModelProvider,
        *,
        quiet_paths: frozenset[str] = frozenset(),
        interval_s: float = SAMPLE_INTERVAL_S,
        window_s: float = WINDOW_S,
    ) -> None:
        self.observer = observer
        self.provider = provider
        self.quiet_paths = quiet_paths
        """Paths polled by monitors (and this page), not counted as requests in flight."""
        self.interval_s = interval_s
        self.window_s = window_s
        self.samples: deque[Sample] = deque(maxlen=max(1, round(window_s / interval_s)))
        self._last = self._totals()
        self._seen: dict[str, _Seen] = {}

    def _totals(self) -> tuple[float, int, int, int, int]:
        tokens = self.observer.tokens
        return time.monotonic(), self.observer.served, self.observer.output_tokens(), tokens.input_tokens, tokens.cached_tokens

    def sample(self) -> Sample:
        """Take one sample now and keep it; the interval is the time since the previous one."""
        now = self._totals()
        then, self._last = self._last, now
        elapsed = max(now[0] - then[0], 1e-6)
        queued = sum(m.load.queued for m in self.provider.status() if m.load is not None)
        memory = self.provider.memory()
        taken = Sample(
            t=round(time.time(), 3),
            tokens_per_s=round((now[2] - then[2]) / elapsed, 2),
            requests=now[1] - then[1],
            in_flight=len(self.observer.in_flight(exclude_open=self.quiet_paths)),
            queued=queued,
            active_bytes=memory.active_bytes,
            cache_bytes=memory.cache_bytes,
            input_tokens=now[3] - then[3],
            cached_tokens=now[4] - then[4],
        )
        self.samples.append(taken)
        self._note_running()
        return taken

    def _note_running(self) -> None:
        """Remember when each running generation was first seen with tokens; forget ended ones."""
        running = {a.request_id: a for a in self.observer.active.values() if a.generation is not None}
        for request_id in self._seen.keys() - running.keys():
            del self._seen[request_id]
        now = time.monotonic()
        for request_id, entry in running.items():
            produced = entry.generation.produced if entry.generation is not None else 0
            if request_id not in self._seen and produced > 0:
                self._seen[request_id] = _Seen(now, produced)

    def in_flight(self) -> list[dict[str, Any]]:
        """Requests being handled, each with its output tokens so far and its decode speed."""
        now = time.monotonic()
        out = []
        for entry in self.observer.in_flight(exclude_open=self.quiet_paths):
            described = entry.describe()
            seen = self._seen.get(entry.request_id)
            rate = None
            if seen is not None and entry.generation is not None and now - seen.at >= 0.5:
                rate = round((entry.generation.produced - seen.produced) / (now - seen.at), 2)
            out.append({**described, "tokens_per_s": rate})
        return out

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """The samples newer than `since` (all when None), requests in flight and running totals."""
        samples = [asdict(s) for s in self.samples if since is None or s.t > since]
        tokens = self.observer.tokens
        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "samples": samples,
            "in_flight": self.in_flight(),
            "totals": {
                "requests": self.observer.served,
                "input_tokens": tokens.input_tokens,
                "cached_tokens": tokens.cached_tokens,
                "output_tokens": self.observer.output_tokens(),
            },
        }

    async def run(self) -> None:
        """Sample every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()


HISTORY = web.AppKey("history", History)


async def history_sampling(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context that samples while the app runs (registered only with the web UI on)."""
    task = asyncio.create_task(app[HISTORY].run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@routes.get(HISTORY_PATH)
async def history(request: web.Request) -> web.Response:
    """Samples of the last minutes (or those after `?since=<unix time>`), requests in flight, totals."""
    raw = request.query.get("since")
    since = None
    if raw is not None:
        try:
            since = float(raw)
        except ValueError:
            raise InvalidRequestError(
                f"`since` must be a Unix time in seconds (a number), not {raw[:40]!r}; leave it out for every sample",
                param="since",
            ) from None
    return web.json_response(request.app[HISTORY].snapshot(since))
