"""When a listed room counts as hosted by no live node: only when every probe over a few
seconds says so, and never while a connection to it is joining or inside."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from livekit import api

from observer.config import LiveKitSettings, Settings
from observer.core import discovery
from observer.core.events import Event, RoomLost, RoomUnreachable
from observer.core.vocab import OBSERVER_REJOINING
from observer.daemon import room_checks, rooms
from observer.daemon.rooms import Rooms
from observer.livekit_api import Client

pytestmark = pytest.mark.unit

NO_NODE = api.TwirpError("unavailable", "no response from servers", status=503)
CANNOT_TELL = api.TwirpError("internal", "could not reach the node", status=500)


class Probes(Client):
    """A room service whose SendData answers come from a script: False is "no live node",
    None an error that tells nothing."""

    def __init__(self, answers: list[bool | None]) -> None:
        super().__init__(LiveKitSettings("ws://a.invalid:7880", "key", "s" * 32), 1)
        self.answers = answers
        self.asked = 0

    async def call(self, fn: Callable[[api.LiveKitAPI], Coroutine[Any, Any, Any]]) -> Any:
        hosted = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if hosted is None:
            raise CANNOT_TELL
        if not hosted:
            raise NO_NODE
        return None


def make_rooms(probes: Probes, events: list[Event]) -> Rooms:
    settings = Settings.from_mapping(
        {
            "LIVEKIT_URL": "ws://a.invalid:7880",
            "LIVEKIT_API_KEY": "key",
            "LIVEKIT_API_SECRET": "s" * 32,
            "OBSERVER_HTTP_ADDR": "off",
        },
        need_livekit=True,
    )
    return Rooms(
        settings,
        settings.livekit,
        probes,
        "observer",
        emit=events.append,
        spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name),
        unwatched_with_sessions=dict,
    )


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_checks, "UNREACHABLE_CONFIRM_S", 0.01)
    monkeypatch.setattr(rooms, "UNREACHABLE_RETRY_S", 0.01)
    monkeypatch.setattr(rooms, "STUCK_RECONNECT_S", 0.01)


ROOM = discovery.ListedRoom("RM_x", "x")


@pytest.mark.parametrize(
    ("answers", "unhosted"),
    [
        ([False, False, False], True),
        ([False, False, True], False),  # a slow node answers the last probe
        ([False, True, False], False),
        ([True], False),
    ],
)
async def test_every_probe_must_say_no_live_node(answers: list[bool], unhosted: bool) -> None:
    probes = Probes(answers)
    assert await room_checks.confirm_unhosted(probes, ROOM.name) is unhosted
    assert probes.asked == (room_checks.UNREACHABLE_PROBES if unhosted else answers.index(True) + 1)
    await probes.aclose()


async def test_a_room_being_joined_is_not_marked_and_a_join_clears_the_mark() -> None:
    events: list[Event] = []
    probes = Probes([False])
    r = make_rooms(probes, events)
    r.watchers[ROOM.sid] = object()  # type: ignore[assignment]  # a join in flight
    r._mark_unreachable(ROOM)
    assert ROOM.sid not in r.unreachable and events == []

    del r.watchers[ROOM.sid]
    r._mark_unreachable(ROOM)
    assert r.unreachable == {ROOM.sid: ROOM.name}
    assert [type(e) for e in events] == [RoomUnreachable]
    # another path joined it meanwhile: the probing stops and the mark goes with it
    r.watchers[ROOM.sid] = object()  # type: ignore[assignment]
    for _ in range(50):
        await asyncio.sleep(0.01)
        if ROOM.sid not in r.unreachable:
            break
    assert ROOM.sid not in r.unreachable
    r._stopping = True
    await probes.aclose()


class StuckWatcher:
    """A connection whose SDK keeps reconnecting."""

    def __init__(self, room: discovery.ListedRoom) -> None:
        self.room_sid, self.room_name = room.sid, room.name
        self.recovering = True
        self.left = False

    async def leave(self) -> None:
        self.left = True


async def test_a_stuck_connection_is_asked_about_again_until_the_answer_settles_it() -> None:
    """The first answers after a node dies may tell nothing (the node asked could not reach
    the dead one): the connection is checked again while it stays stuck, not left to the
    SDK's own give-up (about 20 s) and the next listing."""
    events: list[Event] = []
    probes = Probes([None, None, False])
    r = make_rooms(probes, events)
    watcher = StuckWatcher(ROOM)
    r.watchers[ROOM.sid] = watcher  # type: ignore[assignment]
    await r._check_stuck(watcher)  # type: ignore[arg-type]
    assert watcher.left and ROOM.sid not in r.watchers
    assert [(type(e), getattr(e, "reason", None)) for e in events][:2] == [
        (RoomLost, OBSERVER_REJOINING),
        (RoomUnreachable, None),
    ]
    assert r.unreachable == {ROOM.sid: ROOM.name}
    r._stopping = True
    await probes.aclose()


async def test_a_connection_that_recovers_is_no_longer_asked_about() -> None:
    events: list[Event] = []
    probes = Probes([None])
    r = make_rooms(probes, events)
    watcher = StuckWatcher(ROOM)
    r.watchers[ROOM.sid] = watcher  # type: ignore[assignment]
    check = asyncio.create_task(r._check_stuck(watcher))  # type: ignore[arg-type]
    for _ in range(200):
        if probes.asked >= 3:
            break
        await asyncio.sleep(0.005)
    assert probes.asked >= 3  # asked again and again while stuck
    watcher.recovering = False
    await asyncio.wait_for(check, 1)
    assert not watcher.left and events == [] and r.watchers[ROOM.sid] is watcher
    await probes.aclose()
