"""A rank other than 0 of a group: no HTTP, only its share of the model, in lockstep with rank 0.

Rank 0 decides every turn of the engine (`engine/lockstep.py`); this process loads its share of
the weights together with the other ranks, runs its compute thread until rank 0 shuts the group
down, and exits 0. Asked to stop by a signal of its own (Ctrl-C reaches every rank `mlx.launch`
started; a service manager stops every rank), it keeps serving while rank 0 drains and stops
the group, for at most the drain time and a margin; if rank 0 never does, it leaves anyway,
which breaks the group and stops rank 0 too.
"""

from __future__ import annotations

import asyncio
import os
import signal

from pensieve.modelmgr import ModelPool
from pensieve.utils import PensieveError, Settings
from pensieve.utils.logging import logger

STOP_MARGIN_S = 10.0
"""Beyond the drain time, how long a follower asked to stop waits for rank 0 to stop the group."""


def follow(pool: ModelPool, settings: Settings) -> int:
    """Serve this rank's share until rank 0 stops the group; the exit code."""
    return asyncio.run(_follow(pool, settings.server.drain_timeout_s + STOP_MARGIN_S))


async def _follow(pool: ModelPool, patience_s: float) -> int:
    assert pool.sharding is not None
    rank = pool.sharding.group.rank
    loop = asyncio.get_running_loop()

    def asked_to_stop(name: str) -> None:
        logger.info("rank {}: {}; serving until rank 0 stops the group, at most {:g}s more", rank, name, patience_s)
        loop.call_later(patience_s, leave)

    def leave() -> None:
        logger.warning("rank {}: rank 0 did not stop the group in time; leaving it (rank 0 stops too)", rank)
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, asked_to_stop, signal.Signals(sig).name)
    try:
        await pool.start()
        engine = await pool.engine(None)
        logger.info("rank {}: serving its share of {} in step with rank 0", rank, engine.name)
        await asyncio.to_thread(engine.wait_closed)
    except PensieveError as exc:
        logger.error("rank {}: could not load its share: {}", rank, exc.message)
        return 1
    finally:
        await pool.close()
    logger.info("rank {}: rank 0 stopped the group", rank)
    return 0
