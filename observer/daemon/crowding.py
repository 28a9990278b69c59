"""Rooms whose sockets outgrew them, joined afresh.

Joins that overlap in one rtc SDK multiply the sockets each room keeps (3 for a room joined
alone, 6-28 with 2-8 at once, ~46 with 200), so the observer joins one room at a time per
process (`join_turn`). The SDK's own reconnects cannot be taken in turn: when the link to
LiveKit breaks under many rooms it reconnects them all at once, and those sockets stay for
good (200 rooms after a 30 s cut: 631 open files before, 4,276 for good after). A join's
unused sockets go within ~10 s. So a process whose open files stay above what its rooms need
once nothing has joined or reconnected for SETTLE_S has each of its rooms joined afresh, one
at a time (`RoomWatcher.renew`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from observer.daemon.room_processes.pool import RoomProcessPool

log = logging.getLogger(__name__)

# Open files a process holding rooms may have before its rooms count as crowded: its own
# (the database, HTTP, the API's connections) and up to this many per room (1-3 each once
# settled, joined one at a time).
FILES_BASE = 64
FILES_PER_ROOM = 8
# How often the processes are checked; how long without a join or a reconnect before their
# counts tell; how long a process whose rooms, all joined afresh, did not free their files
# is left alone (its files are not its rooms').
CHECK_S = 10.0
SETTLE_S = 30.0
BACKOFF_S = 3600.0


def open_files(pid: int | None = None) -> int | None:
    """The open file descriptors of process `pid` (None: this one); None where /proc does
    not tell."""
    try:
        return len(os.listdir(f"/proc/{pid or 'self'}/fd"))
    except OSError:
        return None


def crowded(rooms: int, files: int | None) -> bool:
    """`files` open files are more than a process holding `rooms` joined one at a time
    needs (None, not known: not crowded)."""
    return files is not None and files > FILES_BASE + FILES_PER_ROOM * rooms


class Room(Protocol):
    @property
    def room_sid(self) -> str: ...
    @property
    def recovering(self) -> bool: ...


W = TypeVar("W", bound=Room)


class Crowding(Generic[W]):
    def __init__(
        self,
        watchers: Mapping[str, W],
        pool: RoomProcessPool | None,
        renew: Callable[[W], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        """`watchers`: the rooms held, by sid (in this process, or in the `pool`'s);
        `renew`: join a room afresh, in turn."""
        self._watchers = watchers
        self._pool = pool
        self._renew = renew
        self._stopping = stopping
        self._last_change = time.monotonic()

    def _holders(self) -> Sequence[tuple[int | None, Sequence[W]]]:
        """Each process holding rooms (its pid, None for this one) and its rooms."""
        if self._pool is None:
            return [(None, list(self._watchers.values()))]
        return [
            (p.proc.pid, [w for w in self._watchers.values() if p.watchers.get(w.room_sid) is w])
            for p in self._pool.processes
            if p.alive and p.proc is not None
        ]

    def room_process_files(self) -> float:
        """The most open files one room process holds (0 without room processes)."""
        if self._pool is None:
            return 0.0
        counts = (open_files(pid) for pid, _ in self._holders())
        return float(max((n for n in counts if n is not None), default=0))

    def changed(self) -> None:
        """A join or a renewal started, or a connection broke: sockets are not settled."""
        self._last_change = time.monotonic()

    async def keep_uncrowded_forever(self) -> None:
        quiet_until = 0.0
        swept = False
        while True:
            await asyncio.sleep(CHECK_S)
            if any(w.recovering for w in self._watchers.values()):
                self.changed()
            now = time.monotonic()
            if self._stopping() or now < quiet_until or now - self._last_change < SETTLE_S:
                continue
            full = [
                (pid, rooms)
                for pid, rooms in self._holders()
                if rooms and crowded(len(rooms), open_files(pid))  # no rooms: not theirs
            ]
            if not full:
                swept = False
                continue
            if swept:
                log.warning(
                    "a process holding rooms keeps many more open files than its rooms need,"
                    " after each room was joined afresh",
                    extra={"open_files": [open_files(pid) for pid, _ in full]},
                )
                quiet_until, swept = now + BACKOFF_S, False
                continue
            for pid, rooms in full:
                log.warning(
                    "rooms hold many more sockets than they need; joining them afresh",
                    extra={"rooms": len(rooms), "open_files": open_files(pid)},
                )
                for room in rooms:
                    if self._stopping():
                        return
                    try:
                        await self._renew(room)
                    except Exception:  # a renewal that failed reported its room lost
                        log.exception("joining a room afresh failed")
            swept = True
