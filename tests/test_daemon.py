"""The daemon against a real livekit-server: session rows under what really happens."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import Clients, create_room
from livekit import api
from livekit_server import LiveKitServer

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


@pytest.mark.compat("leave-reason")
async def test_agent_join_and_leave_is_recorded_accurately(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "basic")
    await clients.join("basic", "user-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching("basic")

    connecting = time.time()
    agent = await clients.agent("basic", "agent-1", agent_name="support-bot")
    connected = time.time()
    (row,) = await obs.wait_rows(lambda rows: len(rows) == 1)
    assert row.left_at is None and row.participant_kind == "agent"
    assert row.agent_name == "support-bot"
    assert row.participant_sid == agent.local_participant.sid

    await asyncio.sleep(2.0)
    leaving = time.time()
    await agent.disconnect()
    left = time.time()
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert row.disconnect_reason == "CLIENT_INITIATED"
    assert row.end_source == "rtc"
    # the server's join and leave lie somewhere inside the client's connect and disconnect calls
    shortest_ms = (leaving - connected) * 1000
    longest_ms = (left - connecting) * 1000
    assert row.duration_ms is not None
    assert shortest_ms - 300 < row.duration_ms < longest_ms + 300, (
        row.duration_ms,
        shortest_ms,
        longest_ms,
    )
    # the user is not an agent: not recorded
    assert [r.participant_identity for r in obs.rows()] == ["agent-1"]


@pytest.mark.compat("join-time")
async def test_agent_present_before_observer_gets_its_true_start(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "early")
    await clients.join("early", "user-1")
    connecting = time.time()
    agent = await clients.agent("early", "agent-early")
    connected = time.time()
    await asyncio.sleep(1.5)
    obs = await start_observer(livekit_server, db_url)
    (row,) = await obs.wait_rows(lambda rows: len(rows) == 1)
    # the server's join time, inside the agent's connect (the observer came 1.5 s later)
    assert connecting - 0.05 <= row.joined_at.timestamp() <= connected + 0.05
    assert row.created_at.timestamp() - row.joined_at.timestamp() > 1.0
    await agent.disconnect()
    await obs.wait_rows(lambda rows: rows[0].left_at is not None)


@pytest.mark.compat("leave-reason")
async def test_several_agents_and_same_identity_rejoining(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "multi")
    await clients.join("multi", "user-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching("multi")
    a1 = await clients.agent("multi", "agent-a")
    await clients.agent("multi", "agent-b")
    await obs.wait_rows(lambda rows: len(rows) == 2)

    # same identity joins again: new sid, the old session ends, nothing doubled
    a1_again = await clients.agent("multi", "agent-a")
    assert a1_again.local_participant.sid != a1.local_participant.sid
    rows = await obs.wait_rows(lambda rows: len(rows) == 3 and rows[0].left_at is not None)
    old, b, new = rows
    assert old.participant_sid == a1.local_participant.sid
    assert old.disconnect_reason == "DUPLICATE_IDENTITY"
    assert new.participant_sid == a1_again.local_participant.sid and new.left_at is None
    assert b.left_at is None
    assert old.left_at is not None
    assert abs((old.left_at - new.joined_at).total_seconds()) < 1.0


async def test_room_deleted_with_agent_inside(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "doomed")
    await clients.join("doomed", "user-1")
    await clients.agent("doomed", "agent-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_rows(lambda rows: len(rows) == 1)
    lkapi = livekit_server.api_client()
    try:
        deleted_at = time.time()
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="doomed"))
    finally:
        await lkapi.aclose()
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert row.disconnect_reason == "ROOM_DELETED"
    assert row.end_source in ("room_closed", "rtc")
    assert row.left_at is not None and abs(row.left_at.timestamp() - deleted_at) < 1.0
    # never rejoined: the room stays gone
    await asyncio.sleep(1.5)
    lkapi = livekit_server.api_client()
    try:
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["doomed"]))
    finally:
        await lkapi.aclose()
    assert list(rooms.rooms) == []


@pytest.mark.compat("crash-leave")
async def test_killed_agent_closes_when_server_announces_it(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    await create_room(livekit_server, "crash")
    await clients.join("crash", "user-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching("crash")
    token = livekit_server.token("agent-crash", "crash", kind="agent")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parent / "agent_process.py"),
        livekit_server.ws_url,
        token,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"ready")
        await obs.wait_rows(lambda rows: len(rows) == 1)
        proc.kill()
        killed_at = time.time()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None, timeout=60)
    # the server's reason for a peer connection that failed: STATE_MISMATCH before 1.9
    # (livekit/livekit#3591 mapped it to CONNECTION_TIMEOUT)
    timeout = "CONNECTION_TIMEOUT" if livekit_server.version >= (1, 9) else "STATE_MISMATCH"
    assert row.disconnect_reason == timeout
    assert row.end_source == "rtc"
    assert row.left_at is not None
    # announced by the server some 15-25 s after the process died, not left open
    assert 5 < row.left_at.timestamp() - killed_at < 45


@pytest.mark.compat("leave-reason")
async def test_room_closed_by_timeout_with_agent_inside(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    server = livekit_server_factory(empty_timeout=30, departure_timeout=1)
    c = Clients(server)
    try:
        await create_room(server, "timeout")
        user = await c.join("timeout", "user-1")
        await c.agent("timeout", "agent-1")
        obs = await start_observer(server, db_url)
        await obs.wait_rows(lambda rows: len(rows) == 1)
        await user.disconnect()
        left = time.time()
        (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
        assert row.disconnect_reason == "ROOM_CLOSED"
        assert row.left_at is not None
        # the room closes on the server's departure timer (1 s, checked periodically)
        assert 0.0 < row.left_at.timestamp() - left < 3.0
    finally:
        await c.close()


async def test_many_rooms_at_once(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    names = [f"many-{i:02d}" for i in range(20)]
    for name in names:
        await create_room(livekit_server, name)
        await clients.join(name, "user")
    obs = await start_observer(livekit_server, db_url, OBSERVER_ROOM_PATTERN="many-*")
    agents = [await clients.agent(name, f"agent-{i}") for i, name in enumerate(names)]
    agents += [await clients.agent(name, f"second-{i}") for i, name in enumerate(names[:5])]
    rows = await obs.wait_rows(lambda rows: len(rows) == 25, timeout=30)
    assert {r.room_name for r in rows} == set(names)
    await asyncio.gather(*(a.disconnect() for a in agents))
    rows = await obs.wait_rows(lambda rows: all(r.left_at for r in rows), timeout=30)
    assert len(rows) == 25
    # a client whose connection the server already dropped under load is CONNECTION_TIMEOUT
    assert {r.disconnect_reason for r in rows} <= {"CLIENT_INITIATED", "CONNECTION_TIMEOUT"}
    assert {r.end_source for r in rows} == {"rtc"}
    assert len({(r.room_sid, r.participant_sid) for r in rows}) == 25
