"""Rooms seen ending, never joined again while the server may still list them: a room that
just ended and were joined would be created anew by the join.

Bounded for a daemon that runs for months: a room is forgotten once the server's listing
has not shown it for `FORGET_AFTER_S` (a listing that still shows an ended room is a
listing taken before it ended, or a node that died with it), and at most `MAX_ENDED` are
kept, the longest unlisted forgotten first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Set

FORGET_AFTER_S = 600.0
MAX_ENDED = 100_000


class EndedRooms(Set[str]):
    """Room sids seen ending, each with when the server's listing last showed it (or when
    it ended), the longest unlisted first."""

    def __init__(
        self,
        *,
        forget_after_s: float = FORGET_AFTER_S,
        max_rooms: int = MAX_ENDED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forget_after_s = forget_after_s
        self._max = max_rooms
        self._clock = clock
        self._last_listed: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, sid: object) -> bool:
        return sid in self._last_listed

    def __iter__(self) -> Iterator[str]:
        return iter(self._last_listed)

    def __len__(self) -> int:
        return len(self._last_listed)

    def add(self, sid: str) -> None:
        """The room ended."""
        self._last_listed[sid] = self._clock()
        self._last_listed.move_to_end(sid)
        while len(self._last_listed) > self._max:
            self._last_listed.popitem(last=False)

    def listed(self, sids: Iterable[str]) -> None:
        """A complete listing of the server's rooms: the ended rooms it shows are kept, and
        those it has not shown for `forget_after_s` are forgotten."""
        now = self._clock()
        for sid in sids:
            if sid in self._last_listed:
                self._last_listed[sid] = now
                self._last_listed.move_to_end(sid)
        horizon = now - self._forget_after_s
        while self._last_listed:
            sid, at = next(iter(self._last_listed.items()))
            if at > horizon:
                break
            del self._last_listed[sid]
