"""Observers sharing an OBSERVER_ID, and an observer put out of a room, against a real
livekit-server; `observer run` refusing an id a live process holds, on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemon_helpers import Clients, RunningObserver, create_room, describe
from livekit import api
from livekit_server import LiveKitServer

from observer.daemon.identity import IDENTITY_PREFIX
from observer.db import fleet as fleet_db
from observer.db import migrate
from observer.db.store import Store

pytestmark = pytest.mark.live


def lost(obs: RunningObserver) -> dict[str, float]:
    """observer_rooms_lost_total by reason."""
    return {
        s.labels["reason"]: s.value
        for metric in obs.obs.metrics.registry.collect()
        if metric.name == "observer_rooms_lost"
        for s in metric.samples
        if s.name == "observer_rooms_lost_total"
    }


async def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_put_out_of_a_room_is_an_alarm_and_closes_nothing(
    livekit_server: LiveKitServer,
    tmp_path: Path,
    start_observer,
    clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Removed by a participant joining with its identity, then by the server's API: each
    time an error naming the cause and the room, a count, the room watched again from the
    next listing, and the agent's session untouched until its own leave."""
    db = f"sqlite:///{tmp_path / 'removed.db'}"
    migrate.upgrade(db)
    await create_room(livekit_server, "removed")
    await clients.join("removed", "user-1")
    obs = await start_observer(livekit_server, db, OBSERVER_ROOM_PATTERN="removed")
    await obs.wait_watching("removed")
    agent = await clients.agent("removed", "agent-stays")
    await obs.wait_rows(lambda rows: len(rows) == 1)

    def errors() -> list[logging.LogRecord]:
        # the rtc SDK logs errors of its own (data channels closing) under "livekit"
        return [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and r.name.startswith("observer")
        ]

    with caplog.at_level(logging.INFO, logger="observer"):
        impostor = await clients.join("removed", obs.obs.identity)  # same identity: newest wins
        await wait_for(lambda: len(errors()) >= 1, 10, "no error for DUPLICATE_IDENTITY")
        await impostor.disconnect()
        await obs.wait_watching("removed")
        lkapi = livekit_server.api_client()
        reconnects = obs.obs.metrics.reconnects._value.get()
        try:
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room="removed", identity=obs.obs.identity)
            )
        finally:
            await lkapi.aclose()
        # The server sends the leave (PARTICIPANT_REMOVED) and closes the signal connection.
        # Under load the SDK may see the close first: it tries to resume, the server answers
        # with a leave asking for a reconnect, and the SDK rejoins in full (a removal bans no
        # one). Either way the observer is in the room again and the row untouched.
        await wait_for(
            lambda: (
                any(r.reason == "PARTICIPANT_REMOVED" for r in errors())  # type: ignore[attr-defined]
                or obs.obs.metrics.reconnects._value.get() > reconnects
            ),
            10,
            "no error for PARTICIPANT_REMOVED, nor a reconnect",
        )
        await obs.wait_watching("removed")
    put_out = [(r.getMessage(), r.room, r.reason) for r in errors()]  # type: ignore[attr-defined]
    removed = ["PARTICIPANT_REMOVED"] if put_out and put_out[-1][2] == "PARTICIPANT_REMOVED" else []
    # Under load the impostor's own connect may retry (the SDK does, up to 3 times) after the
    # observer came back, putting it out once more: each time is a line of its own.
    duplicates = len(put_out) - len(removed)
    assert duplicates >= 1
    assert put_out == [
        ("put out of a room; watching it again from the next listing", "removed", reason)
        for reason in ["DUPLICATE_IDENTITY"] * duplicates + removed
    ]
    assert lost(obs) == {"DUPLICATE_IDENTITY": float(duplicates)} | {r: 1.0 for r in removed}
    (row,) = obs.rows()
    assert row.left_at is None, describe([row])

    leaving = time.time()
    await agent.disconnect()
    left = time.time()
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert (row.end_source, row.disconnect_reason) == ("rtc", "CLIENT_INITIATED")
    assert row.left_at is not None
    assert leaving - 0.1 < row.left_at.timestamp() < left + 0.5


@dataclass
class Stay:
    identity: str
    room: str
    sid: str = ""
    connecting: float = 0.0
    connected: float = 0.0
    leaving: float = 0.0
    left: float = 0.0


async def test_two_observers_with_one_id_both_record_every_stay_exactly(
    livekit_server: LiveKitServer, tmp_path: Path, start_observer, clients: Clients
) -> None:
    """Same OBSERVER_ID (the hostname of two observers on one host, say), separate SQLite
    files, agents coming and going for a few seconds each: both stay in every room (as the
    identity of their own run, a room process's connections included), and each file holds
    every stay as the agents' own clocks measured it."""
    rooms = ["twin-1", "twin-2"]
    for room in rooms:
        await create_room(livekit_server, room)
        await clients.join(room, f"user-{room}")
    observers = []
    for name, processes in (("a", "0"), ("b", "1")):  # b's rooms in a room process
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        migrate.upgrade(db)
        observers.append(
            await start_observer(
                livekit_server,
                db,
                OBSERVER_ROOM_PATTERN="twin-*",
                OBSERVER_ROOM_PROCESSES=processes,
            )
        )
    for obs in observers:
        for room in rooms:
            await obs.wait_watching(room)

    stays = [Stay(f"churn-{i}", rooms[i % 2]) for i in range(6)]

    async def come_and_go(stay: Stay, delay_s: float, stay_s: float) -> None:
        await asyncio.sleep(delay_s)
        stay.connecting = time.time()
        agent = await clients.agent(stay.room, stay.identity)
        stay.connected = time.time()
        stay.sid = agent.local_participant.sid
        await asyncio.sleep(stay_s)
        stay.leaving = time.time()
        await agent.disconnect()
        stay.left = time.time()

    await asyncio.gather(*(come_and_go(s, 0.7 * i, 4.0 + 0.3 * i) for i, s in enumerate(stays)))

    lkapi = livekit_server.api_client()
    try:
        for room in rooms:
            resp = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            inside = sorted(p.identity for p in resp.participants if p.permission.hidden)
            assert sorted(o.obs.identity for o in observers) == inside
    finally:
        await lkapi.aclose()
    assert all(i.startswith(f"{IDENTITY_PREFIX}test-observer-") for i in inside)

    for obs in observers:
        rows = await obs.wait_rows(lambda rows: len(rows) == 6 and all(r.left_at for r in rows))
        assert lost(obs) == {}  # never put out of a room
        by_sid = {r.participant_sid: r for r in rows}
        assert sorted(by_sid) == sorted(s.sid for s in stays)
        for s in stays:
            row = by_sid[s.sid]
            assert (row.end_source, row.disconnect_reason, row.end_uncertainty_ms) == (
                "rtc",
                "CLIENT_INITIATED",
                None,
            ), describe([row])
            assert row.left_at is not None and row.duration_ms is not None
            assert s.connecting - 0.1 < row.joined_at.timestamp() < s.connected + 0.1
            assert s.leaving - 0.1 < row.left_at.timestamp() < s.left + 0.5
            # the join lands while connect() runs, the leave while disconnect() runs: the
            # duration lies between the shortest and the longest stay those calls allow
            shortest_ms = (s.leaving - s.connected - 0.2) * 1000
            longest_ms = (s.left - s.connecting + 0.6) * 1000
            assert shortest_ms < row.duration_ms < longest_ms, (row.duration_ms, s)
    assert "DUPLICATE_IDENTITY" not in "".join(
        line
        for line in livekit_server.log_path.read_text(errors="replace").splitlines()
        if "twin-" in line
    )


# ---- one running observer per OBSERVER_ID, as processes on PostgreSQL -----------------------

FAILOVER_S = 10.0  # beats every 2 s, dead after 5 s: longer than a loaded start-up


def run_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    env.update(
        # the id is held in the database; LiveKit is not needed for that (nothing listens)
        LIVEKIT_URL="ws://127.0.0.1:9",
        LIVEKIT_API_KEY="k",
        LIVEKIT_API_SECRET="s",
        OBSERVER_DATABASE_URL=db_url,
        OBSERVER_ID="twin",
        OBSERVER_FAILOVER_S=str(FAILOVER_S),
        OBSERVER_HTTP_ADDR="off",
    )
    return env


def start(db_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "observer", "run"],
            env=run_env(db_url),
            stdout=out,
            stderr=out,
            cwd=log.parent,
        )


def wait_holder(store: Store, proc: subprocess.Popen[bytes], timeout: float) -> fleet_db.Member:
    deadline = time.monotonic() + timeout
    while True:
        row = fleet_db.holder(store.engine, "twin")
        if row is not None and row.pid == proc.pid:
            return row
        assert proc.poll() is None, f"exited {proc.returncode}"
        assert time.monotonic() < deadline, f"pid {proc.pid} never held the id; row: {row}"
        time.sleep(0.05)


def test_a_second_run_with_a_live_id_refuses_and_a_restart_takes_over(
    pg_url: str, tmp_path: Path
) -> None:
    migrate.upgrade(pg_url)
    store = Store(pg_url)
    log = tmp_path / "observers.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = start(pg_url, log)
        procs.append(first)
        wait_holder(store, first, 30)

        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "observer", "run"],
            env=run_env(pg_url),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("observer: OBSERVER_ID 'twin' is held by another live observer")
        assert f"pid {first.pid}" in lines[0]
        assert time.monotonic() - t0 < 15
        assert first.poll() is None
        held = fleet_db.holder(store.engine, "twin")
        assert held is not None and held.pid == first.pid

        first.send_signal(signal.SIGTERM)  # a clean stop gives the id back
        assert first.wait(30) == 0
        after_stop = start(pg_url, log)
        procs.append(after_stop)
        wait_holder(store, after_stop, 30)

        after_stop.send_signal(signal.SIGKILL)  # its row stays, with a current heartbeat
        after_stop.wait(10)
        killed = fleet_db.holder(store.engine, "twin")
        assert killed is not None and killed.pid == after_stop.pid
        restarted = start(pg_url, log)
        procs.append(restarted)
        row = wait_holder(store, restarted, 30)
        # taken over once the killed run's heartbeat was stale, not before
        stale_for_s = (row.started_at - killed.heartbeat_at).total_seconds()
        # (the upper bound leaves room for the start of a Python process on a loaded machine,
        # and stays under a whole OBSERVER_FAILOVER_S)
        assert FAILOVER_S / 2 < stale_for_s < FAILOVER_S / 2 + 4, stale_for_s
        time.sleep(FAILOVER_S / 2)
        assert restarted.poll() is None
        row = fleet_db.holder(store.engine, "twin")
        assert row is not None and row.pid == restarted.pid
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        store.close()
    assert "Traceback" not in log.read_text()


async def test_a_run_whose_id_another_run_took_over_stops_with_exit_2(
    livekit_server: LiveKitServer, pg_url: str, start_observer, caplog: pytest.LogCaptureFixture
) -> None:
    """Its heartbeat had gone stale (a frozen process, say) and another run took the id: the
    next heartbeat tells it, and it stops without flipping the row back or deleting it."""
    migrate.upgrade(pg_url)
    obs = await start_observer(livekit_server, pg_url, OBSERVER_FAILOVER_S="2")
    store = obs.store

    def held_by(run_id: str) -> bool:
        row = fleet_db.holder(store.engine, "test-observer")
        return row is not None and row.run_id == run_id

    await wait_for(lambda: held_by(obs.obs.run_id), 15, "the observer never held its id")
    assert fleet_db.take(
        store.engine,
        observer_id="test-observer",
        run_id="another-run",
        host="elsewhere",
        pid=1,
        replacing=obs.obs.run_id,
        now=datetime.now(UTC),
    )
    assert await asyncio.wait_for(obs.task, 20) == 2
    assert held_by("another-run")
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name.startswith("observer")
    ]
    assert said == ["another observer process took over this OBSERVER_ID; stopping"]
