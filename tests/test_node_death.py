"""A LiveKit node dies: its rooms stay listed for good, with their participants, although
no live node hosts them. The observer recognises such a room, ends its sessions at their
last evidence, says so (log, metric, `observer check`), and `observer reconcile` settles
them when no daemon does."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Clients
from livekit import api
from livekit_server import LiveKitServer
from polling import until
from test_cluster import cluster as cluster  # the two-node fixture
from test_cluster import node_id

from observer.cli import main
from observer.db import migrate
from observer.db.reads import SessionFilter
from observer.db.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("crowd")]  # see test_cluster


async def room_on(node: LiveKitServer, via: LiveKitServer, name: str) -> None:
    lk = via.api_client()
    try:
        await lk.room.create_room(
            api.CreateRoomRequest(name=name, node_id=node_id(node), empty_timeout=300)
        )
    finally:
        await lk.aclose()


async def test_rooms_of_a_dead_node_are_settled(
    cluster: tuple[LiveKitServer, LiveKitServer],
    sqlite_url: str,
    start_observer: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    a, b = cluster
    via_a, via_b = Clients(a), Clients(b)
    try:
        for name in ("orphan-daemon", "orphan-reconcile"):
            await room_on(a, b, name)
            await via_a.join(name, f"user-{name}")
            await via_a.agent(name, f"agent-{name}")
        await room_on(b, b, "alive")
        await via_b.join("alive", "user-alive")
        await via_b.agent("alive", "agent-alive")
        # one observer opens every row in one database, then stops (its rows stay open):
        # `observer reconcile` settles those; a daemon runs on in another
        first = await start_observer(b, sqlite_url, LIVEKIT_URL=b.ws_url)
        await first.wait_rows(lambda rows: len(rows) == 3, timeout=60)
        assert await first.stop() == 0
        daemon_url = f"sqlite:///{tmp_path / 'daemon.db'}"
        migrate.upgrade(daemon_url)
        obs = await start_observer(b, daemon_url, LIVEKIT_URL=b.ws_url)
        await obs.wait_watching("orphan-daemon")
        await asyncio.sleep(1.5)  # a heartbeat
        killed = datetime.now(UTC)
        a.kill()
        started = time.monotonic()
        rows = await obs.wait_rows(
            lambda rows: all(
                r.left_at for r in rows if r.participant_identity.startswith("agent-orphan")
            ),
            timeout=60,
        )
        settled_s = time.monotonic() - started
        by = {r.participant_identity: r for r in rows}
        gone = by["agent-orphan-daemon"]
        assert gone.end_source == "reconciled", gone
        assert gone.left_at is not None and gone.end_uncertainty_ms is not None
        # it ends at its last evidence before the kill, never after: the observer's own
        # connection (relayed through the dead node) took seconds to notice, and what its
        # heartbeat claimed meanwhile is no evidence
        assert killed - timedelta(seconds=25) <= gone.left_at <= killed
        assert gone.left_at + timedelta(milliseconds=gone.end_uncertainty_ms) >= killed
        assert by["agent-alive"].left_at is None
        assert by["agent-orphan-reconcile"].left_at is not None
        assert obs.obs.rooms is not None
        rooms = obs.obs.rooms
        # a room's rows can settle before its probes (or a join in flight) mark it unreachable
        await until(
            lambda: set(rooms.unreachable.values()),
            lambda names: names == {"orphan-daemon", "orphan-reconcile"},
            timeout_s=30,
            what=lambda names: f"unreachable: {names}",
        )
        assert obs.obs.metrics.value("observer_rooms_unreachable") == 2
        # the listing still shows the dead node's room and its participants
        await asyncio.sleep(2)
        assert by["agent-alive"].left_at is None

        monkeypatch.setenv("LIVEKIT_URL", b.ws_url)
        monkeypatch.setenv("LIVEKIT_API_KEY", b.api_key)
        monkeypatch.setenv("LIVEKIT_API_SECRET", b.api_secret)
        monkeypatch.setenv("OBSERVER_DATABASE_URL", sqlite_url)
        monkeypatch.setenv("OBSERVER_SETTLE_STALE_S", "1")
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["check"]) == 1
        out = capsys.readouterr().out
        assert "2 room(s) listed but hosted by no live node" in out, out
        assert "orphan-daemon, orphan-reconcile" in out, out

        assert await asyncio.to_thread(main, ["reconcile", "--period", f"{killed:%Y-%m}"]) == 0
        store = Store(sqlite_url)
        try:
            settled = {r.participant_identity: r for r in store.sessions(SessionFilter())}
        finally:
            store.close()
        for name in ("agent-orphan-daemon", "agent-orphan-reconcile"):
            orphan = settled[name]
            assert orphan.end_source == "reconciled" and orphan.left_at is not None, orphan
            assert orphan.left_at <= killed
        assert settled["agent-alive"].left_at is None
        print(f"settled {settled_s:.1f} s after the kill")
    finally:
        await via_a.close()
        await via_b.close()
