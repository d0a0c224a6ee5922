"""Continuous batching on one compute thread.

All MLX work for a model happens on this thread: MLX streams and the KV caches are not safe to
share across threads, and keeping compute off the event loop keeps the HTTP side responsive
while a long prompt is prefilled. Requests arrive through a lock-protected inbox, join the batch
between decode steps (mlx-lm's `BatchGenerator` interleaves chunked prefill with decoding), and
each generated token is handed back to the request's event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import LRUPromptCache, trim_prompt_cache

from pensieve.utils.logging import logger

TokenSink = Callable[[int | None, str | None, BaseException | None], None]
"""Called on the request's loop with (token, finish_reason, error); token None = no token."""


@dataclass(eq=False)
class Job:
    """One sequence's place in the batch, as seen from both threads."""

    prompt: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    sink: TokenSink
    sampler: Any = None
    cached: int = 0
    """Prompt tokens served from the prefix cache (set on the compute thread at admission)."""
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    cancelled: bool = False
    uid: int | None = None
    finished: bool = False

    def deliver(self, token: int | None, finish: str | None, error: BaseException | None = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.sink, token, finish, error)
        except RuntimeError:  # the request's loop is gone: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """Owns the model's compute thread and its `BatchGenerator`."""

    def __init__(
        self,
        model: Any,
        stop_token_ids: set[int],
        *,
        max_batch: int = 5,
        prefill_step_size: int = 2048,
        prefix_cache_bytes: int = 0,
        name: str = "model",
    ) -> None:
        self._model = model
        self._stop = StopSequences([[t] for t in sorted(stop_token_ids)])
        self._max_batch = max_batch
        self._name = name
        self._prefill_step_size = prefill_step_size
        # Multi-turn chats and agent sessions re-send a long identical prefix; mlx-lm's LRU trie of
        # KV caches finds the longest cached prefix (trimming a longer entry if needed), so only
        # the new tokens are prefilled. It is touched on the compute thread only.
        self._prefix = LRUPromptCache(max_size=64, max_bytes=prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._inbox: list[Job] = []
        self._calls: list[Callable[[], None]] = []
        self._jobs: dict[int, Job] = {}
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"pensieve-compute-{name}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    @property
    def active(self) -> int:
        return len(self._jobs)

    @property
    def pending(self) -> int:
        return len(self._inbox)

    def submit(self, job: Job) -> None:
        with self._wake:
            self._inbox.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Mark cancelled; the compute thread drops it before its next step."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the compute thread and wait for it (warm-up, cache operations)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def task() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc
            done.set()

        with self._wake:
            self._calls.append(task)
            self._wake.notify()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # -- compute thread -------------------------------------------------------------------

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self._model,
            completion_batch_size=self._max_batch,
            prefill_batch_size=self._max_batch,
            prefill_step_size=self._prefill_step_size,
        )

    def _run(self) -> None:
        generator = self._new_generator()
        self._ready.set()
        while True:
            with self._wake:
                while not (self._inbox or self._jobs or self._calls or self._closing):
                    self._wake.wait()
                if self._closing:
                    break
                inbox, self._inbox = self._inbox, []
                calls, self._calls = self._calls, []
            for task in calls:
                task()
            self._admit(generator, inbox)
            self._drop_cancelled(generator)
            if self._jobs and not self._step(generator):
                generator.close()
                generator = self._new_generator()
        for job in self._jobs.values():
            job.deliver(None, "cancelled")
        generator.close()

    def _admit(self, generator: BatchGenerator, inbox: list[Job]) -> None:
        for job in inbox:
            if job.cancelled:
                continue
            cache, rest = self._cached_prefix(job.prompt)
            job.cached = len(job.prompt) - len(rest)
            try:
                (uid,) = generator.insert(
                    [rest],
                    max_tokens=[job.max_tokens],
                    caches=[cache],
                    all_tokens=[job.prompt[: job.cached]],
                    samplers=[job.sampler],
                    stop_sequences=[self._stop],
                )
            except Exception as exc:
                job.deliver(None, "error", exc)
                continue
            job.uid = uid
            job.started_at = time.perf_counter()
            self._jobs[uid] = job

    def _cached_prefix(self, prompt: list[int]) -> tuple[list[Any] | None, list[int]]:
        if self._prefix is None:
            return None, prompt
        cache, rest = self._prefix.fetch_nearest_cache(self._name, prompt)
        if cache is not None and not rest:  # exact hit: re-run the last token for its logits
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, rest

    def _keep_prefix(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        if self._prefix is not None and tokens and cache:
            self._prefix.insert_cache(self._name, list(tokens), cache)

    def _drop_cancelled(self, generator: BatchGenerator) -> None:
        gone = [uid for uid, job in self._jobs.items() if job.cancelled]
        if gone:
            # A sequence stopped early (stop sequence, parsed tool call, client gone) still
            # leaves a useful prefix for the conversation's next turn.
            for tokens_cache in generator.remove(gone, return_prompt_caches=self._prefix is not None).values():
                cache, tokens = tokens_cache
                self._keep_prefix(tokens, cache)
            for uid in gone:
                self._jobs.pop(uid).deliver(None, "cancelled")

    def _step(self, generator: BatchGenerator) -> bool:
        """One batch step; False if it failed and the generator must be replaced."""
        try:
            _, responses = generator.next()
        except Exception as exc:
            logger.opt(exception=exc).error("generation step failed; failing the batch")
            for uid in list(self._jobs):
                self._jobs.pop(uid).deliver(None, "error", exc)
            mx.clear_cache()
            return False
        now = time.perf_counter()
        for r in responses:
            job = self._jobs.get(r.uid)
            if job is None:
                continue
            if job.first_token_at is None:
                job.first_token_at = now
            if r.finish_reason is not None:
                job.finished = True
                self._keep_prefix(r.all_tokens, r.prompt_cache)
                self._jobs.pop(r.uid)
                # A stop token ends the sequence and is not part of the answer.
                job.deliver(None if r.finish_reason == "stop" else r.token, r.finish_reason)
            else:
                job.deliver(r.token, None)
        return True
