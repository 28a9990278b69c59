"""PostgreSQL stopped for 30 s under a running daemon: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import time

import pytest
from daemon_helpers import Clients, create_room
from livekit_server import LiveKitServer
from postgres_server import PostgresServer

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]  # a 30 s outage, then waits


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
