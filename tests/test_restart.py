"""The daemon as a process: stopped (SIGTERM) or killed (SIGKILL) while agents are in rooms."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Clients, create_room
from livekit_server import LiveKitServer
from polling import until
from sqlalchemy import select
from sqlalchemy.orm import Session

from observer.db.reads import SessionFilter
from observer.db.schema import OpenSessionSpanRow, SessionRow, SessionSpanRow
from observer.db.store import Store

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


def start_daemon(
    server: LiveKitServer, db_url: str, log: Path, argv: tuple[str, ...] = ("-m", "observer", "run")
) -> subprocess.Popen[bytes]:
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
            [sys.executable, *argv],
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


# `observer run`, with a thread that, once asked (a file appears), hands the SDK's own event
# callback a panic event, as the native core does when it panics
PANICKING_DAEMON = textwrap.dedent(
    """
    import ctypes, sys, threading, time
    from pathlib import Path
    from observer.cli import main

    def panic_when_asked(trigger):
        while not trigger.exists():
            time.sleep(0.05)
        from livekit.rtc import _ffi_client
        from livekit.rtc._proto import ffi_pb2
        event = ffi_pb2.FfiEvent()
        event.panic.message = "a panic of the native core"
        data = event.SerializeToString()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        _ffi_client.ffi_event_callback(buf, len(data))

    threading.Thread(target=panic_when_asked, args=(Path(sys.argv[1]),), daemon=True).start()
    sys.exit(main(["run"]))
    """
)


async def test_a_native_panic_exits_1_and_keeps_rows_open(
    livekit_server: LiveKitServer, db_url: str, clients: Clients, tmp_path: Path
) -> None:
    """The SDK stops its process with SIGTERM when its native core panics; the observer
    stops as cleanly as on any SIGTERM (the agent's row stays open) but exits 1, so a
    supervisor that restarts on failure restarts it."""
    room = "native-panic"
    await create_room(livekit_server, room)
    await clients.agent(room, "agent-stays")
    store = Store(db_url)
    log = tmp_path / "observer.log"
    trigger = tmp_path / "panic-now"
    daemon = start_daemon(livekit_server, db_url, log, ("-c", PANICKING_DAEMON, str(trigger)))
    try:
        await wait_rows(store, lambda rows: len(rows) == 1)
        trigger.touch()
        code = await asyncio.to_thread(daemon.wait, 30)
        text = log.read_text()
        assert code == 1, text[-3000:]
        assert "FFI Panic:  a panic of the native core" in text
        assert "the rtc SDK's native core panicked" in text
        rows = store.sessions(SessionFilter())
        assert [r.left_at for r in rows] == [None]  # the agent is still there
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)
        store.close()
    assert "Traceback" not in text


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


def span_rows(store: Store, model: type[OpenSessionSpanRow] | type[SessionSpanRow]) -> list[Any]:
    with Session(store.engine) as db:
        return list(db.scalars(select(model).order_by(model.id)).all())


async def test_spans_written_before_a_sigkill_are_kept_once(
    livekit_server: LiveKitServer, db_url: str, clients: Clients, tmp_path: Path
) -> None:
    """An agent's states are written as each ends; the daemon is killed mid-session and
    started again: at the close, what was written before the kill is there, once, with
    what came after, and nothing is left in `open_session_spans`."""
    room = "restart-spans"
    await create_room(livekit_server, room)
    await clients.join(room, "user-1")
    agent = await clients.agent(room, "agent-talks")
    store = Store(db_url)
    log = tmp_path / "observer.log"
    daemon = start_daemon(livekit_server, db_url, log)
    try:
        await wait_rows(store, lambda rows: len(rows) == 1)
        await asyncio.sleep(1.0)
        sent: dict[str, float] = {}  # when each state was set: the call waits on the server
        for state in ("listening", "thinking", "speaking"):
            sent[state] = time.monotonic()
            await agent.local_participant.set_attributes({"lk.agent.state": state})
            await asyncio.sleep(1.0)
        before = await until(
            lambda: span_rows(store, OpenSessionSpanRow),
            lambda rows: {r.value for r in rows if r.kind == "state"} >= {"listening", "thinking"},
            timeout_s=20,
            what=lambda rows: [(r.kind, r.value) for r in rows],
        )
        daemon.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(daemon.wait, 30) == -signal.SIGKILL
        assert span_rows(store, SessionSpanRow) == []
        killed_at = datetime.now(UTC)

        daemon = start_daemon(livekit_server, db_url, log)
        await wait_rows(store, lambda rows: rows[0].last_seen_at > killed_at, timeout=30)
        sent["idle"] = time.monotonic()
        await agent.local_participant.set_attributes({"lk.agent.state": "idle"})
        await asyncio.sleep(1.0)
        sent["listening again"] = time.monotonic()
        await agent.local_participant.set_attributes({"lk.agent.state": "listening"})
        await asyncio.sleep(1.0)
        await agent.disconnect()
        (row,) = await wait_rows(store, lambda rows: rows[0].left_at is not None, timeout=30)
        spans = span_rows(store, SessionSpanRow)
        states = [(s.value, s.started_at, s.ended_at) for s in spans if s.kind == "state"]
        assert len(states) == len(set(states)), states
        kept = [(r.value, r.started_at, r.ended_at) for r in before if r.kind == "state"]
        assert set(kept) <= set(states)  # written before the kill: kept, once
        assert [v for v, _, _ in states if v == "idle"] == ["idle"]  # after the restart
        ordered = sorted(states, key=lambda s: s[1])
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered))
        assert row.observed_from is not None and row.observed_from <= ordered[0][1]
        for column, (state, then) in {
            "state_thinking_ms": ("thinking", "speaking"),
            "state_idle_ms": ("idle", "listening again"),
        }.items():
            expected_ms = (sent[then] - sent[state]) * 1000
            got = getattr(row, column)
            assert got is not None and expected_ms - 300 <= got <= expected_ms + 500, (column, got)
        assert span_rows(store, OpenSessionSpanRow) == []
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        store.close()
    assert "Traceback" not in log.read_text()
