"""The daemon's process stopped (SIGSTOP: a paused VM, a stalled host) while agents come
and go: no row bills time nobody saw, and what was seen live stays exact."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from daemon_helpers import Clients, create_room
from livekit_server import LiveKitServer
from test_restart import start_daemon, wait_rows

from observer.db.reads import SessionFilter
from observer.db.store import Store

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite"), pytest.mark.timeout(240)]

LIVE_S = 0.5  # an `rtc` row's left_at within this of the real leave


@pytest.mark.parametrize("freeze_s", [8, 30])
async def test_a_stopped_observer_bills_only_what_it_saw(
    freeze_s: int,
    livekit_server: LiveKitServer,
    db_url: str,
    clients: Clients,
    tmp_path: Path,
) -> None:
    room = f"freeze-{freeze_s}"
    await create_room(livekit_server, room, empty_timeout=300, departure_timeout=60)
    await clients.join(room, "user-1")
    await clients.agent(room, "stays")
    leaves_inside = await clients.agent(room, "leaves-inside")
    leaves_after = await clients.agent(room, "leaves-after")
    store = Store(db_url)
    log = tmp_path / "observer.log"
    daemon = start_daemon(livekit_server, db_url, log)
    real: dict[str, float] = {}
    try:
        await wait_rows(store, lambda rows: len(rows) == 3, timeout=30)
        await asyncio.sleep(1.5)  # a heartbeat has been written
        daemon.send_signal(signal.SIGSTOP)
        stopped = time.time()
        await asyncio.sleep(2)
        before = time.time()
        await leaves_inside.disconnect()
        real["leaves-inside"] = (before + time.time()) / 2
        await asyncio.sleep(1)
        before = time.time()
        await clients.agent(room, "joins-inside")
        real["joins-inside"] = before
        await asyncio.sleep(max(0.0, stopped + freeze_s - time.time()))
        daemon.send_signal(signal.SIGCONT)

        await wait_rows(
            store,
            lambda rows: len(rows) == 4 and sum(r.left_at is not None for r in rows) == 1,
            timeout=60,
        )
        await asyncio.sleep(2)
        before = time.time()
        await leaves_after.disconnect()
        real["leaves-after"] = (before + time.time()) / 2
        rows = await wait_rows(
            store, lambda rows: sum(r.left_at is not None for r in rows) == 2, timeout=30
        )
        await asyncio.sleep(3)  # anything still to come would be wrong
        rows = sorted(store.sessions(SessionFilter()), key=lambda r: r.id)
    finally:
        daemon.send_signal(signal.SIGCONT)
        daemon.terminate()
        await asyncio.to_thread(daemon.wait, 30)
        store.close()
    by = {r.participant_identity: r for r in rows}
    assert sorted(by) == ["joins-inside", "leaves-after", "leaves-inside", "stays"], rows
    assert len(rows) == 4  # nothing doubled

    assert by["stays"].left_at is None
    joined = by["joins-inside"]
    assert joined.left_at is None
    assert abs(joined.joined_at.timestamp() - real["joins-inside"]) < 1.0

    inside = by["leaves-inside"]
    assert inside.end_source == "reconciled", inside
    assert inside.left_at is not None and inside.end_uncertainty_ms is not None
    lower = inside.left_at.timestamp()
    upper = lower + inside.end_uncertainty_ms / 1000
    # it ends at the last evidence before the stop, never at the resume
    assert lower <= stopped + LIVE_S
    assert lower - LIVE_S <= real["leaves-inside"] <= upper + LIVE_S, (lower, upper, real)

    after = by["leaves-after"]
    assert after.end_source == "rtc" and after.left_at is not None
    assert abs(after.left_at.timestamp() - real["leaves-after"]) <= LIVE_S
    text = log.read_text()
    assert "did not run for a while" in text
    assert "Traceback" not in text
