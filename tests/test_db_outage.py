"""PostgreSQL stopped for 30 s under a running daemon: nothing lost, nothing doubled, and
nothing held open once it is back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from daemon_helpers import Clients, RunningObserver, create_room
from livekit_server import LiveKitServer
from open_files import connections_to, open_files
from polling import until
from postgres_server import PostgresServer
from sqlalchemy.pool import QueuePool

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]  # 30 s and 5 s outages, then waits

# Descriptors that may be open after an outage and not during it, beside the database pool's:
# the keep-alive connection to LiveKit's API (room listing) that polling reopens.
SLACK = 2


async def test_database_outage_is_survived(
    livekit_server: LiveKitServer,
    postgres_server: PostgresServer,
    pg_db_url: str,
    start_observer,
    clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_room(livekit_server, "outage")
    await clients.join("outage", "user-1")
    before = await clients.agent("outage", "agent-before")
    obs = await start_observer(livekit_server, pg_db_url)
    await obs.wait_rows(lambda rows: len(rows) == 1)
    files_before = open_files()

    await asyncio.to_thread(postgres_server.stop)
    down_at = time.monotonic()
    try:
        # the daemon keeps watching while the database is away
        during = await clients.agent("outage", "agent-during")
        deadline = time.monotonic() + 5
        while not any(s.identity == "agent-during" for s in obs.obs.tracker.open_sessions.values()):
            assert time.monotonic() < deadline, (
                "events were not handled while the database was down"
            )
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        await before.disconnect()
        await during.disconnect()
        short = await clients.agent("outage", "agent-short")
        await asyncio.sleep(1)
        await short.disconnect()
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert obs.obs.writer.pending > 0
        # Every client has left; the observer holds its room and no database connection.
        files_down = open_files()
        assert connections_to(postgres_server.port) == 0
        assert files_down <= files_before, "descriptors opened while the database was away"
    finally:
        await asyncio.to_thread(postgres_server.start)

    rows = await obs.wait_rows(
        lambda rows: len(rows) == 3 and all(r.left_at for r in rows), timeout=30
    )
    assert sorted(r.participant_identity for r in rows) == [
        "agent-before",
        "agent-during",
        "agent-short",
    ]
    assert {r.disconnect_reason for r in rows} == {"CLIENT_INITIATED"}
    assert {r.end_source for r in rows} == {"rtc"}
    short_row = next(r for r in rows if r.participant_identity == "agent-short")
    assert short_row.duration_ms is not None and 500 < short_row.duration_ms < 2500
    # the writer logs its recovery just after the commit that made the rows visible
    deadline = time.monotonic() + 5
    while "database available again" not in [r.getMessage() for r in caplog.records]:
        assert time.monotonic() < deadline, "recovery not logged"
        await asyncio.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records]
    assert "database write failed; retrying" in messages
    assert not obs.task.done()
    m = obs.obs.metrics
    assert m.value("observer_db_errors_total") >= 1
    assert m.value("observer_db_retries_total") >= 1
    assert m.value("observer_db_pending_ops") == 0

    # Back, it holds what it held while the database was away and the pool's connections
    # (at most `store.connections`: no overflow), no more: nothing of the failed attempts
    # stays open, and a second outage adds nothing.
    await until(
        lambda: held(postgres_server.port, obs),
        lambda h: h.to_db <= h.pooled and h.others <= files_down + SLACK,
        timeout_s=10,
        what=lambda h: f"{h}; {files_down} open while the database was away",
    )
    retries = m.value("observer_db_retries_total")
    await asyncio.to_thread(postgres_server.stop)
    try:
        again = await clients.agent("outage", "agent-again")
        await asyncio.sleep(1)
        await again.disconnect()
        await until(lambda: m.value("observer_db_retries_total") > retries, timeout_s=10)
    finally:
        await asyncio.to_thread(postgres_server.start)
    await obs.wait_rows(lambda rows: len(rows) == 4 and all(r.left_at for r in rows), timeout=30)
    await until(
        lambda: held(postgres_server.port, obs),
        lambda h: h.to_db <= h.pooled and h.others <= files_down + SLACK,
        timeout_s=10,
        what=lambda h: f"{h}; {files_down} open while the database was away",
    )


@dataclass(frozen=True)
class Held:
    to_db: int  # this process's connections to the database
    pooled: int  # the connections its store's pool holds
    others: int  # every other open descriptor


def held(db_port: int, obs: RunningObserver) -> Held:
    pool = obs.store.engine.pool
    assert isinstance(pool, QueuePool)
    to_db = connections_to(db_port)
    return Held(to_db, pool.checkedin() + pool.checkedout(), open_files() - to_db)


async def test_full_buffer_stops_the_daemon_with_exit_code_3(
    livekit_server: LiveKitServer,
    postgres_server: PostgresServer,
    pg_db_url: str,
    start_observer,
    clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_room(livekit_server, "overflow")
    await clients.join("overflow", "user-1")
    obs = await start_observer(livekit_server, pg_db_url, OBSERVER_QUEUE_MAX="10")
    await obs.wait_watching("overflow")
    await asyncio.to_thread(postgres_server.stop)
    try:
        for i in range(12):  # more changes than the buffer may hold while the database is away
            await clients.agent("overflow", f"agent-{i}", audio=False)
        code = await asyncio.wait_for(obs.task, 30)
    finally:
        await asyncio.to_thread(postgres_server.start)
    assert code == 3
    assert "database buffer full; stopping so that nothing is silently lost" in [
        r.getMessage() for r in caplog.records
    ]
