"""What readers of the page may do to recording: nothing. Exports stream in bounded memory
in pages; the page computes on threads and connections of its own, and while it is loaded a
write through the writer, the event loop and the database check of /readyz answer at once.
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit_server import LiveKitServer, free_tcp_port
from sqlalchemy import func, insert, select

from observer.core.changes import Open
from observer.core.events import TrackedSession
from observer.daemon.telemetry import backed_up
from observer.daemon.writer import Writer
from observer.db.reads import SessionFilter
from observer.db.schema import SessionRow
from observer.db.store import Busy, Store
from observer.reports.sessions import COLUMNS, render_sessions, row_dict, session_chunks
from observer.web import export
from observer.web.app import WebPage
from observer.web.guard import Access, guarded_app

pytestmark = pytest.mark.live

HERE = Path(__file__).parent


def fill(url: str, n: int, *, first: int = 0, now: datetime | None = None) -> None:
    """`n` closed agent sessions over the last 25 days, inserted in bulk (the columns the
    database derives are left to it)."""
    now = now or datetime.now(UTC)
    rows = []
    for i in range(first, first + n):
        joined = now - timedelta(days=1 + i % 25, seconds=37 * i % 80_000)
        left = joined + timedelta(seconds=30 + i % 600, microseconds=i % 1000)
        rows.append(
            dict(
                room_name=f"room-{i % 50}",
                room_sid=f"RM_{i % 50}",
                participant_sid=f"PA_{i}",
                participant_identity=f"id-{i}",
                participant_name="",
                participant_kind="agent",
                agent_name=f"agent-{i % 7}",
                attributes={"customer": f"c{i % 11}", "note": "=1+1" if i % 97 == 0 else "x"},
                joined_at=joined,
                left_at=left,
                disconnect_reason="CLIENT_INITIATED",
                end_source="rtc",
                last_seen_at=left,
                observer_id="obs",
                created_at=joined,
                updated_at=left,
            )
        )
    store = Store(url)
    try:
        with store.engine.begin() as conn:
            for at in range(0, len(rows), 5000):
                conn.execute(insert(SessionRow), rows[at : at + 5000])
    finally:
        store.close()


@asynccontextmanager
async def serving(store: Store) -> AsyncIterator[tuple[str, WebPage]]:
    """The page over `store` on a port of its own, with /healthz, as `observer web`
    serves it."""
    access = Access(open_paths=frozenset({"/healthz"}))
    page = WebPage(store, stuck_after_s=300, dead_after_s=10, access=access)
    app = guarded_app(access)
    page.add_routes(app)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", page
    finally:
        await runner.cleanup()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with http.get(url) as r:
        return r.status, await r.text(), r.headers


# ---- exports ---------------------------------------------------------------------------------


def test_streamed_parts_are_the_whole_rendering() -> None:
    """The parts of an export add up to what `observer sessions` writes for the same rows
    (JSON byte for byte, CSV with formula cells neutralised), whatever the batches."""
    t = datetime(2026, 3, 1, 12, tzinfo=UTC)
    rows = [
        SessionRow(
            **{c: None for c in COLUMNS},
            attributes={"k": f"v{i}", "evil": "=cmd"},
        )
        for i in range(5)
    ]
    for i, r in enumerate(rows):
        r.id, r.room_name, r.joined_at, r.participant_name = i + 1, f"r{i}", t, "+x"
    for fmt in ("json", "csv"):
        whole = render_sessions(rows, fmt)
        assert "".join(session_chunks([rows[:2], rows[2:3], rows[3:]], fmt)) == whole
        assert "".join(session_chunks([], fmt)) == render_sessions([], fmt)
    assert json.loads(render_sessions(rows, "json")) == [row_dict(r) for r in rows]
    assert render_sessions([], "json") == "[]\n"
    assert json.dumps([row_dict(r) for r in rows], indent=2) + "\n" == render_sessions(rows, "json")
    parsed = list(csv.reader(io.StringIO(render_sessions(rows, "csv"))))
    assert parsed[0] == list(COLUMNS) and parsed[1][COLUMNS.index("participant_name")] == "'+x"


def test_an_export_streams_in_bounded_memory(db_url: str) -> None:
    """Peak allocation of an unfiltered export does not grow with its rows: four times the
    rows, about the same peak (an export rendered whole holds every row, several times).
    Measured in a process of its own that traces from its first instruction."""
    fill(db_url, 8000)
    done = subprocess.run(
        [sys.executable, "-X", "tracemalloc", str(HERE / "export_peak.py"), db_url, "2000", "8000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    small, large = json.loads(done.stdout.strip().splitlines()[-1])
    assert large < 1.5 * small, (small, large)


async def test_pages_give_every_row_exactly_once_and_bad_values_are_a_400(db_url: str) -> None:
    """Following the `Link` of each page from the first gives every matching row once, in
    id order, even with rows recorded between pages (one of them joined long ago); a page
    that is not full, or that ends with the last match, links nothing."""
    fill(db_url, 2300)
    added = itertools.count(100_000, 10)
    store = Store.for_page(db_url, workers=2)
    try:
        async with serving(store) as (base, _page), aiohttp.ClientSession() as http:
            for fmt, query in (("json", ""), ("csv", ""), ("json", "&agent=agent-3")):
                before = {r.id for r in store.sessions(SessionFilter())}
                if query:
                    before = {r.id for r in store.sessions(SessionFilter(agent_name="agent-3"))}
                url: str | None = f"{base}/sessions.{fmt}?limit=700{query}"
                seen: list[int] = []
                pages = 0
                while url is not None:
                    status, body, headers = await get(http, url)
                    assert status == 200, body
                    if fmt == "json":
                        ids = [r["id"] for r in json.loads(body)]
                    else:
                        ids = [int(r["id"]) for r in csv.DictReader(io.StringIO(body))]
                    assert len(ids) <= 700
                    seen += ids
                    pages += 1
                    link = headers.get("Link")
                    if link is None:
                        url = None
                    else:
                        assert len(ids) == 700
                        m = re.fullmatch(r'<(/sessions\.\w+\?[^>]+)>; rel="next"', link)
                        assert m is not None and f"after={ids[-1]}" in m[1], link
                        url = base + m[1]
                        # recorded meanwhile, joined long before the rows paged already
                        long_ago = datetime(2025, 1, 1, tzinfo=UTC)
                        fill(db_url, 3, first=next(added), now=long_ago)
                assert seen == sorted(set(seen)), "each row once, in id order"
                assert before <= set(seen)
            # a page ending exactly with the last match links nothing
            total = len(store.sessions(SessionFilter(agent_name="agent-5")))
            status, body, headers = await get(
                http, f"{base}/sessions.json?agent=agent-5&limit={total}"
            )
            assert status == 200 and len(json.loads(body)) == total and "Link" not in headers
            # the default page and the largest
            status, body, headers = await get(http, f"{base}/sessions.json")
            assert len(json.loads(body)) == len(store.sessions(SessionFilter())) < export.LIMIT
            status, body, _ = await get(http, f"{base}/sessions.csv?limit={export.LIMIT_MAX}")
            assert status == 200

            for bad in (
                "limit=0",
                "limit=-5",
                "limit=ten",
                f"limit={export.LIMIT_MAX + 1}",
                "limit=1e3",
                "limit=%C2%B2",
                "after=x",
                "after=-1",
                "after=99999999999999999999",
            ):
                for fmt in ("json", "csv"):
                    status, text, _ = await get(http, f"{base}/sessions.{fmt}?{bad}")
                    assert status == 400 and text.count("\n") == 1, (bad, text)
                    assert bad.split("=")[0] in text
    finally:
        store.close()


# ---- the page's own threads --------------------------------------------------------------


async def test_a_page_with_every_thread_busy_answers_503_after_its_wait(db_url: str) -> None:
    """Page requests wait for the page's threads a bounded time; the store says Busy."""
    fill(db_url, 10)
    store = Store(db_url, workers=1, wait_s=0.3)
    release = threading.Event()
    try:
        async with serving(store) as (base, page), aiohttp.ClientSession() as http:
            assert page.warmed is not None
            await page.warmed
            holding = asyncio.ensure_future(store.run(release.wait, 10))
            await asyncio.sleep(0.05)
            for path in ("/sessions", "/sessions.json", "/minutes?by=room"):
                t = time.monotonic()
                status, text, headers = await get(http, base + path)
                assert status == 503 and text.count("\n") == 1 and headers["Retry-After"]
                assert 0.25 < time.monotonic() - t < 3
            with pytest.raises(Busy):
                await store.run(time.sleep, 0)
            release.set()
            await holding
            status, _text, _ = await get(http, base + "/sessions.json?limit=5")
            assert status == 200
    finally:
        release.set()
        store.close()


@pytest.mark.alone
async def test_recording_keeps_its_pace_while_the_page_is_loaded(db_url: str) -> None:
    """An unfiltered export and 50 Minutes views for groupings never computed, at once:
    meanwhile each write through the writer lands within 0.5 s, the event loop answers
    /healthz within 0.5 s, and the recording store's database check within 0.5 s (the
    interpreter handed between threads as `observer run` has it)."""
    fill(db_url, 12_000)
    page_store = Store.for_page(db_url, workers=2)
    recording = Store(db_url)
    writer = Writer(recording, "obs", retry_max_s=1, max_pending=10_000)
    writing = asyncio.ensure_future(writer.run())
    now = datetime.now(UTC)
    switch_s = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        async with serving(page_store) as (base, page), aiohttp.ClientSession() as http:
            assert page.warmed is not None
            await page.warmed

            async def exporting() -> int:
                async with http.get(f"{base}/sessions.json?limit={export.LIMIT_MAX}") as r:
                    assert r.status == 200
                    size = 0
                    async for chunk in r.content.iter_chunked(1 << 16):
                        size += len(chunk)
                    return size

            async def minutes(n: int) -> int:
                async with http.get(f"{base}/minutes?by=attribute:never{n}") as r:
                    await r.read()
                    return r.status

            # recording's connection is open already, as in a running daemon
            writer.submit(
                [Open(TrackedSession("w", "RM_w", "PA_w", "w", "", "agent", "a", {}, now, now))]
            )
            await asyncio.wait_for(writer.wait_idle(), 10)
            load = [asyncio.ensure_future(exporting())]
            load += [asyncio.ensure_future(minutes(n)) for n in range(50)]
            writes, healthz, pings = [], [], []
            n = 0
            while not all(t.done() for t in load[1:]):
                n += 1
                s = TrackedSession(
                    "live", "RM_live", f"PA_live{n}", f"live-{n}", "", "agent", "a", {}, now, now
                )
                t = time.perf_counter()
                writer.submit([Open(s)])
                await asyncio.wait_for(writer.wait_idle(), 5)
                writes.append(time.perf_counter() - t)
                t = time.perf_counter()
                status, _text, _ = await get(http, base + "/healthz")
                assert status == 200
                healthz.append(time.perf_counter() - t)
                t = time.perf_counter()
                await recording.run(recording.ping)
                pings.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)
            statuses = await asyncio.gather(*load[1:])
            assert await load[0] > 10_000 * 500
        assert max(writes) < 0.5, sorted(writes)[-5:]
        assert max(healthz) < 0.5, sorted(healthz)[-5:]
        assert max(pings) < 0.5, sorted(pings)[-5:]
        assert statuses == [200] * 50
        assert n >= 5, "the page's load was over too soon to say anything"
        with recording.engine.connect() as conn:
            live = conn.scalar(select(func.count()).where(SessionRow.room_sid == "RM_live"))
        assert live == n
    finally:
        sys.setswitchinterval(switch_s)
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        page_store.close()
        recording.close()


def test_the_page_store_has_threads_and_connections_of_its_own(db_url: str) -> None:
    """The page's pool is capped at its budget and is not recording's."""
    page = Store.for_page(db_url, workers=2)
    recording = Store(db_url)
    try:
        assert page.engine is not recording.engine
        assert page.threads.workers == 2
        # one connection per thread, and one for the thread that owns it
        assert page.engine.pool.size() == page.connections == 3  # type: ignore[attr-defined]
        assert page.usage_parts == 1  # its views sum on one connection per thread
        assert page.engine.pool._max_overflow == 0  # type: ignore[attr-defined]
        # recording's: its threads, the threads `usage` sums stretches on, its owner's
        budget = recording.threads.workers + recording.usage_parts + 1
        assert recording.engine.pool.size() == recording.connections == budget  # type: ignore[attr-defined]
        assert recording.engine.pool._max_overflow == 0  # type: ignore[attr-defined]
    finally:
        page.close()
        recording.close()


# ---- readiness ------------------------------------------------------------------------------


def test_readiness_names_what_is_backed_up() -> None:
    assert backed_up(0, 0, 100) == [] and backed_up(50, 50, 100) == []
    assert backed_up(51, 0, 100) == ["room events backed up; 51 waiting"]
    assert backed_up(0, 51, 100) == ["database writes backed up; 51 changes waiting"]


@pytest.mark.alone
async def test_readyz_healthz_and_writes_answer_while_every_page_thread_is_busy(
    livekit_server: LiveKitServer, db_url: str, start_observer: Any
) -> None:
    """The daemon with its page's threads all taken: /readyz says ready at once (its
    database check does not queue behind the page), /healthz answers, a write lands; a
    page request waits for a page thread."""
    port = free_tcp_port()
    running = await start_observer(
        livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}", OBSERVER_PAGE_WORKERS="1"
    )
    obs = running.obs
    page_store = obs.page_store
    assert page_store is not None and page_store.threads.workers == 1
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    holding = asyncio.ensure_future(page_store.run_queued(hold))
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(asyncio.to_thread(held.wait, 20), 25)
        async with aiohttp.ClientSession() as http:
            visit = asyncio.ensure_future(get(http, base + "/sessions"))
            for path, said in (("/readyz", "ready\n"), ("/healthz", "ok\n")):
                t = time.monotonic()
                status, text, _ = await get(http, base + path)
                assert (status, text) == (200, said)
                assert time.monotonic() - t < 1.0, path
            now = datetime.now(UTC)
            s = TrackedSession("r", "RM_r", "PA_r", "id-r", "", "agent", "a", {}, now, now)
            t = time.monotonic()
            obs.writer.submit([Open(s)])
            await asyncio.wait_for(obs.writer.wait_idle(), 5)
            assert time.monotonic() - t < 0.5
            assert not visit.done()  # the page waits for its own thread
            release.set()
            status, _text, _ = await visit
            assert status == 200
    finally:
        release.set()
        await holding
