"""One loaded model at work: the async face of the compute thread.

`Engine.generate` takes a neutral `ChatRequest` and yields neutral events; it knows nothing of
HTTP or of either wire API. Admission control lives here too, because only the engine knows how
many sequences its batch holds and how many wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pensieve.engine.channel import Message, SequenceEnd
from pensieve.engine.constraint import Grammars, SequenceConstraint
from pensieve.engine.disk_cache import DiskPrefixStore, DiskTier
from pensieve.engine.generation import Generation
from pensieve.engine.grammar import CallMarkers, plan
from pensieve.engine.group import Group
from pensieve.engine.job import Job
from pensieve.engine.kv_budget import KVBudget, KVCost
from pensieve.engine.lockstep import Lockstep
from pensieve.engine.output import Markers
from pensieve.engine.prefix_policy import lasting_prefix
from pensieve.engine.prompt import RenderedPrompt, render_prompt, writes_json_calls
from pensieve.engine.proposers import DraftModel
from pensieve.engine.quantized_cache import GROUP_SIZE, make_cache, supports_quantized_kv
from pensieve.engine.sampling import Sampler, make_sampler
from pensieve.engine.scheduler import Scheduler, SchedulerConfig
from pensieve.engine.speculate import Speculation, SpeculationConfig, speculation_for
from pensieve.engine.tokenize import PieceEncoder
from pensieve.metal import RequestProfile
from pensieve.models import (
    ChatRequest,
    EngineLoad,
    GenerationEvent,
    KVStatus,
    PrefixCacheStats,
)
from pensieve.utils import ApiError, PromptTooLongError, RateLimitError
from pensieve.utils.logging import logger


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_concurrent_requests: int = 5
    """A cap on sequences decoded together; memory decides how many of them run (`kv_budget`)."""
    max_queued_requests: int = 32
    prefill_step_size: int = 2048
    prefix_cache_bytes: int = 512 * 1024 * 1024
    """The most the prefix cache may hold; within a KV budget it also gives memory back first."""
    prefix_cache_entries: int = 4
    context_policy: str = "error"
    """`error`: a prompt over the window is a 400; `truncate`: drop the oldest turns."""
    kv_bits: int | None = None
    """Quantize the KV cache of full-attention layers to 8 or 4 bits (None: as the model computes)."""
    kv_cost: KVCost | None = None
    kv_capacity_bytes: int | None = None
    """With `kv_cost`, the bytes of KV cache the engine may hold (sequences and prefix cache);
    None admits by slots only."""
    attention_scores_bytes: int | None = None
    """Where attention materializes its scores (no fused kernel), the most one prefill pass may
    take for them; long prompts then prefill in smaller passes. None: no limit (fused kernel)."""
    attention_score_bytes: int = 8
    """Bytes per query-key pair and head while attention is unfused: the scores and their softmax,
    in the model's activation precision (2 x 4 for float32 models, 2 x 2 for 16-bit ones)."""
    idle_release_s: float = 0.0
    """Idle this long, the prefix cache and MLX's buffer cache go back to the machine (0: never)."""
    prefix_disk: DiskTier | None = None
    """The prefix cache's disk tier (it needs the memory tier above it); None: memory only."""
    speculation: SpeculationConfig = SpeculationConfig()


MIN_PREFILL_CHUNK = 64


class Engine:
    """Serve one model: render, tokenize, batch, decode, parse."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        context_length: int,
        config: EngineConfig = EngineConfig(),
        batch_model: Any = None,
        draft: DraftModel | None = None,
        group: Group | None = None,
    ) -> None:
        """`group`: the model is sharded over the ranks of a group, which run in lockstep."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = context_length
        self.config = config
        self._inflight = 0
        self._encoder = PieceEncoder(tokenizer)
        self.grammars = Grammars(tokenizer)
        """Structured output's compiled grammars, cached per schema (see `constrain`)."""
        self.draft = draft
        self._stop_ids = frozenset(tokenizer.eos_token_ids)
        self.sampler_for: Callable[[ChatRequest], Sampler | None] = lambda r: make_sampler(r.sampling)
        """Builds each request's sampler; replaceable so a test can force the output tokens
        while every forward pass, parse and encode stays real."""
        self._kv_bits = kv_bits = config.kv_bits if config.kv_bits and supports_quantized_kv(model, config.kv_bits) else None
        if config.kv_bits and kv_bits is None:  # the plan (modelmgr) asked the same and planned for it
            logger.warning("{}: a {}-bit KV cache cannot run here (its head size must hold whole groups of {}, and "
                           "this backend needs the kernels); the KV cache stays unquantized", name, config.kv_bits, GROUP_SIZE)
        self._heads = getattr(getattr(model, "args", None), "num_attention_heads", 1) or 1
        self.disk = DiskPrefixStore.open(config.prefix_disk, make_cache(model, kv_bits), name) if config.prefix_cache_bytes > 0 else None
        """The prefix cache's disk tier, when it is on (below the memory tier) and its folder usable."""
        budget = None
        if config.kv_cost is not None and config.kv_capacity_bytes is not None:
            budget = KVBudget(config.kv_cost, config.kv_capacity_bytes)
        self._lockstep = Lockstep(group, self.grammars.constraint) if group is not None else None
        self._scheduler = Scheduler(
            model,
            set(tokenizer.eos_token_ids),
            config=SchedulerConfig(
                max_batch=config.max_concurrent_requests,
                prefill_step_size=config.prefill_step_size,
                prefill_chunk=self._prefill_chunk,
                prefix_cache_bytes=config.prefix_cache_bytes,
                prefix_cache_entries=config.prefix_cache_entries,
                kv_bits=kv_bits,
                idle_release_s=config.idle_release_s,
            ),
            budget=budget,
            name=name,
            batch_model=batch_model,
            prefix_lower=self.disk,
            lockstep=self._lockstep,
        )

    def _prefill_chunk(self, cached: int) -> int:
        """Prompt tokens for the next prefill pass on top of `cached` tokens: n x (cached + n)
        query-key pairs per head must keep within `attention_scores_bytes`."""
        step, cap = self.config.prefill_step_size, self.config.attention_scores_bytes
        if cap is None:
            return step
        pairs = cap / (self._heads * self.config.attention_score_bytes)
        n = int((math.sqrt(cached * cached + 4 * pairs) - cached) / 2)
        return max(MIN_PREFILL_CHUNK, min(step, n))

    def kv_status(self) -> KVStatus | None:
        """The engine's KV memory now; None when it admits by slots only."""
        scheduler = self._scheduler
        if scheduler.budget is None:
            return None
        return KVStatus(
            capacity_bytes=scheduler.budget.capacity,
            sequences_bytes=scheduler.held_bytes if scheduler.active else 0,
            prefix_cache_bytes=scheduler.prefix_bytes,
            preemptions=scheduler.preemptions,
            kv_cache_bits=self._kv_bits,
        )

    def set_kv_capacity(self, capacity: int) -> None:
        """The pool's share of KV memory for this engine changed (another model (un)loaded)."""
        if self._scheduler.budget is not None:
            self._scheduler.budget.capacity = capacity

    # -- prompts ----------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> RenderedPrompt:
        """Render the prompt and check it fits, truncating old turns if so configured."""
        rendered = render_prompt(self.tokenizer, request, self._encoder.encode)
        limit = self.context_length - 1  # leave room for at least one generated token
        while len(rendered.tokens) > limit and self.config.context_policy == "truncate":
            shorter = _drop_oldest_turn(request)
            if shorter is None:
                break
            request = shorter
            rendered = render_prompt(self.tokenizer, request, self._encoder.encode)
        if len(rendered.tokens) > limit:
            raise PromptTooLongError(len(rendered.tokens), self.context_length)
        return rendered

    def _prepare_with_lasting(self, request: ChatRequest) -> tuple[RenderedPrompt, int]:
        """The prompt, and how much of it is worth keeping on disk after the request (0: none)."""
        rendered = self.prepare(request)
        if self.disk is None or len(rendered.tokens) < self.disk.min_tokens:
            return rendered, 0
        return rendered, lasting_prefix(self.tokenizer, request, rendered, self._encoder.encode)

    def constrain(self, request: ChatRequest, rendered: RenderedPrompt) -> SequenceConstraint | None:
        """The grammar the request's output must follow, as a fresh matcher; None if free.

        Raises the 400 for a schema feature that cannot be enforced, before anything is sent.
        """
        markers = Markers.for_prompt(self.tokenizer, rendered)
        writable = markers.tool_start and (not rendered.template_tools or writes_json_calls(self.tokenizer))
        calls = CallMarkers(markers.tool_start, markers.tool_end or "") if writable else None
        thinking_end = markers.think_end if markers.opens_thinking(rendered) else None
        grammar = plan(request, calls, thinking_end=thinking_end)
        return None if grammar is None else self.grammars.constraint(grammar.lark)

    def count_tokens(self, request: ChatRequest) -> int:
        return len(render_prompt(self.tokenizer, request, self._encoder.encode).tokens)

    # -- generation -------------------------------------------------------------------------

    @property
    def prefix_cache(self) -> PrefixCacheStats | None:
        """Hits, misses and what each tier holds; None when the prefix cache is off."""
        cache = self._scheduler.prefix_cache
        return cache.stats() if cache is not None else None

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(active=self._scheduler.active, queued=self._scheduler.pending, inflight=self._inflight)

    def _admit(self) -> None:
        if self._lockstep is not None and self._lockstep.failure is not None:
            raise ApiError(
                f"the group of machines serving {self.name} is broken ({self._lockstep.failure}) and is "
                "restarting; retry in a minute"
            )
        capacity = self.config.max_concurrent_requests + self.config.max_queued_requests
        if self._inflight >= capacity:
            raise RateLimitError(
                f"{self._inflight} requests are already running or waiting for {self.name}; "
                "retry after a few seconds or raise performance.max_queued_requests",
                headers={"retry-after": "2"},
            )

    @contextlib.asynccontextmanager
    async def open(self, request: ChatRequest) -> AsyncIterator[Generation]:
        """Admit and render a request; errors raised here come before any response is sent.

        Leaving the block releases the request's place, and cancels its sequence if the events
        were not read to the end (the client went away).
        """
        self._admit()
        self._inflight += 1
        try:
            profile = RequestProfile()
            start = time.perf_counter()
            rendered, lasting = await asyncio.to_thread(self._prepare_with_lasting, request)
            profile.add("tokenize", time.perf_counter() - start)
            start = time.perf_counter()
            constraint = await asyncio.to_thread(self.constrain, request, rendered)
            profile.add("grammar", time.perf_counter() - start)
            yield Generation(self, request, rendered, profile, constraint, lasting=lasting)
        finally:
            self._inflight -= 1

    async def generate(self, request: ChatRequest) -> AsyncIterator[GenerationEvent]:
        """Admit, render and generate in one go (for callers with no HTTP response to prepare)."""
        async with self.open(request) as generation:
            async for event in generation.events():
                if event is not None:
                    yield event

    async def warmup(self) -> float:
        """Run short generations through both paths; returns the seconds taken.

        MLX compiles kernels the first time each shape is used (tens of seconds on CUDA, less
        on Metal). One lone sequence covers the single-sequence path and two at once the
        batched one, each with a short and a longer prefill, so that cost is paid at load time
        and not by the first user. The longer lone one decodes a few more tokens with
        speculation on, so its verification passes (and the draft model, if any) run too
        wherever its prompt of one repeated token gives the lookup something to propose.
        """
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        token = max(self.tokenizer.eos_token_ids) + 1

        async def run(lengths: tuple[int, ...]) -> None:
            queues = [asyncio.Queue[Message]() for _ in lengths]
            lone = len(lengths) == 1 and lengths[0] > 8
            for n, queue in zip(lengths, queues, strict=True):
                self.submit(Job(
                    prompt=[token] * n, max_tokens=16 if lone else 4, loop=loop, sink=queue.put_nowait,
                    speculation=self.speculation_for(None) if lone else None,
                ))  # fmt: skip
            for queue in queues:
                while not isinstance(await queue.get(), SequenceEnd):
                    pass

        for lengths in ((8,), (200,), (8, 200)):
            await run(lengths)
        return time.perf_counter() - start

    def speculation_for(self, sampler: Sampler | None) -> Speculation | None:
        """A new sequence's speculative decoding (see `speculate.py`), or None where it is off.

        Off on a group of machines: its controller decides by timing, which differs per rank, and
        the ranks must take the same steps."""
        if self._lockstep is not None:
            return None
        return speculation_for(
            self.config.speculation,
            sampler,
            stop_ids=self._stop_ids,
            draft=self.draft,
            prefill_step_size=self.config.prefill_step_size,
        )

    def submit(self, job: Job) -> None:
        """Queue a sequence on the compute thread."""
        if self._lockstep is not None:
            self._lockstep.track(job)
        self._scheduler.submit(job)

    def wait_closed(self) -> None:
        """Block until rank 0 shuts the group down (a follower rank serves until then)."""
        if self._lockstep is not None:
            self._lockstep.closed.wait()

    def cancel(self, job: Job) -> None:
        """Drop a sequence before its next step (its request stopped reading)."""
        self._scheduler.cancel(job)

    def close(self) -> None:
        self._scheduler.close()


def _drop_oldest_turn(request: ChatRequest) -> ChatRequest | None:
    """Drop the oldest turn that is neither the system prompt nor the last user turn."""
    messages = list(request.messages)
    first = 1 if messages and messages[0].role == "system" else 0
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
    if first >= last_user:
        return None
    del messages[first]
    return request.model_copy(update={"messages": messages})

