"""Joins one at a time per rtc SDK: joins that overlap in one SDK multiply the sockets each
room keeps (3 per room joined alone, 6-28 with 2-8 at once, ~46 with 200; see `crowding`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

# A join holds its turn this long at most: a join that hangs (the SDK retries for up to
# ~40 s) must not hold up the joins behind it.
SLOW_JOIN_S = 1.0


async def join_in_turn(
    slots: asyncio.Semaphore, start: Callable[[], Coroutine[Any, Any, None] | None]
) -> bool:
    """When a slot is free, `start()` a join (None: don't) and run it to the end; the slot is
    given up once the join is done or after SLOW_JOIN_S, whichever is first. A join in
    flight is never cancelled (the SDK's native core kills the process when a connect is
    cancelled). Returns whether a join was started."""
    await slots.acquire()
    try:
        join = start()
        if join is None:
            return False
        task = asyncio.ensure_future(join)
        await asyncio.wait({task}, timeout=SLOW_JOIN_S)
    finally:
        slots.release()
    await task
    return True
