"""Continuous batching on one compute thread, within one KV budget.

All MLX work for a model happens on this thread: MLX streams and KV caches are not safe to
share across threads, and keeping compute off the event loop keeps the HTTP side responsive
while a long prompt is prefilled. Requests arrive through a lock-protected inbox and each
generated token is handed back to the request's event loop with `call_soon_threadsafe`.

A lone sequence runs on the fast single-sequence path (`solo.py`). A newcomer that arrives
while others decode is prefilled on its own, one chunk per turn of the loop between the
batch's decode steps (so running streams keep flowing), and then joins mlx-lm's
`BatchGenerator` with its KV cache; when the batch is down to one sequence it moves back to
the single path. A sequence moves with its KV cache, so nothing is recomputed but the one token
in flight.

Memory (`kv_budget.py`): a request waits until the tokens it brings fit beside what the running
sequences hold; when decoding would overrun the budget, the prefix cache gives memory back
first, and then the newest sequence is preempted: its KV cache goes to the prefix cache (where
it is the first thing evicted if memory stays short) and it resumes from its tokens when there
is room, its stream only paused.

A step that fails with several sequences in it may have failed for being a batch (memory for
all of them at once), so each resumes alone, from the tokens it has so far, while newcomers
wait; only a sequence that fails on its own gets the error.

In a group of machines (`lockstep.py`) every rank runs this same loop: each turn starts with the
newcomers and cancellations rank 0 decided, a step that raises breaks the group, and the turn's
collectives and step run under the group's deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import trim_prompt_cache

from pensieve.engine.channel import FinishReason
from pensieve.engine.job import Job
from pensieve.engine.kv_budget import KVBudget, Occupancy
from pensieve.engine.lockstep import Lockstep
from pensieve.engine.prefix_cache import LowerTier, PrefixCache
from pensieve.engine.quantized_cache import make_cache
from pensieve.engine.sampling import seek
from pensieve.engine.solo import ONE_PASS_TOKENS, SoloSequence
from pensieve.utils.logging import logger

SHORT_PROMPT = ONE_PASS_TOKENS
"""Prompts (or uncached remainders) up to this long join the batch directly."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch: int = 5
    prefill_step_size: int = 2048
    prefill_chunk: Callable[[int], int] | None = None
    """Prompt tokens per prefill pass on top of a cache of the given length (default: the step size)."""
    prefix_cache_bytes: int = 0
    prefix_cache_entries: int = 4
    kv_bits: int | None = None
    idle_release_s: float = 0.0
    """Idle this long, drop the prefix cache and MLX's buffer cache (0: never)."""


class Scheduler:
    """Owns the model's compute thread, its sequences and its `BatchGenerator`."""

    def __init__(
        self,
        model: Any,
        stop_token_ids: set[int],
        *,
        config: SchedulerConfig = SchedulerConfig(),
        budget: KVBudget | None = None,
        name: str = "model",
        batch_model: Any = None,
        prefix_lower: LowerTier | None = None,
        lockstep: Lockstep | None = None,
    ) -> None:
        self._model = model
        self._batch_model = batch_model if batch_model is not None else model
        """Batches may run on a twin with other weights layout (CUDA: unpacked); caches are shared."""
        self._stop_ids = frozenset(stop_token_ids)
        self._stop = StopSequences([[t] for t in sorted(stop_token_ids)])
        self._config = config
        self._chunk = config.prefill_chunk or (lambda _: config.prefill_step_size)
        self.budget = budget
        self._name = name
        # Multi-turn chats and agent sessions re-send a long identical prefix, so only the new
        # tokens are prefilled. Touched on the compute thread only.
        cap = config.prefix_cache_bytes
        self._lockstep = lockstep
        measure = None
        if lockstep is not None and budget is not None:
            cost = budget.cost
            measure = lambda tokens, _: cost.bytes(len(tokens))  # noqa: E731 (every rank counts alike)
        self._prefix = (
            PrefixCache(cap, max_entries=config.prefix_cache_entries, lower=prefix_lower, measure=measure) if cap > 0 else None
        )
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        """In a group: cancellations asked for since the last turn (rank 0 broadcasts them)."""
        self._waiting: deque[Job] = deque()
        """Admitted by the engine, waiting for memory or a slot; preempted sequences go first."""
        self._solo: tuple[Job, SoloSequence] | None = None
        self._filling: tuple[Job, SoloSequence] | None = None
        """A newcomer being prefilled beside the batch."""
        self._batch: dict[int, Job] = {}
        self._retry: deque[Job] = deque()
        """Sequences of a failed step, waiting to resume one at a time on the solo path."""
        self._wake = threading.Condition()
        self._closing = False
        self._idle_since = time.monotonic()
        self._idle_cleared = True
        self.preemptions = 0
        self.held_bytes = 0
        """What the running sequences held at the last step (for status; compute thread writes)."""
        self._thread = threading.Thread(target=self._run, name=f"pensieve-compute-{name}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    @property
    def active(self) -> int:
        return len(self._batch) + (self._solo is not None) + (self._filling is not None) + len(self._retry)

    @property
    def pending(self) -> int:
        return len(self._inbox) + len(self._waiting)

    @property
    def prefix_bytes(self) -> int:
        return self._prefix.nbytes if self._prefix is not None else 0

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """Read its `stats()` from any thread; everything else is the compute thread's."""
        return self._prefix

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._lockstep is not None:
                job.on_gone = self.cancel
            self._inbox.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Mark cancelled; the compute thread drops it before its next step (in a group, every rank
        at the same turn)."""
        with self._wake:
            if self._lockstep is None:
                job.cancelled = True
            else:
                self._cancels.append(job)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- compute thread -------------------------------------------------------------------

    def _new_generator(self) -> BatchGenerator:
        size = self._config.max_batch
        return BatchGenerator(self._batch_model, completion_batch_size=size, prefill_batch_size=size,
                              prefill_step_size=self._config.prefill_step_size)  # fmt: skip

    def _busy(self) -> bool:
        return bool(self._waiting or self._batch or self._solo or self._filling or self._retry)

    def _run(self) -> None:
        generator = self._new_generator()
        self._ready.set()
        if self._prefix is not None:
            self._prefix.warm()  # before any request: the first one after a restart is a hit
        while self._intake():
            try:
                with self._lockstep.step_guard() if self._lockstep is not None else contextlib.nullcontext():
                    self._drop_cancelled(generator)
                    if self._retry and not self._running():
                        self._resume(self._retry.popleft())
                    self._start_waiting(generator)
                    self._make_room(generator)
                    self._step(generator)
            except Exception as exc:
                if self._lockstep is not None:
                    self._lockstep.broken(exc)
                self._recover(exc)
                generator.close()
                generator = self._new_generator()
            self._idle_since = time.monotonic()
            self._idle_cleared = False
        for job in [*self._jobs(), *self._retry, *self._waiting]:
            job.end(FinishReason.CANCELLED)
        self._release_all(generator)

    def _intake(self) -> bool:
        """Take this turn's newcomers into line; False once the engine closes."""
        if self._lockstep is not None:
            return self._intake_decided(self._lockstep)
        with self._wake:
            while not (self._inbox or self._busy() or self._closing):
                self._wait_idle()
            if self._closing:
                return False
            if not self._recovering():  # newcomers would rebuild the batch that failed
                self._waiting.extend(j for j in self._inbox if not j.cancelled)
                self._inbox = []
        return True

    def _intake_decided(self, lockstep: Lockstep) -> bool:
        """In a group: rank 0 decides the turn's newcomers and cancellations, every rank applies them.

        An idle rank 0 waits for work at most `tick_s`: its empty turn is the group's heartbeat.
        The others know it is idle (their state is its state) and sleep meanwhile, because MLX's
        ring backend polls its sockets while a collective waits: a core each, for nothing.
        """
        with self._wake:
            idle = not (self._inbox or self._cancels or self._busy() or self._closing)
            if idle and lockstep.leads:
                self._wake.wait(timeout=lockstep.tick_s)
            arrived, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
            closing = self._closing
        if idle:
            self._clear_buffers_once()
        if idle and not lockstep.leads:
            time.sleep(lockstep.pause_s)
        turn = lockstep.turn(arrived, cancels, closing)
        for job in turn.cancelled:
            job.cancelled = True
        self._waiting.extend(turn.admitted)
        return not turn.shutdown

    def _wait_idle(self) -> None:
        """Wait for work; once idle long enough, give the cached memory back to the machine.

        Going idle at all frees MLX's buffer cache (buffers kept for reuse, which otherwise
        grow with every new sequence length until the cache limit, held by an idle server);
        after `idle_release_s` the prefix cache goes too.
        """
        release = self._config.idle_release_s
        idle = time.monotonic() - self._idle_since
        self._clear_buffers_once()
        if release <= 0 or idle >= release:
            self._wake.wait()
            return
        if not self._wake.wait(timeout=release - idle) and self._prefix is not None and len(self._prefix):
            logger.info("{}: idle for {:g}s, releasing {} MB of prefix cache", self._name, release, self._prefix.nbytes >> 20)
            self._prefix.clear()
            mx.clear_cache()

    def _clear_buffers_once(self) -> None:
        """Going idle: MLX's buffer cache goes back to the machine, once per idle spell."""
        if not self._idle_cleared:
            mx.clear_cache()
            self._idle_cleared = True

    def _release_all(self, generator: BatchGenerator) -> None:
        """Free every buffer this thread made (sequences, batch, prefix cache) before it ends.

        Left to the interpreter's exit, KV buffers of the CUDA backend were freed after MLX's
        own static state was gone, and the process aborted ("terminate called without an
        active exception", exit 134) after a clean shutdown.
        """
        self._solo = self._filling = None
        self._batch.clear()
        self._retry.clear()
        self._waiting.clear()
        generator.close()
        if self._prefix is not None:
            self._prefix.close()
        mx.synchronize()
        mx.clear_cache()

    def _running(self) -> bool:
        return bool(self._solo or self._filling or self._batch)

    def _jobs(self) -> list[Job]:
        lanes = [lane[0] for lane in (self._solo, self._filling) if lane is not None]
        return [*self._batch.values(), *lanes]

    def _occupancy(self) -> Occupancy:
        return Occupancy(
            solo=len(self._solo[0].history) if self._solo else None,
            batch=tuple(len(job.history) for job in self._batch.values()),
            filling=len(self._filling[0].history) if self._filling else None,
        )

    def _recovering(self) -> bool:
        return bool(self._retry) or (self._solo is not None and self._solo[0].retried)

    def _recover(self, exc: Exception) -> None:
        """After a failed step: resume a failed batch's sequences one by one, or fail a lone one."""
        jobs = [job for job in self._jobs() if not job.finished]
        self._batch.clear()
        self._solo = self._filling = None
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
        self._solo = (job, self._sequence_for(job))

    def _sequence_for(self, job: Job) -> SoloSequence:
        """A sequence for `job` from its tokens so far, with what the prefix cache holds of them."""
        return self._solo_from(job, *self._start(job))

    def _start(self, job: Job) -> tuple[list[Any], list[int]]:
        """Start (or resume) `job`: its KV cache from the prefix cache, and the tokens still to feed."""
        first = job.started_at is None
        if first:
            job.started_at = time.perf_counter()
            job.history = list(job.prompt)
        elif job.constraint is not None:  # resumed: the grammar goes back to the tokens kept
            job.constraint.rewind(len(job.history) - len(job.prompt))
        cache, rest = self._prefix.fetch(job.history) if self._prefix is not None else (None, job.history)
        if first:
            job.cached = len(job.history) - len(rest)
            job.admitted()
        return (cache if cache is not None else make_cache(self._model, self._config.kv_bits)), rest

    def _keep_prefix(self, tokens: list[int], cache: list[Any] | None, persist: int = 0) -> None:
        """A finished or stopped sequence leaves its KV cache for the conversation's next turn
        (and, with `persist`, its lasting prefix to the lower tier)."""
        if self._prefix is not None and tokens and cache:
            self._prefix.insert(list(tokens), cache, persist)

    def _start_waiting(self, generator: BatchGenerator) -> None:
        """Start waiting sequences while slots and memory allow.

        A long prompt is prefilled alone, beside the batch, one at a time (its passes sized to
        the memory budget); short ones (a new chat, a follow-up turn after a prefix-cache hit)
        join the batch at once and mlx-lm prefills them together.
        """
        while self._waiting and not self._recovering():
            job = self._waiting[0]
            if not self._running():
                self._waiting.popleft()
                self._solo = (job, self._sequence_for(job))
                continue
            if self._filling is not None or self.active >= self._config.max_batch:
                return
            if self._solo is not None and self._solo[1].to_feed and len(self._solo[1].to_feed) > 1:
                return  # the lone sequence is still prefilling: one prefill at a time
            tokens = len(job.history) or len(job.prompt)
            if self.budget is not None and not self.budget.admits(self._occupancy(), tokens):
                return
            self._waiting.popleft()
            if self._solo is not None:
                solo_job, solo = self._solo
                self._solo = None
                self._insert(generator, solo_job, *solo.detach())
            cache, rest = self._start(job)
            if len(rest) <= SHORT_PROMPT:
                self._insert(generator, job, cache, rest)
            else:
                self._filling = (job, self._solo_from(job, cache, rest))

    def _make_room(self, generator: BatchGenerator) -> None:
        """Keep the next step within the budget: shrink the prefix cache, then preempt."""
        if self.budget is None:
            return
        self.held_bytes = self.budget.held(self._occupancy())
        while self._overrun_after_eviction(self.budget) and len(self._jobs()) > 1:
            self._preempt(generator)

    def _overrun_after_eviction(self, budget: KVBudget) -> int:
        """Bytes the next step would still overrun the budget by once the prefix cache gave back
        what it could (a preempted sequence's cache lands there, so this runs after each)."""
        over = budget.overrun(self._occupancy(), self.prefix_bytes)
        if over and self._prefix is not None:
            self._prefix.evict(over)
            over = budget.overrun(self._occupancy(), self._prefix.nbytes)
        return over

    def _preempt(self, generator: BatchGenerator) -> None:
        """Stop the newest sequence and put it first in line; its KV cache goes to the prefix cache."""
        if self._filling is not None:
            job, sequence = self._filling
            self._filling = None
            cache, to_feed = sequence.detach()
            self._keep_prefix(job.history[: len(job.history) - len(to_feed)], cache)
        else:
            uid = max(self._batch, key=lambda u: self._batch[u].started_at or 0.0)
            job = self._batch.pop(uid)
            cache, tokens = generator.remove([uid], return_prompt_caches=True)[uid]
            self._keep_prefix(tokens, cache)
        job.preempted += 1
        self.preemptions += 1
        self._waiting.appendleft(job)
        logger.info("{}: memory is short; paused the newest sequence at {} tokens until there is room",
                    self._name, len(job.history))  # fmt: skip

    def _insert(self, generator: BatchGenerator, job: Job, cache: list[Any], to_feed: list[int]) -> None:
        seek(job.sampler, job.produced)
        (uid,) = generator.insert(
            [to_feed],
            max_tokens=[job.remaining],
            caches=[cache],
            all_tokens=[job.history[: len(job.history) - len(to_feed)]],
            samplers=[job.sampler],
            logits_processors=[[job.constraint.batch_processor()] if job.constraint else []],
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
        self._solo = (job, self._solo_from(job, cache, job.history[fed:]))

    def _solo_from(self, job: Job, cache: list[Any], to_feed: list[int]) -> SoloSequence:
        seek(job.sampler, job.produced)
        return SoloSequence(self._model, job.history, cache, to_feed, sampler=job.sampler, budget=job.remaining,
                            prefill_chunk=self._chunk, prefill_model=self._batch_model, constraint=job.constraint,
                            speculation=job.speculation)  # fmt: skip

    def _drop_cancelled(self, generator: BatchGenerator) -> None:
        for lane in ("_solo", "_filling"):
            current = getattr(self, lane)
            if current is not None and current[0].cancelled:
                self._release(lane).end(FinishReason.CANCELLED)
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            job.end(FinishReason.CANCELLED)
        gone = [uid for uid, job in self._batch.items() if job.cancelled]
        if gone:
            kept = generator.remove(gone, return_prompt_caches=self._prefix is not None)
            for uid, (cache, tokens) in kept.items():
                self._keep_prefix(tokens, cache, self._batch[uid].persist)
            for uid in gone:
                self._batch.pop(uid).end(FinishReason.CANCELLED)

    def _step(self, generator: BatchGenerator) -> None:
        if self._solo is not None:
            self._advance("_solo")
            return
        if self._filling is not None and self._advance("_filling") and self._filling is not None:
            job, sequence = self._filling
            self._filling = None
            self._insert(generator, job, *sequence.detach())
        if self._batch:
            self._step_batch(generator)
            if len(self._batch) == 1 and not (self._filling or self._waiting or self._inbox):
                self._to_solo(generator)

    def _advance(self, lane: str) -> bool:
        """One unit of work for the lone or the filling sequence; True once it produced a token."""
        job, sequence = getattr(self, lane)
        tokens = sequence.advance()
        if tokens is None:
            return False
        job.first_token_at = job.first_token_at or time.perf_counter()
        *leading, token = tokens  # only the last can be a stop token or the budget's last
        for earlier in leading:
            job.emit(earlier)
        if token in self._stop_ids:
            reason, last = FinishReason.STOP, None  # a stop token is not part of the answer
        elif sequence.budget <= 0:
            reason, last = FinishReason.LENGTH, token
        else:
            job.emit(token)
            return True
        del sequence  # the last reference must be the one _release drops
        job.finished = True
        self._release(lane)
        job.end(reason, last)
        return True

    def _release(self, lane: str) -> Job:
        """End a lone or filling sequence, leaving its KV cache to the prefix cache.

        The slot reads as free (`active`) only once the sequence's own references are gone,
        so an observer that sees an idle engine sees its memory back too.
        """
        job, sequence = getattr(self, lane)
        cache, _ = sequence.detach()
        self._keep_prefix(job.history[: sequence.fed], cache, job.persist)
        del sequence, cache
        setattr(self, lane, None)
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
            self._keep_prefix(r.all_tokens, r.prompt_cache, job.persist)
            reason = FinishReason(r.finish_reason)
            # A stop token ends the sequence and is not part of the answer.
            ended.append((r.uid, None if reason is FinishReason.STOP else r.token, reason))
        responses = r = None  # they hold the ended sequences' caches: gone before the slots read free
        for uid, token, reason in ended:
            self._batch.pop(uid).end(reason, token)
