"""Continuous batching on one compute thread.

All MLX work for a model happens on this thread: MLX streams and KV caches are not safe to
share across threads, and keeping compute off the event loop keeps the HTTP side responsive
while a long prompt is prefilled. Requests arrive through a lock-protected inbox and each
generated token is handed back to the request's event loop with `call_soon_threadsafe`.

A lone sequence runs on the fast single-sequence path (`solo.py`); as soon as a second one
arrives, both move into mlx-lm's `BatchGenerator`, which interleaves chunked prefill with
batched decoding; when the batch is down to one sequence again, it moves back. A sequence
moves with its KV cache, so nothing is recomputed but the one token in flight.

A step that fails with several sequences in it may have failed for being a batch (memory for
all of them at once), so each resumes alone, from the tokens it has so far, while newcomers
wait; only a sequence that fails on its own gets the error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import trim_prompt_cache

from pensieve.engine.channel import FinishReason, Output, SequenceEnd, Sink, TokenOut
from pensieve.engine.prefix_cache import PrefixCache
from pensieve.engine.sampling import seek
from pensieve.engine.solo import SoloSequence
from pensieve.engine.speculate import Speculation
from pensieve.utils.logging import logger


@dataclass(eq=False)
class Job:
    """One sequence, as seen from both threads."""

    prompt: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    sink: Sink
    sampler: Any = None
    speculation: Speculation | None = None
    """Speculative decoding on the single-sequence path; None where it is off."""
    cached: int = 0
    """Prompt tokens served from the prefix cache (set on the compute thread at admission)."""
    history: list[int] = field(default_factory=list)
    """Prompt plus generated tokens (compute thread only)."""
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    cancelled: bool = False
    finished: bool = False
    retried: bool = False
    """Resumed alone after a failed batched step; a second failure is its own."""

    @property
    def produced(self) -> int:
        return len(self.history) - len(self.prompt)

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.produced

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
            self.cancelled = True


class Scheduler:
    """Owns the model's compute thread, its solo sequence and its `BatchGenerator`."""

    def __init__(
        self,
        model: Any,
        stop_token_ids: set[int],
        *,
        max_batch: int = 5,
        prefill_step_size: int = 2048,
        prefix_cache_bytes: int = 0,
        name: str = "model",
        batch_model: Any = None,
    ) -> None:
        self._model = model
        self._batch_model = batch_model if batch_model is not None else model
        """Batches may run on a twin with other weights layout (CUDA: unpacked); caches are shared."""
        self._stop_ids = frozenset(stop_token_ids)
        self._stop = StopSequences([[t] for t in sorted(stop_token_ids)])
        self._max_batch = max_batch
        self._prefill_step_size = prefill_step_size
        self._name = name
        # Multi-turn chats and agent sessions re-send a long identical prefix, so only the new
        # tokens are prefilled. Touched on the compute thread only.
        self._prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._inbox: list[Job] = []
        self._solo: tuple[Job, SoloSequence] | None = None
        self._batch: dict[int, Job] = {}
        self._retry: deque[Job] = deque()
        """Sequences of a failed step, waiting to resume one at a time on the solo path."""
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"pensieve-compute-{name}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    @property
    def active(self) -> int:
        return len(self._batch) + (self._solo is not None) + len(self._retry)

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

    # -- compute thread -------------------------------------------------------------------

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self._batch_model,
            completion_batch_size=self._max_batch,
            prefill_batch_size=self._max_batch,
            prefill_step_size=self._prefill_step_size,
        )

    def _run(self) -> None:
        generator = self._new_generator()
        self._ready.set()
        while True:
            with self._wake:
                while not (self._inbox or self._batch or self._solo or self._retry or self._closing):
                    self._wake.wait()
                if self._closing:
                    break
                inbox: list[Job] = []
                if not self._recovering():  # newcomers would rebuild the batch that failed
                    inbox, self._inbox = [j for j in self._inbox if not j.cancelled], []
            try:
                self._drop_cancelled(generator)
                if self._retry and self._solo is None and not self._batch:
                    self._resume(self._retry.popleft())
                self._admit(generator, inbox)
                if self._solo is not None:
                    self._step_solo()
                elif self._batch:
                    self._step_batch(generator)
                    if len(self._batch) == 1 and not self._inbox:
                        self._to_solo(generator)
            except Exception as exc:
                self._recover(exc, inbox)
                generator.close()
                generator = self._new_generator()
        for job in [*self._jobs(), *self._retry]:
            job.end(FinishReason.CANCELLED)
        self._release_all(generator)

    def _release_all(self, generator: BatchGenerator) -> None:
        """Free every buffer this thread made (sequences, batch, prefix cache) before it ends.

        Left to the interpreter's exit, KV buffers of the CUDA backend were freed after MLX's
        own static state was gone, and the process aborted ("terminate called without an
        active exception", exit 134) after a clean shutdown.
        """
        self._solo = None
        self._batch.clear()
        self._retry.clear()
        generator.close()
        if self._prefix is not None:
            self._prefix.clear()
        mx.synchronize()
        mx.clear_cache()

    def _jobs(self) -> list[Job]:
        return [*self._batch.values(), *([self._solo[0]] if self._solo else [])]

    def _recovering(self) -> bool:
        return bool(self._retry) or (self._solo is not None and self._solo[0].retried)

    def _recover(self, exc: Exception, inbox: list[Job]) -> None:
        """After a failed step: resume a failed batch's sequences one by one, or fail a lone one."""
        running = self._jobs()
        jobs = [*running, *(j for j in inbox if j not in running and not j.finished)]
        self._batch.clear()
        self._solo = None
        mx.clear_cache()
        if len(jobs) > 1:
            logger.opt(exception=exc).warning("a step of {} sequences failed; resuming each alone", len(jobs))
        else:
            logger.opt(exception=exc).error("generation step failed; failing its sequence")
        for job in jobs:
            if len(jobs) > 1 and not job.retried:
                job.retried = True
                self._retry.append(job)
            else:
                job.end(FinishReason.ERROR, error=exc)

    def _resume(self, job: Job) -> None:
        """Continue a sequence alone from its prompt and the tokens it has produced so far."""
        if job.cancelled:
            job.end(FinishReason.CANCELLED)
            return
        if not job.history:  # failed before it was admitted
            job.started_at = time.perf_counter()
            job.history = list(job.prompt)
        cache, rest = self._cached_prefix(job.history)
        self._solo = (job, self._solo_for(job, cache, rest))

    def _cached_prefix(self, prompt: list[int]) -> tuple[list[Any] | None, list[int]]:
        if self._prefix is None:
            return None, prompt
        return self._prefix.fetch(prompt)

    def _keep_prefix(self, tokens: list[int], cache: list[Any] | None) -> None:
        """A finished or stopped sequence leaves its KV cache for the conversation's next turn."""
        if self._prefix is not None and tokens and cache:
            self._prefix.insert(list(tokens), cache)

    def _admit(self, generator: BatchGenerator, inbox: list[Job]) -> None:
        if not inbox:
            return
        now = time.perf_counter()
        for job in inbox:
            job.started_at = now
            job.history = list(job.prompt)
        if self._solo is None and not self._batch and len(inbox) == 1:
            job = inbox[0]
            cache, rest = self._cached_prefix(job.prompt)
            job.cached = len(job.prompt) - len(rest)
            self._solo = (job, self._solo_for(job, cache, rest))
            return
        if self._solo is not None:
            job, solo = self._solo
            self._solo = None
            cache, to_feed = solo.detach()
            self._insert(generator, job, cache, to_feed)
        for job in inbox:
            cache, rest = self._cached_prefix(job.prompt)
            job.cached = len(job.prompt) - len(rest)
            self._insert(generator, job, cache, rest)

    def _solo_for(self, job: Job, cache: list[Any] | None, to_feed: list[int]) -> SoloSequence:
        seek(job.sampler, job.produced)
        return SoloSequence(
            self._model,
            job.history,
            cache,
            to_feed,
            sampler=job.sampler,
            budget=job.remaining,
            prefill_step_size=self._prefill_step_size,
            prefill_model=self._batch_model,
            speculation=job.speculation,
        )

    def _insert(self, generator: BatchGenerator, job: Job, cache: list[Any] | None, to_feed: list[int]) -> None:
        seek(job.sampler, job.produced)
        (uid,) = generator.insert(
            [to_feed],
            max_tokens=[job.remaining],
            caches=[cache],
            all_tokens=[job.history[: len(job.history) - len(to_feed)]],
            samplers=[job.sampler],
            stop_sequences=[self._stop],
        )
        self._batch[uid] = job

    def _to_solo(self, generator: BatchGenerator) -> None:
        """The batch is down to one sequence: move it back to the faster single path."""
        (uid,) = self._batch
        job = self._batch.pop(uid)
        cache, tokens = generator.remove([uid], return_prompt_caches=True)[uid]
        fed = len(tokens)
        if fed == len(job.history):  # the last token was fed; its successor was dropped
            trim_prompt_cache(cache, 1)
            fed -= 1
        self._solo = (job, self._solo_for(job, cache, job.history[fed:]))

    def _drop_cancelled(self, generator: BatchGenerator) -> None:
        if self._solo is not None and self._solo[0].cancelled:
            self._release_solo().end(FinishReason.CANCELLED)
        gone = [uid for uid, job in self._batch.items() if job.cancelled]
        if gone:
            for cache, tokens in generator.remove(gone, return_prompt_caches=self._prefix is not None).values():
                self._keep_prefix(tokens, cache)
            for uid in gone:
                self._batch.pop(uid).end(FinishReason.CANCELLED)

    def _step_solo(self) -> None:
        job, solo = self._solo  # type: ignore[misc]
        tokens = solo.advance()
        if tokens is None:
            return
        job.first_token_at = job.first_token_at or time.perf_counter()
        *leading, token = tokens  # only the last can be a stop token or the budget's last
        for earlier in leading:
            job.emit(earlier)
        if token in self._stop_ids:
            reason, last = FinishReason.STOP, None  # a stop token is not part of the answer
        elif solo.budget <= 0:
            reason, last = FinishReason.LENGTH, token
        else:
            job.emit(token)
            return
        del solo  # the last reference must be the one _release_solo drops
        job.finished = True
        self._release_solo()
        job.end(reason, last)

    def _release_solo(self) -> Job:
        """End the solo sequence, leaving its KV cache to the prefix cache.

        The slot reads as free (`active`) only once the sequence's own references are gone,
        so an observer that sees an idle engine sees its memory back too.
        """
        job, solo = self._solo  # type: ignore[misc]
        cache, _ = solo.detach()
        self._keep_prefix(job.history[: solo.fed], cache)
        del solo, cache
        self._solo = None
        return job

    def _step_batch(self, generator: BatchGenerator) -> None:
        _, responses = generator.next()
        now = time.perf_counter()
        ended: list[tuple[int, int | None, FinishReason]] = []
        for r in responses:
            job = self._batch.get(r.uid)
            if job is None:
                continue
            job.first_token_at = job.first_token_at or now
            job.history.append(r.token)
            if r.finish_reason is None:
                job.emit(r.token)
                continue
            job.finished = True
            self._keep_prefix(r.all_tokens, r.prompt_cache)
            reason = FinishReason(r.finish_reason)
            # A stop token ends the sequence and is not part of the answer.
            ended.append((r.uid, None if reason is FinishReason.STOP else r.token, reason))
        responses = r = None  # they hold the ended sequences' caches: gone before the slots read free
        for uid, token, reason in ended:
            self._batch.pop(uid).end(reason, token)
