"""One admitted request on its way out: the compute thread's tokens become neutral events.

The request's event loop reads the job's messages from a queue, detokenizes, lets the
`OutputParser` split text, reasoning and tool calls, and ends with one `Finished` whose timings
come from both threads' clocks.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pensieve.engine.channel import Admitted, FinishReason, Message, SequenceEnd, Signal
from pensieve.engine.constraint import SequenceConstraint
from pensieve.engine.job import Job
from pensieve.engine.output import OutputParser
from pensieve.engine.prompt import RenderedPrompt
from pensieve.metal import RequestProfile
from pensieve.models import (
    ChatRequest,
    Finished,
    GenerationEvent,
    GenerationFailed,
    Started,
    StopReason,
    Usage,
)
from pensieve.utils.logging import logger

if TYPE_CHECKING:
    from pensieve.engine.engine import Engine


class Generation:
    """One admitted, rendered request; `events()` runs it on the compute thread.

    `nudge()` and `interrupt()` let a watcher on the same event loop (the server's disconnect
    and keep-alive check) act on the stream without wrapping every token in a task.
    """

    def __init__(
        self,
        engine: Engine,
        request: ChatRequest,
        rendered: RenderedPrompt,
        profile: RequestProfile | None = None,
        constraint: SequenceConstraint | None = None,
        *,
        lasting: int = 0,
    ) -> None:
        self.engine = engine
        self.request = request
        self.rendered = rendered
        self.constraint = constraint
        self.profile = profile or RequestProfile()
        self.produced = 0
        """Tokens generated so far: read by the server's live view of requests in flight."""
        self.lasting = lasting
        """Leading prompt tokens worth keeping after the request (`prefix_policy`)."""
        self._queue: asyncio.Queue[Message] = asyncio.Queue()

    def nudge(self) -> None:
        """Make `events()` yield None once: a keep-alive tick for a stream that is quiet."""
        self._queue.put_nowait(Signal.NUDGE)

    def interrupt(self) -> None:
        """End `events()` without a Finished event and cancel the sequence (client gone)."""
        self._queue.put_nowait(Signal.INTERRUPT)

    @property
    def input_tokens(self) -> int:
        return len(self.rendered.tokens)

    async def events(self) -> AsyncIterator[GenerationEvent | None]:
        """The generation's events; None is a keep-alive tick asked for with `nudge()`."""
        engine, request, rendered, queue = self.engine, self.request, self.rendered, self._queue
        prompt = rendered.tokens
        sampler = engine.sampler_for(request)
        job = Job(
            prompt=prompt,
            max_tokens=max(1, min(request.max_tokens, engine.context_length - len(prompt))),
            loop=asyncio.get_running_loop(),
            sink=queue.put_nowait,
            sampler=sampler,
            sampling=request.sampling,
            persist=self.lasting,
            constraint=self.constraint,
            speculation=engine.speculation_for(sampler),
        )
        parser = OutputParser.for_prompt(engine.tokenizer, rendered, request)
        detok = copy.copy(engine.tokenizer.detokenizer)
        detok.reset()
        reason: FinishReason | None = None
        """Why the compute thread ended the sequence; None while it runs or when the parser ended it."""

        def take(token: int) -> list[Any]:
            self.produced += 1
            tick = time.perf_counter()
            detok.add_token(token)
            events = parser.feed(detok.last_segment)
            self.profile.add("detokenize", time.perf_counter() - tick)
            return events

        engine.submit(job)
        try:
            while True:
                message = await queue.get()
                if message is Signal.INTERRUPT:
                    return
                if isinstance(message, Signal):  # NUDGE
                    yield None
                    continue
                if isinstance(message, Admitted):
                    yield Started(Usage(input_tokens=len(prompt), cache_read_input_tokens=message.cached))
                    continue
                if isinstance(message, SequenceEnd) and message.reason is FinishReason.ERROR:
                    logger.opt(exception=message.error).error("generation failed for {}", request.request_id)
                    yield GenerationFailed(
                        f"generation failed: {message.error}. Retry the request; if it persists, check the server log."
                    )
                    return
                if isinstance(message, SequenceEnd) and message.reason is FinishReason.CANCELLED:
                    yield GenerationFailed(
                        "generation was cancelled because the model is being unloaded or the server is "
                        "stopping. Retry the request."
                    )
                    return
                if message.token is not None:
                    for event in take(message.token):
                        yield event
                if isinstance(message, SequenceEnd):
                    reason = message.reason
                    break
                if parser.stopped or (parser.tool_calls and not request.parallel_tool_calls):
                    break
            detok.finalize()
            for event in [*parser.feed(detok.last_segment), *parser.finish()]:
                yield event
            yield Finished(
                stop_reason=_stop_reason(reason, parser),
                stop_sequence=parser.stop_sequence,
                usage=Usage(input_tokens=len(prompt), output_tokens=self.produced, cache_read_input_tokens=job.cached),
                timings=_timings(job, self.profile),
            )
        finally:
            if not job.finished:
                engine.cancel(job)


def _stop_reason(reason: FinishReason | None, parser: OutputParser) -> StopReason:
    if parser.stop_sequence is not None:
        return "stop_sequence"
    if parser.tool_calls:
        return "tool_use"
    return "max_tokens" if reason is FinishReason.LENGTH else "end_turn"


def _timings(job: Job, profile: RequestProfile) -> dict[str, float]:
    """Queue wait, prefill (to the first token) and decode from the compute thread's clock,
    plus the phases the request recorded itself (tokenize, detokenize), memory marks and,
    where it ran, speculation's figures (acceptance, tokens per forward pass)."""
    end = time.perf_counter()
    started = job.started_at or end
    first = job.first_token_at or end
    profile.add("queue", started - job.enqueued_at)
    profile.add("prefill", first - started)
    profile.add("decode", end - first)
    profile.add("total", end - job.enqueued_at)
    if job.speculation is not None:
        profile.figures.update(job.speculation.figures())
    profile.mark_memory()
    return profile.as_dict()
