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
from observer.core.events import Event, RoomUnreachable
from observer.daemon import rooms
from observer.daemon.rooms import Rooms
from observer.livekit_api import Client

pytestmark = pytest.mark.unit

NO_NODE = api.TwirpError("unavailable", "no response from servers", status=503)


class Probes(Client):
    """A room service whose SendData answers come from a script: False is "no live node"."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__(LiveKitSettings("ws://a.invalid:7880", "key", "s" * 32), 1)
        self.answers = answers
        self.asked = 0

    async def call(self, fn: Callable[[api.LiveKitAPI], Coroutine[Any, Any, Any]]) -> Any:
        hosted = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
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
    monkeypatch.setattr(rooms, "UNREACHABLE_CONFIRM_S", 0.01)
    monkeypatch.setattr(rooms, "UNREACHABLE_RETRY_S", 0.01)


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
    r = make_rooms(probes, [])
    assert await r._confirm_unhosted(ROOM) is unhosted
    assert probes.asked == (rooms.UNREACHABLE_PROBES if unhosted else answers.index(True) + 1)
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
