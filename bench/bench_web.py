"""Benchmark: each view of the page over the 1,000,000-session data set of
bench/bench_usage.py (1,000 of them open, in 1,000 live rooms), on SQLite and PostgreSQL.

Times a GET of each view from the page served in-process (as `observer web` serves it),
medians of several runs; the Minutes view computed afresh (a grouping the start-up does not
compute, or a visit during that computation), and from its cache; and how long the
start-up's computation of every offered grouping takes. (The live view's CPU share:
bench/bench_live_view.py.)

    .venv/bin/python bench/bench_web.py                 # starts a private PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp
import bench_usage
from aiohttp import web
from sqlalchemy.engine import make_url

from observer.core.changes import RoomPresence, RoomSeen
from observer.db import migrate
from observer.db.store import Store
from observer.web import views
from observer.web.app import WebPage
from observer.web.guard import Access, guarded_app

VIEWS = (
    "/now",
    "/minutes",
    "/minutes?by=attribute:customer",
    "/minutes?by=room-metadata:customer",
    "/sessions",
    "/sessions?agent=agent-0007",
    "/reconcile",
    "/health",
)


def mark_live_rooms(url: str, rows: list[tuple[object, ...]], now: datetime) -> int:
    """The rooms of the open sessions as live, a tenth of them with agents alone."""
    live = sorted({(str(r[1]), str(r[0])) for r in rows if r[9] is None})
    store = Store(url)
    try:
        ops: list[object] = []
        for i, (sid, name) in enumerate(live):
            ops.append(RoomSeen(sid, name, None, now, now, 1, 2))
            alone = now - timedelta(minutes=10) if i % 10 == 0 else None
            ops.append(RoomPresence(sid, name, 1, 0 if alone else 1, alone, now))
        store.apply(ops, "bench")  # type: ignore[arg-type]
    finally:
        store.close()
    return len(live)


async def bench(name: str, url: str, rows: list[tuple[object, ...]], runs: int) -> None:
    migrate.upgrade(url)
    t0 = time.perf_counter()
    rooms = bench_usage.room_rows(50_000)
    if url.startswith("sqlite"):
        bench_usage.fill_sqlite(make_url(url).database or "", rows, rooms)
    else:
        bench_usage.fill_postgres(url, rows, rooms)
    # "now" is two hours after the data set's month, as in bench_usage
    now = bench_usage.MONTH_START + timedelta(days=bench_usage.DAYS, hours=2)
    live = mark_live_rooms(url, rows, now)
    print(f"{name}: filled in {time.perf_counter() - t0:.0f} s; {live} live rooms", flush=True)

    store = Store.for_page(url, workers=2)  # as `observer web` and the daemon serve it
    page = WebPage(store, stuck_after_s=300, dead_after_s=10, access=Access(), clock=lambda: now)
    app = guarded_app(Access())
    page.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> float:
                t = time.perf_counter()
                async with http.get(base + path) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                return time.perf_counter() - t

            # the start-up's computation of every grouping offered
            t = time.perf_counter()
            assert page.warmed is not None
            await page.warmed
            took = time.perf_counter() - t
            offered = views.worth_warming(page._grouping_choices())
            print(f"  start-up: {took:.2f} s for {', '.join(offered)}", flush=True)
            for path in VIEWS:
                if path.startswith("/minutes"):
                    # computed afresh: a grouping the start-up did not compute
                    cold = []
                    for _ in range(runs):
                        page._cache = views.TtlCache(60.0, spawn=store.submit)
                        cold.append(await get(path))
                    warm = [await get(path) for _ in range(runs)]
                    print(
                        f"  {path}: computed afresh median {statistics.median(cold):.3f} s;"
                        f" from the cache median {statistics.median(warm):.3f} s",
                        flush=True,
                    )
                else:
                    times = [await get(path) for _ in range(runs)]
                    print(f"  {path}: median {statistics.median(times):.3f} s", flush=True)
    finally:
        await runner.cleanup()
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {bench_usage.cpu_model()};"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    rows = list(bench_usage.sessions(args.sessions, 1_000, 50_000))
    # The data set's million rows stay in this process to fill both databases; out of the
    # garbage collector's sight, or every full collection during a timed run walks them
    # (a third more time on the page's first visit), which `observer` itself never has.
    gc.freeze()
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(bench("sqlite", f"sqlite:///{tmp}/bench.db", rows, args.runs))
    if args.skip_postgres:
        return
    import postgres_server

    postgres_server.SERVER_SETTINGS["shared_buffers"] = "128MB"
    with postgres_server.PostgresServer() as pg:
        asyncio.run(bench("postgresql", pg.create_database("bench"), rows, args.runs))


if __name__ == "__main__":
    main()
