"""Every rank of a group runs the same scheduler, turn for turn, on rank 0's decisions.

In a sharded model every forward pass is a collective: each rank must run the same passes, on
the same batch, in the same order. So the ranks do not each schedule; they replicate one
scheduler. Its state changes only through its inputs and its own deterministic logic, so it is
enough that every rank gets the same inputs at the same turn of the compute loop. Rank 0 (the
one serving HTTP) decides them, once per turn, and broadcasts a `Decision`: the sequences
admitted (their prompt tokens, token budget, sampling parameters with a seed, grammar), the
sequences cancelled, and whether to shut down. Every rank, rank 0 included, then applies it.

What would otherwise differ between ranks is made the same:
- arrival and cancellation times: only decisions taken at a turn's start count (a client that
  hangs up is a cancellation rank 0 broadcasts, never a flag the scheduler reads on its own);
- random numbers: a sampled request without a seed gets one drawn by rank 0, so its sampler
  is rebuilt identically everywhere;
- memory: the KV budget and the prefix cache count bytes with the plan's arithmetic (a
  pipeline rank's own caches hold other layers than rank 0's), from figures the ranks agreed
  on at load (`modelmgr/sharded.py`);
- failure: a step that raises breaks the group (a rank-local retry would desynchronize it).

The broadcast is MLX's own collective: an `all_sum` of int64 words where rank 0 writes and the
others add zeros. A fixed header comes every turn (an idle rank 0 still sends one every
`tick_s`, the group's heartbeat); a payload follows only when there is something to say. Each
rank also writes its own slot of the header (the turn it is at, its memory), which is how rank
0 learns the others' memory and how every rank checks that nobody drifted a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import numpy as np

from pensieve.engine.channel import FinishReason
from pensieve.engine.group import Group
from pensieve.engine.job import Job
from pensieve.engine.sampling import make_sampler
from pensieve.metal import memory_stats
from pensieve.models import SamplingParams

if TYPE_CHECKING:
    from pensieve.engine.constraint import SequenceConstraint

MAGIC = 0x50454E53_49455645  # "PENSIEVE"
_HEADER = 6
"""Rank 0's words: magic, turn, flags, admissions, cancellations, payload words."""
_SLOT = 3
"""Each rank's words: the turn it is at, its active and peak memory."""
_SHUTDOWN = 1
_ADMISSION = struct.Struct("<qiiiiddqi")
"""id, prompt tokens, max tokens, lasting prefix, top_k, temperature, top_p, seed (-1: none), grammar bytes."""
_SAMPLED = 1 << 30
"""Set in the top_k field of a sampled admission (greedy ones carry no sampling parameters)."""
COMPILING_SEQUENCES = 4
"""The group's first sequences (the warm-up's, `Engine.warmup`, when it is on): their passes run
shapes for the first time, and MLX compiles kernels then (tens of seconds on CUDA), so their
turns are bounded by `load_timeout_s` rather than `timeout_s`."""
IDLE_TICK_S = 0.2
"""The heartbeat of an idle group (see `Lockstep.tick_s`)."""
WAKE_MARGIN_S = 0.005


@dataclass(frozen=True, slots=True)
class Admission:
    """A sequence rank 0 admitted: everything another rank needs to run it identically."""

    id: int
    prompt: list[int]
    max_tokens: int
    persist: int = 0
    sampling: SamplingParams | None = None
    """None: greedy. Otherwise always with a seed."""
    grammar: str | None = None
    """Structured output's grammar (Lark, for llguidance), or None."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One turn of the compute loop, as rank 0 decided it."""

    turn: int
    admissions: tuple[Admission, ...] = ()
    cancellations: tuple[int, ...] = ()
    shutdown: bool = False


def encode(decision: Decision) -> tuple[np.ndarray, np.ndarray]:
    """(header, payload) words of a decision; the per-rank slots of the header are left at zero."""
    parts: list[bytes] = []
    for a in decision.admissions:
        grammar = a.grammar.encode() if a.grammar is not None else b""
        s = a.sampling
        top_k = (s.top_k | _SAMPLED) if s is not None else 0
        seed = s.seed if s is not None and s.seed is not None else -1
        temperature, top_p = (s.temperature, s.top_p) if s is not None else (0.0, 1.0)
        parts.append(_ADMISSION.pack(a.id, len(a.prompt), a.max_tokens, a.persist, top_k, temperature, top_p, seed, len(grammar)))
        parts.append(np.asarray(a.prompt, dtype=np.int32).tobytes())
        parts.append(grammar)
    parts.append(np.asarray(decision.cancellations, dtype=np.int64).tobytes())
    raw = b"".join(parts)
    payload = np.frombuffer(raw.ljust(-(-len(raw) // 8) * 8, b"\0"), dtype=np.int64)
    header = np.array(
        [MAGIC, decision.turn, _SHUTDOWN if decision.shutdown else 0, len(decision.admissions),
         len(decision.cancellations), payload.size], dtype=np.int64,
    )  # fmt: skip
    return header, payload


def decode(header: np.ndarray, payload: np.ndarray) -> Decision:
    """The decision in rank 0's words (the header's first `_HEADER`, then the payload)."""
    _, turn, flags, admissions, cancellations, _ = (int(w) for w in header[:_HEADER])
    raw = payload.astype(np.int64).tobytes()
    at = 0
    out: list[Admission] = []
    for _ in range(admissions):
        uid, n, max_tokens, persist, top_k, temperature, top_p, seed, grammar_bytes = _ADMISSION.unpack_from(raw, at)
        at += _ADMISSION.size
        prompt = np.frombuffer(raw, dtype=np.int32, count=n, offset=at).tolist()
        at += 4 * n
        grammar = raw[at : at + grammar_bytes].decode() if grammar_bytes else None
        at += grammar_bytes
        sampling = None
        if top_k & _SAMPLED:
            sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k & ~_SAMPLED, seed=seed)
        out.append(Admission(uid, prompt, max_tokens, persist, sampling, grammar))
    cancelled = np.frombuffer(raw, dtype=np.int64, count=cancellations, offset=at).tolist()
    return Decision(turn, tuple(out), tuple(cancelled), bool(flags & _SHUTDOWN))


@dataclass(frozen=True, slots=True)
class Turn:
    """What the scheduler applies this turn: the same on every rank."""

    admitted: list[Job]
    cancelled: list[Job]
    shutdown: bool


class _Nowhere:
    """The event loop of a follower's sequences: nobody reads them, so their outputs go nowhere."""

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        pass


_NOWHERE = cast(asyncio.AbstractEventLoop, _Nowhere())


class Lockstep:
    """A compute thread's side of the group: one exchange with the other ranks per turn."""

    def __init__(self, group: Group, constraint_for: Callable[[str], SequenceConstraint]) -> None:
        self.group = group
        self._constraint_for = constraint_for
        self._turn = 0
        self._next_id = 0
        self._ids: weakref.WeakKeyDictionary[Job, int] = weakref.WeakKeyDictionary()
        """Rank 0: the id each broadcast sequence has on every rank."""
        self._jobs: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
        """The other ranks: their copy of each sequence, by id."""
        self._tracked: weakref.WeakSet[Job] = weakref.WeakSet()
        """Rank 0: every sequence submitted and not yet let go, to fail if the group breaks."""
        self._tracked_lock = threading.Lock()
        self._first: list[Job] | None = []
        """The group's first sequences (`COMPILING_SEQUENCES`), the same on every rank; None
        once they have all finished (the group is warm)."""
        self.closed = threading.Event()
        """Set once rank 0 has decided to shut down (a follower's process then ends)."""
        if group.leads:
            group.on_failure(self._fail_all)

    @property
    def leads(self) -> bool:
        return self.group.leads

    @property
    def tick_s(self) -> float:
        """An idle rank 0 still sends a turn this often: the heartbeat the others' deadlines need.

        A request that reaches an idle group waits for the other ranks to wake from `pause_s`:
        on average half a tick more to its first token, against a core each kept polling.
        """
        return min(IDLE_TICK_S, self.group.timeout_s / 4)

    @property
    def pause_s(self) -> float:
        """How long the other ranks sleep while rank 0 waits a tick for work (a little less)."""
        return max(0.0, self.tick_s - WAKE_MARGIN_S)

    @property
    def failure(self) -> str | None:
        return self.group.failure

    def step_guard(self) -> contextlib.AbstractContextManager[None]:
        """A generation step holds the model's own collectives: it too must end in time."""
        return self.group.guard("a generation step", self._bound())

    def _bound(self) -> float | None:
        """The seconds a turn may take: the load bound while the first sequences compile kernels."""
        first = self._first
        if first is not None and len(first) == COMPILING_SEQUENCES and all(job.finished for job in first):
            self._first = first = None
        return None if first is None else self.group.load_timeout_s

    def track(self, job: Job) -> None:
        """Rank 0: a sequence submitted to the scheduler (failed at once if the group is broken)."""
        with self._tracked_lock:
            self._tracked.add(job)
        if self.group.failure is not None:
            job.end(FinishReason.ERROR, error=GroupBroken(self.group.failure))

    def turn(self, arrived: list[Job], cancels: list[Job], closing: bool) -> Turn:
        """Exchange this turn's decision (rank 0 gives it, the others receive it) and return what to apply."""
        self._turn += 1
        try:
            with self.group.guard("waiting for the other ranks", self._bound()):
                turn = self._lead(arrived, cancels, closing) if self.leads else self._follow()
        except Exception as exc:  # a collective failed: a rank is gone
            self.broken(exc)
        if self._first is not None:
            self._first.extend(turn.admitted[: COMPILING_SEQUENCES - len(self._first)])
        return turn

    def broken(self, exc: BaseException) -> NoReturn:
        """A step or a collective raised: on one rank only, perhaps, so the group cannot go on."""
        self.group.fail(str(exc) if type(exc) is RuntimeError else f"{type(exc).__name__}: {exc}")

    # -- rank 0 ----------------------------------------------------------------------------

    def _lead(self, arrived: list[Job], cancels: list[Job], closing: bool) -> Turn:
        gone = {id(job) for job in cancels}
        admitted = [job for job in arrived if id(job) not in gone and not job.cancelled]
        cancelled = [job for job in cancels if job in self._ids]
        decision = Decision(
            self._turn,
            tuple(self._admission(job) for job in admitted),
            tuple(self._ids[job] for job in cancelled),
            closing,
        )
        header, payload = encode(decision)
        self._exchange(header, payload)
        if closing:
            self.closed.set()
        return Turn(admitted, cancelled, closing)

    def _admission(self, job: Job) -> Admission:
        uid = self._next_id
        self._next_id += 1
        self._ids[job] = uid
        sampling = job.sampling
        if sampling is not None and sampling.greedy:
            sampling = None
        elif sampling is not None:
            # Every rank must draw the same tokens: a seed rank 0 drew (or the request's, made
            # to fit the wire), and a sampler made from it on every rank.
            seed = sampling.seed % (1 << 63) if sampling.seed is not None else secrets.randbits(63)
            if seed != sampling.seed:
                sampling = sampling.model_copy(update={"seed": seed})
                job.sampler = make_sampler(sampling)
        grammar = job.constraint.grammar if job.constraint is not None else None
        return Admission(uid, job.prompt, job.max_tokens, job.persist, sampling, grammar)

    def _fail_all(self, reason: str) -> None:
        with self._tracked_lock:
            jobs = list(self._tracked)
        for job in jobs:
            if not job.finished:
                job.end(FinishReason.ERROR, error=GroupBroken(reason))

    # -- the other ranks -------------------------------------------------------------------

    def _follow(self) -> Turn:
        decision = self._exchange(None, None)
        admitted = [self._replica(a) for a in decision.admissions]
        for admission, job in zip(decision.admissions, admitted, strict=True):
            self._jobs[admission.id] = job
        cancelled = [job for uid in decision.cancellations if (job := self._jobs.get(uid)) is not None]
        if decision.shutdown:
            self.closed.set()
        return Turn(admitted, cancelled, decision.shutdown)

    def _replica(self, admission: Admission) -> Job:
        sampling = admission.sampling
        return Job(
            prompt=admission.prompt,
            max_tokens=admission.max_tokens,
            loop=_NOWHERE,
            sink=_discard,
            sampler=make_sampler(sampling) if sampling is not None else None,
            sampling=sampling,
            constraint=self._constraint_for(admission.grammar) if admission.grammar is not None else None,
            persist=admission.persist,
        )

    # -- the collective --------------------------------------------------------------------

    def _exchange(self, header: np.ndarray | None, payload: np.ndarray | None) -> Decision:
        """One turn's words through the group; every rank checks that all are at this turn."""
        group = self.group
        words = np.zeros(_HEADER + _SLOT * group.size, dtype=np.int64)
        if header is not None:
            words[:_HEADER] = header
        stats = memory_stats()
        slot = _HEADER + _SLOT * group.rank
        words[slot : slot + _SLOT] = (self._turn, stats.active_bytes, stats.peak_bytes)
        # A rank that died mid-collective may leave the sum without its part rather than fail
        # it (MLX's ring backend): its slot then reads zero.
        words = group.all_sum(words)
        if int(words[0]) != MAGIC:
            raise RuntimeError(_missing(group, 0) if int(words[0]) == 0 else "rank 0 sent an unknown header: the ranks run different versions of Pensieve")
        for rank in range(group.size):
            at, active, peak = (int(w) for w in words[_HEADER + _SLOT * rank : _HEADER + _SLOT * (rank + 1)])
            if at == 0:
                raise RuntimeError(_missing(group, rank))
            if at != self._turn or int(words[1]) != self._turn:
                raise RuntimeError(f"rank {rank} is at turn {at} and this rank at {self._turn}: the ranks diverged")
            group.record(rank, active_bytes=active, peak_bytes=peak)
        size = int(words[5])
        if payload is None:
            payload = np.zeros(size, dtype=np.int64)
        if size:
            payload = group.all_sum(payload)
        return decode(words, payload)


def _missing(group: Group, rank: int) -> str:
    return f"nothing came from rank {rank} ({group.ranks[rank].host}): it stopped or lost its connection"


class GroupBroken(RuntimeError):
    """A request's sequence ended because the group serving its model broke."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the group of machines serving this model broke ({reason}); every rank is exiting so that "
            "its service manager starts the group again"
        )


def _discard(_: Any) -> None:
    pass
