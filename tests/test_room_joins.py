"""A room's join overtaken by a newer one: when the placement takes a room from an observer
while its join is in flight and gives it back, a second join of the room starts (a slow
join holds its turn for a moment only). When the first lands after the second, it is left
quietly: the room's sessions stay with the connection that watches it, and a leave seen
there still closes its session. No server; the joins are fakes the test lets land."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from observer.config import Settings
from observer.core.changes import Close
from observer.core.discovery import ListedRoom
from observer.core.events import (
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomJoined,
    SeenParticipant,
)
from observer.core.tracker import SessionTracker
from observer.daemon import rooms
from observer.daemon.fleet import Fleet
from observer.daemon.room_processes.pool import RoomProcessPool
from observer.livekit_api import Client

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ROOM = ListedRoom("RM_one", "fleet-48")
AGENT = SeenParticipant(
    sid="PA_late", identity="late-8", name="", kind="agent", attributes={}, joined_at=T0
)


class FakeWatcher:
    """A join that lands when the test says so, with a snapshot of the room."""

    def __init__(self, room_name: str, room_sid: str, emit: Any) -> None:
        self.room_name, self.room_sid = room_name, room_sid
        self._emit = emit
        self.recovering = False
        self.land = asyncio.Event()
        self.present: tuple[SeenParticipant, ...] = ()
        self.started = False
        self.left = False

    async def join(self, ws_url: str, token: str, timeout_s: float) -> None:
        self.started = True
        await self.land.wait()
        self._emit(RoomJoined(self.room_name, self.room_sid, self.present, T0))

    async def leave(self) -> None:
        self.left = True


class FakePool:
    def __init__(self, emit: Any) -> None:
        self.processes = [object(), object()]
        self.made: list[FakeWatcher] = []
        self._emit = emit

    def watcher(self, room_name: str, room_sid: str) -> FakeWatcher:
        self.made.append(FakeWatcher(room_name, room_sid, self._emit))
        return self.made[-1]


class FakeFleet:
    def __init__(self) -> None:
        self.owned = True

    def mine(self, names: Collection[str]) -> set[str]:
        return set(names) if self.owned else set()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.mark.parametrize("newer_lands_first", [True, False])
async def test_a_join_overtaken_by_a_newer_one_leaves_the_room_s_sessions_alone(
    newer_lands_first: bool,
) -> None:
    settings = Settings.from_mapping(
        {
            "LIVEKIT_URL": "ws://a.invalid:7880",
            "LIVEKIT_API_KEY": "key",
            "LIVEKIT_API_SECRET": "s" * 32,
            "OBSERVER_HTTP_ADDR": "off",
        },
        need_livekit=True,
    )
    tracker = SessionTracker(tracked_kinds=frozenset({"agent"}))
    closes: list[Close] = []

    def emit(ev: Event) -> None:
        closes.extend(w for w in tracker.handle(ev).writes if isinstance(w, Close))

    pool = FakePool(lambda ev: r.emit(ev))
    fleet = FakeFleet()
    client = Client(settings.require_livekit(), 1)
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        return task

    r = rooms.Rooms(
        settings,
        settings.require_livekit(),
        client,
        "observer",
        emit=emit,
        spawn=spawn,
        unwatched_with_sessions=tracker.unwatched_rooms,
        pool=cast(RoomProcessPool, pool),
        fleet=cast(Fleet, fleet),
    )
    try:
        r.poll_once([ROOM], T0)
        await settle()
        (first,) = pool.made
        assert first.started  # in flight
        fleet.owned = False  # the placement gives the room to others...
        r.replan()
        fleet.owned = True  # ...and back, while the first join is still in flight
        r.replan()
        await settle()
        assert pool.made[0] is first
        second = pool.made[1]
        assert second.started and r.watchers[ROOM.sid] is second
        if newer_lands_first:
            second.land.set()
            await settle()
            emit(ParticipantJoined(ROOM.name, ROOM.sid, AGENT, T0 + timedelta(seconds=1)))
            first.present = (AGENT,)
            first.land.set()  # the older one lands after it, and is left
            await settle()
        else:
            first.present = second.present = (AGENT,)
            first.land.set()  # the older one lands first, and is left
            await settle()
            assert first.left and tracker.watched_rooms == {}
            assert list(tracker.open_sessions) and closes == []  # nobody watches; kept
            second.land.set()
            await settle()
        assert first.left and not second.left
        assert tracker.watched_rooms == {ROOM.sid: ROOM.name}
        assert r.watchers[ROOM.sid] is second
        emit(ParticipantLeft(ROOM.sid, AGENT.sid, "CLIENT_INITIATED", T0 + timedelta(seconds=4)))
        assert [(c.key.participant_sid, c.end_source) for c in closes] == [("PA_late", "rtc")]
    finally:
        for task in tasks:
            task.cancel()
        await client.aclose()
