"""The daemon as a process: stopped (SIGTERM) or killed (SIGKILL) while agents are in rooms."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import Clients, create_room
from livekit_server import LiveKitServer
from polling import until

from observer.db.reads import SessionFilter
from observer.db.schema import SessionRow
from observer.db.store import Store

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


def start_daemon(server: LiveKitServer, db_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    env.update(
        LIVEKIT_URL=server.ws_url,
        LIVEKIT_API_KEY=server.api_key,
        LIVEKIT_API_SECRET=server.api_secret,
        OBSERVER_DATABASE_URL=db_url,
        OBSERVER_ID="restart-test",
        OBSERVER_POLL_INTERVAL_S="0.3",
        OBSERVER_LAST_SEEN_REFRESH_S="1",
        OBSERVER_LOG_FORMAT="json",
        OBSERVER_HTTP_ADDR="off",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "observer", "run"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=log.parent,
        )


async def wait_rows(store: Store, pred, timeout: float = 20.0) -> list[SessionRow]:  # type: ignore[no-untyped-def]
    return await until(
        lambda: sorted(store.sessions(SessionFilter()), key=lambda r: r.id),
        pred,
        timeout_s=timeout,
        what=lambda rows: [(r.participant_identity, r.left_at) for r in rows],
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_restart_continues_rows_and_reconciles_the_gap(
    sig: signal.Signals,
    livekit_server: LiveKitServer,
    db_url: str,
    clients: Clients,
    tmp_path: Path,
) -> None:
    room = f"restart-{sig.name.lower()}"
    await create_room(livekit_server, room)
    await clients.join(room, "user-1")
    await clients.agent(room, "agent-stays")
    leaver = await clients.agent(room, "agent-leaves")
    store = Store(db_url)
    log = tmp_path / "observer.log"
    daemon = start_daemon(livekit_server, db_url, log)
    try:
        before = await wait_rows(store, lambda rows: len(rows) == 2)
        await asyncio.sleep(1.5)  # at least one heartbeat
        daemon.send_signal(sig)
        code = await asyncio.to_thread(daemon.wait, 30)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), log.read_text()
        rows = sorted(store.sessions(SessionFilter()), key=lambda r: r.id)
        assert [r.left_at for r in rows] == [None, None]  # the agents are still there

        await asyncio.sleep(1.0)
        real_leave = time.time()
        await leaver.disconnect()
        await asyncio.sleep(1.0)

        daemon = start_daemon(livekit_server, db_url, log)
        rows = await wait_rows(store, lambda rows: any(r.left_at for r in rows))
        await asyncio.sleep(1.0)
        rows = sorted(store.sessions(SessionFilter()), key=lambda r: r.id)
        assert [r.id for r in rows] == [r.id for r in before]  # same rows, none added
        stays, left = rows if rows[0].participant_identity == "agent-stays" else rows[::-1]
        assert stays.left_at is None and stays.last_seen_at > before[0].last_seen_at
        assert left.end_source == "reconciled"
        assert left.left_at is not None and left.end_uncertainty_ms is not None
        lower = left.left_at.timestamp()
        upper = lower + left.end_uncertainty_ms / 1000
        assert lower <= real_leave <= upper, (lower, real_leave, upper)
        assert left.duration_ms is not None and left.duration_ms > 0
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        store.close()
    assert "Traceback" not in log.read_text()


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from observer.commands.process import FDS_PER_ROOM, raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        limit = raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
        assert limit == hard or hard == resource.RLIM_INFINITY
        assert limit // FDS_PER_ROOM >= 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
