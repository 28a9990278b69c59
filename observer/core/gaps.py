"""Gaps in the observer's own life (a pause, a stalled loop, a room process that stopped)
that the tracker has handled already, for every room and for single rooms. Pure logic.

Kept small for a daemon that runs for months: a room's mark goes with the room, and a mark
that the one for every room covers says nothing more."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# A room the observer is not in keeps its mark this long: the events that may still carry
# a gap of its (a join landing, a leave queued before the gap was handled) arrive sooner.
UNWATCHED_MARK_S = 3600.0


@dataclass
class HandledGaps:
    """The start of the latest gap handled, for every room (None) and for single rooms."""

    _since: dict[str | None, datetime] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._since)

    def handled(self, since: datetime, room_sid: str | None) -> bool:
        """Whether a gap that began at `since` was handled for `room_sid` (None: every room)
        or for every room."""
        marks = [self._since.get(None), self._since.get(room_sid)]
        return any(h is not None and since <= h for h in marks)

    def mark(self, since: datetime, rooms: Iterable[str | None]) -> None:
        """A gap that began at `since` is handled for `rooms` (None: every room)."""
        for room in rooms:
            self._since[room] = max(since, self._since.get(room, since))

    def forget(self, room_sid: str) -> None:
        self._since.pop(room_sid, None)

    def prune(self, watched: Collection[str], at: datetime) -> None:
        """Drop the marks that decide nothing: a room's that the one for every room covers,
        and that of a room not watched for `UNWATCHED_MARK_S`."""
        every = self._since.get(None)
        old = at - timedelta(seconds=UNWATCHED_MARK_S)
        for room, since in list(self._since.items()):
            if room is None:
                continue
            if (every is not None and since <= every) or (room not in watched and since < old):
                del self._since[room]
