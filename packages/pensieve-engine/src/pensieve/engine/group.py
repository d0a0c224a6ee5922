"""This process's place in a group of processes serving one model, and what a broken group does.

The group is MLX's own (`mx.distributed`, started by `mlx.launch`): ring over TCP or
Thunderbolt, JACCL over RDMA, NCCL on CUDA. Its collectives block until every rank has taken
part. A rank that dies closes its sockets and the others' collectives fail at once; a rank that
stalls (hung, frozen, a cable pulled, an RDMA or NCCL peer gone quiet) leaves them waiting
forever, and every request in flight with them. So each collective, and each generation step
(whose forward pass holds the model's own collectives), runs under a deadline kept by a
`Watchdog` thread: the thread that waits is inside MLX, with the GIL released, and cannot look
at the clock itself.

A missed deadline or a failed collective breaks the group for good: MLX cannot rejoin a rank
into a running ring. `Group.fail` runs the failure callbacks (rank 0's end every request with
an `api_error` saying so and turn /health unhealthy), gives the HTTP side a moment to send those
errors, and exits the process with `EXIT_BROKEN`, so a service manager restarts every rank.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream

from pensieve.models import DistributedStatus, RankStatus
from pensieve.utils import ConfigError
from pensieve.utils.launcher import launched_backend
from pensieve.utils.logging import logger

EXIT_BROKEN = 75
"""The exit code of every rank of a broken group (EX_TEMPFAIL: start it again)."""
ERROR_GRACE_S = 2.0
"""How long rank 0 lets its HTTP side send the failed requests their errors before it exits."""
HOST_BYTES = 64
"""A rank's host name, as far as the group is told it."""

class Watchdog:
    """Deadlines for blocking work done on other threads; `expired(reason)` is called from its own.

    Polled rather than woken: entering and leaving a guard is a dict update under a lock, which
    every generation step does, and a quarter of a second is precise enough for deadlines of
    tens of seconds.
    """

    POLL_S = 0.25

    def __init__(self, expired: Callable[[str], None]) -> None:
        self.expired = expired
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, str]] = {}
        self._next = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pensieve-group-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, seconds: float) -> Iterator[None]:
        """`what` must be over within `seconds`, or `expired` is called."""
        with self._lock:
            key = self._next
            self._next += 1
            self._deadlines[key] = (time.monotonic() + seconds, f"{what} took more than {seconds:g}s")
        try:
            yield
        finally:
            with self._lock:
                del self._deadlines[key]

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self.POLL_S):
            now = time.monotonic()
            with self._lock:
                late = [reason for deadline, reason in self._deadlines.values() if deadline < now]
            if late:
                self.expired(late[0])
                return


class Group:
    """The ranks of one model, their collectives under deadlines, and the way out when it breaks."""

    def __init__(
        self, group: Any, backend: str, *, parallel: str, timeout_s: float, load_timeout_s: float, watchdog: Watchdog
    ) -> None:
        self._group = group
        self.backend = backend
        self.parallel = parallel
        self.rank: int = group.rank()
        self.size: int = group.size()
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.failure: str | None = None
        """Why the group broke; None while it serves."""
        self._callbacks: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self.watchdog = watchdog
        watchdog.expired = lambda reason: self.fail(f"rank {self.rank} waited too long: {reason}")
        self.ranks: list[RankStatus] = [RankStatus(rank=r, host="?") for r in range(self.size)]
        with self.guard("meeting the other ranks", load_timeout_s):
            self._introduce()

    @property
    def mx_group(self) -> Any:
        """The `mx.distributed.Group`, for mlx-lm's sharding helpers."""
        return self._group

    @property
    def leads(self) -> bool:
        """Rank 0 binds HTTP and decides; the others follow."""
        return self.rank == 0

    def guard(self, what: str, seconds: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Bound blocking work that needs the other ranks (default: `timeout_s`)."""
        return self.watchdog.guard(what, self.timeout_s if seconds is None else seconds)

    def all_sum(self, words: np.ndarray) -> np.ndarray:
        """Sum int64 `words` over the ranks.

        On the thread's generation stream, the one the forward passes (and their own
        collectives) run on: collectives on two streams could interleave differently on two
        ranks, and the ranks would then wait on each other forever. What is queued there is
        finished first: when a rank dies during a queued step, waiting for that step raises at
        once, but a collective queued behind it would wait forever (MLX's ring backend fails
        the pending one and never runs the next).
        """
        mx.synchronize(generation_stream)
        summed = mx.distributed.all_sum(mx.array(words, dtype=mx.int64), group=self._group, stream=generation_stream)
        return np.array(summed, dtype=np.int64)

    def gather(self, values: Sequence[int]) -> np.ndarray:
        """Every rank's `values` (the same count on each), as a [size, len(values)] array."""
        words = np.zeros((self.size, len(values)), dtype=np.int64)
        words[self.rank] = values
        return self.all_sum(words.reshape(-1)).reshape(self.size, len(values))

    def _introduce(self) -> None:
        name = socket.gethostname().encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0")
        hosts = self.gather(np.frombuffer(name, dtype=np.int64).tolist())
        for rank, words in enumerate(hosts):
            host = words.astype(np.int64).tobytes().rstrip(b"\0").decode(errors="replace")
            self.ranks[rank] = replace(self.ranks[rank], host=host)

    def record(self, rank: int, **figures: int) -> None:
        """Update what rank 0 reports about a rank (its memory, its plan)."""
        self.ranks[rank] = replace(self.ranks[rank], **figures)

    def status(self) -> DistributedStatus:
        return DistributedStatus(
            backend=self.backend,
            world_size=self.size,
            parallel=self.parallel,
            ranks=tuple(self.ranks),
            healthy=self.failure is None,
            error=self.failure,
        )

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` when the group breaks, before the process exits."""
        self._callbacks.append(callback)

    def fail(self, reason: str) -> NoReturn:
        """Break the group: tell everyone who waits, then exit with EXIT_BROKEN.

        Called from the compute thread (a collective failed) or the watchdog's (one never
        finished); a second caller waits for the first to end the process.
        """
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = reason
        if not first:
            while True:
                time.sleep(60)
        logger.error("the distributed group is broken on rank {} of {}: {}", self.rank, self.size, reason)
        for callback in self._callbacks:
            try:
                callback(reason)
            except Exception:
                logger.exception("a callback of the broken group failed")
        if self.leads:
            time.sleep(ERROR_GRACE_S)
        logger.error("rank {} exits with code {} so that the whole group can be started again", self.rank, EXIT_BROKEN)
        os._exit(EXIT_BROKEN)


def join(backend: str, *, parallel: str, timeout_s: float, load_timeout_s: float, env: Mapping[str, str] | None = None) -> Group | None:
    """This process's group when it was started by `mlx.launch` with more than one rank; else None.

    `backend` "auto" takes the launcher's. Joining waits for every rank, under `load_timeout_s`.
    """
    env = os.environ if env is None else env
    launched = launched_backend(env)
    if launched is None:
        return None
    chosen = launched if backend == "auto" else backend
    # The rendezvous itself may wait for a rank that never comes: bounded like everything else.
    watchdog = Watchdog(_give_up)
    with watchdog.guard(f"joining the {chosen} group", load_timeout_s):
        try:
            group = mx.distributed.init(strict=True, backend=chosen)
        except RuntimeError as exc:
            watchdog.stop()
            raise ConfigError(
                f"could not join the {chosen} group started by mlx.launch: {exc}. Check the hostfile "
                "and that every rank runs the same Pensieve (docs/operations.md, 'Several machines')"
            ) from exc
    if group.size() == 1:
        watchdog.stop()
        return None
    return Group(group, chosen, parallel=parallel, timeout_s=timeout_s, load_timeout_s=load_timeout_s, watchdog=watchdog)


def _give_up(reason: str) -> None:
    logger.error("{}: the other ranks never joined; exiting with code {}", reason, EXIT_BROKEN)
    os._exit(EXIT_BROKEN)
