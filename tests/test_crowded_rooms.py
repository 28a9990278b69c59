"""Rooms joined afresh because their process holds too many sockets change no row.

When the observer's link breaks under many rooms, the rtc SDK reconnects them all at once,
and rooms that gather their network candidates together keep many more sockets, for good
(200 rooms: from 618 open files to 7,650; `bench/bench_reconnect_files.py`). Once the
process has settled, the observer joins each of its rooms afresh, one at a time. Here the
process is made to count as crowded from the start (a 12-room cut does not crowd it for
good), and participants leave and join while their rooms are joined afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from daemon_helpers import Clients, create_room, describe
from livekit import api
from livekit_server import LiveKitServer
from polling import until

from observer.daemon import crowding
from observer.db.schema import SessionRow

pytestmark = [pytest.mark.live, pytest.mark.timeout(180), pytest.mark.databases("sqlite")]

ROOMS = 12
TOLERANCE_S = 1.0


@pytest.mark.parametrize("processes", [0, 1], ids=["in-daemon", "room-process"])
async def test_rooms_joined_afresh_change_no_row(
    processes: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer,  # type: ignore[no-untyped-def]
    clients: Clients,
) -> None:
    monkeypatch.setattr(crowding, "CHECK_S", 0.5)
    monkeypatch.setattr(crowding, "SETTLE_S", 2.0)
    names = [f"crowd-{i}" for i in range(ROOMS)]
    for i, name in enumerate(names):
        await create_room(livekit_server, name)
        await clients.join(name, f"user-{i}")  # agents alone do not keep a room open
    agents = [await clients.agent(name, f"agent-{i}") for i, name in enumerate(names)]
    joined = {f"agent-{i}": time.time() for i in range(ROOMS)}
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_ROOM_PATTERN="crowd-*",
        OBSERVER_ROOM_PROCESSES=str(processes),
    )
    before = await obs.wait_rows(lambda rows: len(rows) == ROOMS, timeout=60)
    caplog.set_level(logging.WARNING, logger="observer.daemon.crowding")
    monkeypatch.setattr(crowding, "FILES_BASE", 0)
    monkeypatch.setattr(crowding, "FILES_PER_ROOM", 0)  # every process counts as crowded

    def passes() -> int:
        return sum("joining them afresh" in r.getMessage() for r in caplog.records)

    await until(passes, timeout_s=30, what=lambda _: caplog.text, interval_s=0.05)
    assert passes() == 1, caplog.text
    # while the rooms are joined afresh, one at a time: a leave and a join
    await agents[-1].disconnect()
    left_at = time.time()
    late = await clients.agent(names[-2], "agent-late")
    late_joined = time.time()

    def gave_up() -> bool:
        return any("after each room was joined afresh" in r.getMessage() for r in caplog.records)

    await until(gave_up, timeout_s=60, what=lambda _: caplog.text)  # one pass, then left alone
    await asyncio.sleep(3)
    assert passes() == 1, caplog.text

    # after the pass every room is watched live: a leave is seen as it happens
    await agents[0].disconnect()
    first_left = time.time()
    await late.disconnect()
    late_left = time.time()

    def settled(rows: list[SessionRow]) -> bool:
        ended = {r.participant_identity for r in rows if r.left_at is not None}
        return {"agent-0", f"agent-{ROOMS - 1}", "agent-late"} <= ended

    rows = await obs.wait_rows(settled, timeout=30)
    by = {r.participant_identity: r for r in rows}
    assert len(rows) == ROOMS + 1 and len(by) == ROOMS + 1, describe(rows)
    first = {r.participant_identity: r for r in before}
    for identity, row in by.items():
        if identity != "agent-late":  # as first written: one row each, the same join
            assert row.joined_at == first[identity].joined_at, describe(rows)
            assert abs(row.joined_at.timestamp() - joined[identity]) < 30, describe(rows)
    open_ = [r for r in rows if r.left_at is None]
    assert len(open_) == ROOMS - 2, describe(rows)
    for identity, at in (("agent-0", first_left), ("agent-late", late_left)):
        row = by[identity]
        assert row.end_source == "rtc", describe(rows)
        assert row.left_at is not None
        assert abs(row.left_at.timestamp() - at) < TOLERANCE_S, describe(rows)
    # the leave during the pass: bounded around the real leave
    gone = by[f"agent-{ROOMS - 1}"]
    assert gone.left_at is not None
    high = gone.left_at.timestamp() + (gone.end_uncertainty_ms or 0) / 1000
    assert gone.left_at.timestamp() - TOLERANCE_S <= left_at <= high + TOLERANCE_S, describe(rows)
    assert abs(by["agent-late"].joined_at.timestamp() - late_joined) < TOLERANCE_S

    # the metric the open-files alert reads for room processes
    held = obs.obs.metrics.value("observer_room_process_open_fds_max")
    if not processes:
        assert held == 0
    else:
        pool = obs.obs.pool
        assert pool is not None
        (pid,) = [p.proc.pid for p in pool.processes if p.alive and p.proc is not None]
        files = crowding.open_files(pid)
        assert files is not None and files > 2 * ROOMS
        assert abs(held - files) <= 10, (held, files)


async def test_a_room_reborn_during_its_renewal_is_let_go_and_its_successor_watched(
    caplog: pytest.LogCaptureFixture,
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer,  # type: ignore[no-untyped-def]
    clients: Clients,
) -> None:
    """While a room is joined afresh, it ends and a client creates a new room of its name:
    the fresh join lands in the new room. The old room is reported lost (its agent's row
    closes), the fresh connection is left, and the new room is joined from the next
    listing, where its agent gets its own row."""
    name = "reborn"
    await create_room(livekit_server, name)
    await clients.join(name, "user-old")
    await clients.agent(name, "agent-old")
    obs = await start_observer(livekit_server, db_url, OBSERVER_ROOM_PATTERN=name)
    await obs.wait_rows(lambda rows: len(rows) == 1)
    rooms = obs.obs.rooms
    (watcher,) = rooms.watchers.values()
    old_sid = watcher.room_sid
    real_connect = watcher._connect
    # listings that would see the rebirth before the fresh join lands are let pass unread
    # (LiveKit's listing is a poll: it can miss the ~100 ms a rebirth takes)
    real_poll = rooms.poll_once
    reading = asyncio.Event()
    reading.set()

    def poll_once(listed, listed_at=None):  # type: ignore[no-untyped-def]
        if reading.is_set():
            real_poll(listed, listed_at)

    async def connect_after_rebirth(*args):  # type: ignore[no-untyped-def]
        reading.clear()
        lkapi = livekit_server.api_client()
        try:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
        finally:
            await lkapi.aclose()
        await create_room(livekit_server, name)
        return await real_connect(*args)

    rooms.poll_once = poll_once
    watcher._connect = connect_after_rebirth
    caplog.set_level(logging.WARNING, logger="observer.daemon.watcher")
    await rooms._renew(watcher)
    why = [getattr(r, "error", "") for r in caplog.records]
    assert any(w.startswith("the room now has another sid") for w in why), why
    reading.set()
    await clients.join(name, "user-new")
    await clients.agent(name, "agent-new")

    def settled(rows: list[SessionRow]) -> bool:
        by = {r.participant_identity: r for r in rows}
        return "agent-new" in by and by["agent-old"].left_at is not None

    rows = await obs.wait_rows(settled, timeout=30)
    by = {r.participant_identity: r for r in rows}
    assert len(rows) == 2, describe(rows)
    assert by["agent-old"].room_sid == old_sid, describe(rows)
    assert by["agent-new"].room_sid != old_sid and by["agent-new"].left_at is None
    # one observer connection in the new room: the renewal's was left
    lkapi = livekit_server.api_client()
    try:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=name))
    finally:
        await lkapi.aclose()
    hidden = [p.identity for p in listed.participants if p.identity.startswith("lk-observer-")]
    assert len(hidden) == 1, [p.identity for p in listed.participants]
