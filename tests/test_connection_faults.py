"""The observer's own connection faults never close, shorten, double or create anything.

A TCP proxy between the observer and livekit-server's signal/API port is cut while agents
stay, leave and join; livekit-server itself is killed and restarted with agents inside and
after they left. Every participant's own connection goes straight to the server.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from daemon_helpers import Clients, RunningObserver, create_room, describe, list_rooms
from livekit import rtc
from livekit_server import LiveKitServer
from tcp_proxy import TcpProxy

from observer.daemon.watcher import observer_token
from observer.db.schema import SessionRow

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]  # cuts of up to 90 s, then waits

TOLERANCE_S = 0.5


def utcnow() -> datetime:
    return datetime.now(UTC)


def assert_one_row_per_session(rows: list[SessionRow]) -> None:
    counts = Counter(r.participant_sid for r in rows)
    assert all(n == 1 for n in counts.values()), describe(rows)


def assert_bounds_hold(row: SessionRow, left: datetime) -> None:
    """A closed row's recorded leave (or its bounds) contains the real leave."""
    assert row.left_at is not None, describe([row])
    low = row.left_at
    high = row.left_at + timedelta(milliseconds=row.end_uncertainty_ms or 0)
    if row.end_source == "webhook":  # the webhook's time has a resolution of 1 s
        low, high = low.replace(microsecond=0), low.replace(microsecond=0) + timedelta(seconds=1)
    assert low.timestamp() - TOLERANCE_S <= left.timestamp() <= high.timestamp() + TOLERANCE_S, (
        row.end_source,
        row.left_at,
        row.end_uncertainty_ms,
        left,
    )


@pytest.fixture
async def proxy(livekit_server: LiveKitServer):  # type: ignore[no-untyped-def]
    p = TcpProxy(livekit_server.port)
    await p.start()
    yield p
    await p.close()


async def observe_through(
    proxy: TcpProxy, server: LiveKitServer, start_observer, db_url: str, room: str, **extra: str
) -> RunningObserver:
    return await start_observer(
        server, db_url, LIVEKIT_URL=proxy.ws_url, OBSERVER_ROOM_PATTERN=room, **extra
    )


@pytest.mark.parametrize(
    ("cut_s", "processes", "db"),
    [
        pytest.param(2, 0, "sqlite", marks=pytest.mark.compat("signal-cut")),
        (2, 0, "postgresql"),
        (10, 0, "sqlite"),
        (30, 0, "sqlite"),
        (90, 0, "sqlite"),
        (10, 2, "postgresql"),
    ],
    ids=["2s", "2s-postgresql", "10s", "30s", "90s", "10s-room-processes-postgresql"],
)
async def test_signal_cut_changes_no_row(
    cut_s: float,
    processes: int,
    db: str,
    request: pytest.FixtureRequest,
    livekit_server: LiveKitServer,
    tmp_path,  # type: ignore[no-untyped-def]
    start_observer,  # type: ignore[no-untyped-def]
    clients: Clients,
    proxy: TcpProxy,
) -> None:
    if db == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "cut.db")
        db_url = f"sqlite:///{tmp_path / 'cut.db'}"
    else:
        db_url = request.getfixturevalue("pg_db_url")
    room = f"cut-{cut_s}"
    listed = await create_room(livekit_server, room)
    await clients.join(room, "user")
    before = time.time()
    stays = await clients.agent(room, "agent-stays")
    stays_joined = time.time()
    leaves = await clients.agent(room, "agent-leaves")
    obs = await observe_through(
        proxy, livekit_server, start_observer, db_url, room, OBSERVER_ROOM_PROCESSES=str(processes)
    )
    await obs.wait_rows(lambda rows: len(rows) == 2)

    proxy.cut()
    await asyncio.sleep(min(1.0, cut_s / 3))
    await leaves.disconnect()
    left_at = utcnow()
    await asyncio.sleep(min(1.0, cut_s / 3))
    joins = await clients.agent(room, "agent-joins", stream=True)
    joins_joined = time.time()
    await asyncio.sleep(max(0.0, cut_s - 2 * min(1.0, cut_s / 3)))
    proxy.restore()

    def settled(rows: list[SessionRow]) -> bool:
        by = {r.participant_identity: r for r in rows}
        return "agent-joins" in by and by["agent-leaves"].left_at is not None

    await obs.wait_rows(settled, timeout=90)
    await asyncio.sleep(3)  # whatever might still change, would
    await stays.disconnect()
    stays_left = time.time()
    await joins.disconnect()
    rows = await obs.wait_rows(lambda rows: all(r.left_at for r in rows), timeout=20)
    assert len(rows) == 3, describe(rows)
    assert_one_row_per_session(rows)
    by = {r.participant_identity: r for r in rows}
    # lasted through the cut: its full duration, seen live at both ends
    s = by["agent-stays"]
    assert s.end_source == "rtc", describe(rows)
    assert s.left_at is not None
    assert before - TOLERANCE_S <= s.joined_at.timestamp() <= stays_joined + TOLERANCE_S
    assert abs(s.left_at.timestamp() - stays_left) < TOLERANCE_S
    # left while the observer could not see: bounded, never at the cut
    gone = by["agent-leaves"]
    assert gone.end_source in ("reconciled", "webhook"), describe(rows)
    assert_bounds_hold(gone, left_at)
    # joined while the observer could not see: the server's join time
    j = by["agent-joins"]
    assert abs(j.joined_at.timestamp() - joins_joined) < 1.0
    assert j.end_source == "rtc"
    # and the room is the one that was there all along
    assert [r.sid for r in await list_rooms(livekit_server, room)] == [listed.sid]


@pytest.mark.compat("creates-no-room")
async def test_server_refuses_to_create_a_room_for_the_observer(
    livekit_server: LiveKitServer, clients: Clients
) -> None:
    """What the observer's token relies on: an unknown room preset refuses a join that
    would create the room, and changes nothing for a room that exists."""
    token = observer_token(livekit_server.api_key, livekit_server.api_secret, "obs", "absent")
    room = rtc.Room()
    with pytest.raises(rtc.ConnectError):
        await room.connect(livekit_server.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    assert await list_rooms(livekit_server, "absent") == []
    listed = await create_room(livekit_server, "present")
    await clients.join("present", "user")
    token = observer_token(livekit_server.api_key, livekit_server.api_secret, "obs", "present")
    room = rtc.Room()
    await room.connect(livekit_server.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        assert await room.sid == listed.sid
    finally:
        await room.disconnect()


@pytest.mark.parametrize(
    ("agents", "processes"),
    [
        pytest.param("present", 0, marks=pytest.mark.compat("server-restart")),
        pytest.param("gone", 0, marks=pytest.mark.compat("creates-no-room")),
        ("present", 2),
    ],
    ids=["agents-present", "agents-gone", "agents-present-room-processes"],
)
async def test_server_killed_and_restarted(
    agents: str,
    processes: int,
    livekit_server_factory,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
    start_observer,  # type: ignore[no-untyped-def]
) -> None:
    from observer.db import migrate

    server: LiveKitServer = livekit_server_factory(empty_timeout=5, departure_timeout=2)
    db_url = f"sqlite:///{tmp_path / 'restart.db'}"
    migrate.upgrade(db_url)
    c = Clients(server)
    try:
        names = ["kill-a", "kill-b"]
        old_sids = {}
        for name in names:
            old_sids[name] = (await create_room(server, name)).sid
            await c.join(name, f"user-{name}")
            # with an agent's attributes, as livekit-agents gives every agent: a server
            # before 1.9 drops the kind claim when the agent rejoins after the restart
            await c.agent(name, f"agent-{name}", agent_name="restart-desk")
        obs = await start_observer(
            server, db_url, OBSERVER_ROOM_PATTERN="kill-*", OBSERVER_ROOM_PROCESSES=str(processes)
        )
        await obs.wait_rows(lambda rows: len(rows) == 2)
        server.kill()
        killed_at = utcnow()
        if agents == "gone":
            await c.close()
        await asyncio.sleep(2)
        server.start()
        if agents == "present":
            # the participants' SDKs rejoin by name: new rooms, new sids
            rows = await obs.wait_rows(lambda rows: len(rows) == 4, timeout=60)
            rows = await obs.wait_rows(
                lambda rows: sum(r.left_at is None for r in rows) == 2, timeout=30
            )
            await asyncio.sleep(5)
            rows = obs.rows()
            assert len(rows) == 4, describe(rows)
            assert_one_row_per_session(rows)
            new_sids = {r.sid for r in await list_rooms(server, *names)}
            for name in names:
                mine = sorted((r for r in rows if r.room_name == name), key=lambda r: r.joined_at)
                old, new = mine
                assert old.room_sid == old_sids[name] and new.room_sid in new_sids
                assert old.end_source in ("reconciled", "webhook")
                assert old.left_at is not None and old.left_at <= new.joined_at, describe(rows)
                assert_bounds_hold(old, killed_at)
                assert new.left_at is None
        else:
            rows = await obs.wait_rows(lambda rows: all(r.left_at for r in rows), timeout=60)
            await asyncio.sleep(8)  # longer than a room created by accident would show up
            assert await list_rooms(server) == [], "the observer created a room"
            rows = obs.rows()
            assert len(rows) == 2, describe(rows)
            for r in rows:
                assert r.end_source == "reconciled"
                assert_bounds_hold(r, killed_at)
    finally:
        await c.close()


async def test_a_room_process_that_dies_changes_no_row(
    livekit_server: LiveKitServer,
    tmp_path,  # type: ignore[no-untyped-def]
    start_observer,  # type: ignore[no-untyped-def]
    clients: Clients,
) -> None:
    import os
    import signal

    from observer.db import migrate

    db_url = f"sqlite:///{tmp_path / 'shard.db'}"
    migrate.upgrade(db_url)
    names = ["shard-a", "shard-b", "shard-c"]
    agents = {}
    for name in names:
        await create_room(livekit_server, name)
        await clients.join(name, f"user-{name}")
        agents[name] = await clients.agent(name, f"agent-{name}")
    obs = await start_observer(
        livekit_server, db_url, OBSERVER_ROOM_PATTERN="shard-*", OBSERVER_ROOM_PROCESSES="2"
    )
    await obs.wait_rows(lambda rows: len(rows) == 3)
    assert obs.obs.pool is not None
    victim = max(obs.obs.pool.processes, key=lambda p: len(p.watchers))
    held = set(victim.watchers)
    assert held
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    # its rooms are lost, joined again (by a new process), and their sessions simply continue
    deadline = time.monotonic() + 10
    while obs.obs.tracker.watched_count == 3:
        assert time.monotonic() < deadline, "the dead process's rooms were not noticed"
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 30
    while obs.obs.tracker.watched_count < 3:
        assert time.monotonic() < deadline, "rooms not joined again"
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    rows = obs.rows()
    assert len(rows) == 3 and all(r.left_at is None for r in rows), describe(rows)
    for name, room in agents.items():
        await room.disconnect()
        left = time.time()
        rows = await obs.wait_rows(
            lambda rows, name=name: any(r.room_name == name and r.left_at for r in rows)
        )
        (row,) = [r for r in rows if r.room_name == name]
        assert row.end_source == "rtc" and row.left_at is not None, describe(rows)
        assert abs(row.left_at.timestamp() - left) < TOLERANCE_S
    assert len(obs.rows()) == 3
