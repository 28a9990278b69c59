"""Several observers sharing a fleet of rooms through the database they share.

Each observer writes a heartbeat row (with the rooms it is inside) every FAILOVER_S / 5;
an observer whose heartbeat is older than FAILOVER_S / 2 counts as dead. From the live
list every observer computes the same placement (core/placement.py): each room is watched
by OBSERVER_REPLICAS of them. When one dies, the others' next placement gives its rooms to
the survivors. A clean stop marks the row as stopping, waits until its rooms are listed by
another observer, and then leaves them.

One live run holds an observer id (`daemon/identity.py`); a run whose row another run took
over (its heartbeat had gone stale) is told so at its next heartbeat and stops.

After the database was unreachable, heartbeats of everyone are stale for a moment, and
the others come back at their own pace (a retry's sleep, a busy thread pool): the
membership does not shrink until this observer has beaten for a whole FAILOVER_S again,
so that a database outage does not make observers join each other's rooms.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Collection

from sqlalchemy.exc import SQLAlchemyError

from observer.config import Settings
from observer.core.placement import assign
from observer.core.times import utcnow
from observer.daemon.telemetry import Metrics
from observer.db import fleet as fleet_db
from observer.db.store import Store

log = logging.getLogger(__name__)


class Fleet:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        run_id: str,
        rooms_inside: Callable[[], Collection[str]],
        on_change: Callable[[], None],
        on_id_taken: Callable[[], None],
    ) -> None:
        self.me = settings.observer_id
        self.run_id = run_id
        self.replicas = settings.replicas
        self.interval_s = settings.failover_s / 5
        self.dead_after_s = settings.failover_s / 2
        self.failover_s = settings.failover_s
        self.shared = settings.database_url.startswith("postgresql")
        self._store = store
        self._metrics = metrics
        self._rooms_inside = rooms_inside
        self._on_change = on_change
        self._on_id_taken = on_id_taken
        self.id_taken = False
        self._started_at = utcnow()
        self._host = socket.gethostname()
        self.members: tuple[str, ...] = (self.me,)
        self.others: list[fleet_db.Member] = []
        self._healthy_since: float | None = None
        self._failing_since: float | None = None
        self._stopping = False
        self._beats = 0
        self._shown: set[str] = set()  # the observers in `observer_fleet_rooms_per_observer`
        metrics.observers_alive.set_function(lambda: len(self.members))

    @property
    def database_answers(self) -> bool:
        """The last heartbeat reached the database."""
        return self._healthy_since is not None

    # ---- placement ------------------------------------------------------------------------

    def mine(self, room_names: Collection[str]) -> set[str]:
        """Of these rooms (a whole listing), the ones this observer watches."""
        if not self.shared or self.members == (self.me,):
            mine = set(room_names)
        else:
            assignment = assign(room_names, self.members, self.replicas)
            mine = {room for room, obs in assignment.items() if self.me in obs}
        self._metrics.rooms_owned.set(len(mine))
        return mine

    # ---- heartbeats -----------------------------------------------------------------------

    async def run_forever(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval_s)

    async def beat(self) -> None:
        try:
            members = await self._store.run(
                self._store.heartbeat,
                observer_id=self.me,
                run_id=self.run_id,
                host=self._host,
                pid=os.getpid(),
                started_at=self._started_at,
                stopping=self._stopping,
                rooms=sorted(self._rooms_inside()),
                dead_after_s=self.dead_after_s,
            )
        except fleet_db.IdTaken:
            if not self.id_taken:
                self.id_taken = True
                log.error(
                    "another observer process took over this OBSERVER_ID; stopping",
                    extra={"observer_id": self.me},
                )
                self._on_id_taken()
            return
        except SQLAlchemyError as exc:
            if self._healthy_since is not None:
                log.warning("heartbeat failed", extra={"error": type(exc).__name__})
                self._failing_since = time.monotonic()
            self._healthy_since = None
            return
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()
            if self._failing_since is not None:
                log.warning(
                    "heartbeat again",
                    extra={"failed_for_s": round(self._healthy_since - self._failing_since, 1)},
                )
                self._failing_since = None
        self.others = [m for m in members if m.observer_id != self.me]
        live = {m.observer_id for m in members if not m.stopping} | {self.me}
        if time.monotonic() - self._healthy_since < self.failover_s:
            live |= set(self.members)  # just back: nobody is taken for dead yet
        self._set_members(tuple(sorted(live)))
        shown = {m.observer_id for m in members}
        for gone in self._shown - shown:  # dead or replaced: no series left at its last value
            self._metrics.rooms_per_observer.remove(gone)
        self._shown = shown
        for m in members:
            self._metrics.rooms_per_observer.labels(observer=m.observer_id).set(len(m.rooms))
        self._beats += 1
        if self.shared and self._beats % 10 == 1:
            try:
                several = await self._store.run(self._store.open_seen_by_several)
            except SQLAlchemyError:
                return
            self._metrics.sessions_seen_by_several.set(several)

    def _set_members(self, members: tuple[str, ...]) -> None:
        if members == self.members:
            return
        gone = set(self.members) - set(members)
        came = set(members) - set(self.members)
        self.members = members
        log.info(
            "observers changed",
            extra={
                "observers": ",".join(members),
                "gone": ",".join(sorted(gone)),
                "new": ",".join(sorted(came)),
            },
        )
        if gone:
            self._metrics.takeovers.inc(len(gone))
        self._on_change()

    # ---- a clean stop ---------------------------------------------------------------------

    async def hand_over(self, timeout_s: float) -> None:
        """Tell the others this observer is stopping, and wait until each of its rooms is
        listed by another live observer (or the timeout passes)."""
        if not self.shared or self.id_taken:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.beat()
            mine = set(self._rooms_inside())
            covered: set[str] = set()
            for m in self.others:
                if not m.stopping:
                    covered.update(m.rooms)
            if not self.others or mine <= covered:
                return
            await asyncio.sleep(min(self.interval_s, 0.5))
        log.warning("stopping before every room was handed over")

    async def leave(self) -> None:
        try:
            await self._store.run(self._store.leave_fleet, self.me, self.run_id)
        except SQLAlchemyError:
            pass  # the row goes stale by itself
