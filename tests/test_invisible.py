"""With the observer inside, a room behaves exactly as it would without it."""

from __future__ import annotations

import asyncio
import time

import pytest
from daemon_helpers import Clients, create_room, list_rooms
from livekit import api, rtc
from livekit_server import LiveKitServer
from polling import task_stacks, until

from observer.core.discovery import ListedRoom

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


async def wait_gone(server: LiveKitServer, names: list[str], timeout: float) -> dict[str, float]:
    """Poll ListRooms; return when each room disappeared (time.monotonic())."""
    gone: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(gone) < len(names) and time.monotonic() < deadline:
        live = {r.name for r in await list_rooms(server)}
        for n in names:
            if n not in live and n not in gone:
                gone[n] = time.monotonic()
        await asyncio.sleep(0.1)
    assert len(gone) == len(names), f"rooms still open: {set(names) - set(gone)}"
    return gone


async def hidden_observer_in(server: LiveKitServer, room: str) -> api.ParticipantInfo:
    lkapi = server.api_client()
    try:
        resp = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    (p,) = [p for p in resp.participants if p.identity.startswith("lk-observer-")]
    return p


@pytest.mark.compat("invisible")
async def test_room_closes_by_departure_timeout_as_without_observer(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    server = livekit_server_factory(empty_timeout=30, departure_timeout=2)
    clients = Clients(server)
    try:
        for name in ("watched-dep", "plain-dep"):
            await create_room(server, name)
            await clients.join(name, f"user-{name}")
        obs = await start_observer(server, db_url, OBSERVER_ROOM_PATTERN="watched-*")
        await obs.wait_watching("watched-dep")
        me = await hidden_observer_in(server, "watched-dep")
        assert me.permission.hidden and me.permission.agent
        assert not me.permission.can_publish and not me.permission.can_subscribe
        assert not me.permission.can_publish_data and not me.permission.recorder
        start = time.monotonic()
        await asyncio.gather(*(r.disconnect() for r in clients.rooms))
        gone = await wait_gone(server, ["watched-dep", "plain-dep"], timeout=20)
        # Not held open by the observer. livekit-server closes a room on a 1 s ticker once
        # whole seconds since its last leave (`time.Now().Unix() - LastLeftAt()`) reach the
        # timeout: two leaves a few ms apart either side of a second's edge close a tick
        # apart, and the listing is polled every 0.1 s.
        assert abs(gone["watched-dep"] - gone["plain-dep"]) < 1.5, gone
        assert gone["watched-dep"] - start < 2 + 2.5  # departure_timeout, not held open
    finally:
        await clients.close()


@pytest.mark.compat("invisible")
async def test_room_closes_by_empty_timeout_as_without_observer(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    server = livekit_server_factory(empty_timeout=3, departure_timeout=1)
    for name in ("watched-empty", "plain-empty"):
        await create_room(server, name)
    start = time.monotonic()
    obs = await start_observer(server, db_url, OBSERVER_ROOM_PATTERN="watched-*")
    await obs.wait_watching("watched-empty")
    gone = await wait_gone(server, ["watched-empty", "plain-empty"], timeout=20)
    # Not held open by the observer. livekit-server closes idle rooms on a ticker, so two
    # rooms created together may close a tick apart either way (1.05 s seen once).
    assert gone["watched-empty"] - gone["plain-empty"] < 1.0, gone
    assert gone["plain-empty"] - gone["watched-empty"] < 1.5, gone
    assert gone["watched-empty"] - start < 3 + 2.5


@pytest.mark.compat("invisible")
async def test_not_counted_toward_max_participants_and_not_recording(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "tiny", max_participants=1)
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching("tiny")
    await hidden_observer_in(livekit_server, "tiny")
    user = await clients.join("tiny", "the-only-user")  # would be refused if we counted
    assert user.isconnected()
    (room,) = await list_rooms(livekit_server, "tiny")
    assert room.active_recording is False


async def test_control_hidden_alone_counts_toward_max_participants(
    livekit_server: LiveKitServer, clients: Clients
) -> None:
    """Why the observer carries the agent grant: `hidden` alone does count."""
    await create_room(livekit_server, "tiny-control", max_participants=1)
    hidden = rtc.Room()
    token = livekit_server.token("hidden-only", "tiny-control", hidden=True)
    await hidden.connect(livekit_server.ws_url, token)
    clients.rooms.append(hidden)
    with pytest.raises(rtc.ConnectError):
        await clients.join("tiny-control", "refused-user")


@pytest.mark.compat("creates-no-room")
async def test_never_creates_a_room(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    listed = await create_room(livekit_server, "ghost")
    lkapi = livekit_server.api_client()
    try:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="ghost"))
    finally:
        await lkapi.aclose()
    # The observer lists rooms once, at its start: a later listing of its own (without
    # "ghost") would drop the join below before it starts, rightly, as a room no longer listed.
    obs = await start_observer(
        livekit_server, db_url, OBSERVER_ROOM_PATTERN="ghost", OBSERVER_POLL_INTERVAL_S="3600"
    )
    await until(
        lambda: obs.obs.rooms is not None and obs.obs.rooms.listing_ok,
        timeout_s=30,
        what="the observer's first listing",
    )
    assert obs.obs.rooms is not None
    # a listing said "ghost" was live, but it ended before the observer got there
    obs.obs.rooms.poll_once([ListedRoom(listed.sid, "ghost")])
    rooms = obs.obs.rooms
    await until(
        lambda: listed.sid in rooms.ended,
        timeout_s=30,  # a join under load; no bound of the observer's
        what=lambda _: "observer did not notice the room was not the listed one" + task_stacks(),
        interval_s=0.05,
    )
    await asyncio.sleep(0.5)
    assert await list_rooms(livekit_server, "ghost") == []
    assert obs.rows() == []
    # and it is not tried again
    obs.obs.rooms.poll_once([ListedRoom(listed.sid, "ghost")])
    assert listed.sid not in obs.obs.rooms.watchers
