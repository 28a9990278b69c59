"""Benchmark: `observer usage --by agent --by day` (and by an attribute, and by a key of the
room's metadata) and `observer reconcile` over a month.

Fills a fresh SQLite file and a fresh PostgreSQL database with realistic sessions (by
default 1,000,000 sessions of 1,000 agents in 50,000 rooms over 30 days; some cross
midnight, some are still open), then times the usage query and the reconcile job several
times each and prints the medians.

    .venv/bin/python bench/bench_usage.py                      # starts a private PostgreSQL
    .venv/bin/python bench/bench_usage.py --pg-url postgresql://user@host/empty_db
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psycopg
from sqlalchemy.engine import make_url

from observer.config import normalize_database_url
from observer.db import migrate
from observer.db.store import Store
from observer.reports import reconcile, usage
from observer.reports.periods import Period

MONTH_START = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 30
COLUMNS = (
    "room_name",
    "room_sid",
    "participant_sid",
    "participant_identity",
    "participant_name",
    "participant_kind",
    "agent_name",
    "attributes",
    "joined_at",
    "left_at",
    "disconnect_reason",
    "end_source",
    "end_uncertainty_ms",
    "last_seen_at",
    "observer_id",
    "created_at",
    "updated_at",
    "observed_from",
    "state_initializing_ms",
    "state_idle_ms",
    "state_listening_ms",
    "state_thinking_ms",
    "state_speaking_ms",
    "state_other_ms",
    "alone_ms",
)  # (duration_ms, state_unknown_ms and crosses_day are the database's)
SPAN_COLUMNS = ("room_sid", "participant_sid", "kind", "value", "started_at", "ended_at")
# a closed session's timeline, as fractions of its time: states one after another, and
# alone for the last fifth
STATES = (("initializing", 0.05), ("listening", 0.45), ("thinking", 0.1), ("speaking", 0.4))


def timeline(
    joined: datetime, duration_ms: int
) -> tuple[list[int], list[tuple[str, str, datetime, datetime]]]:
    """The state and alone columns (in COLUMNS order) and the spans of a closed session."""
    spans = []
    at = joined
    for name, share in STATES:
        end = at + timedelta(milliseconds=int(duration_ms * share))
        spans.append(("state", name, at, end))
        at = end
    alone_ms = duration_ms // 5
    left = joined + timedelta(milliseconds=duration_ms)
    spans.append(("alone", "", left - timedelta(milliseconds=alone_ms), left))
    ms = {name: int(duration_ms * share) for name, share in STATES}
    cols = [ms.get(n, 0) for n in ("initializing", "idle", "listening", "thinking", "speaking")]
    return [*cols, 0, alone_ms], spans


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


CUSTOMERS = 200


def attributes(agent: str, i: int) -> dict[str, str]:
    """The agent's name, and (for 9 sessions in 10) the customer it works for."""
    out = {"lk.agent_name": agent}
    if i % 10:
        out["customer"] = f"customer-{(i * 7919) % CUSTOMERS:03d}"
    return out


ROOM_COLUMNS = (
    "sid",
    "name",
    "metadata",
    "metadata_json",
    "created_at",
    "first_seen_at",
    "max_agents",
    "max_participants",
    "updated_at",
)


def room_rows(rooms: int) -> list[tuple[object, ...]]:
    """One row per room; its metadata names a customer (for 4 rooms in 5)."""
    out: list[tuple[object, ...]] = []
    for n in range(rooms):
        meta = json.dumps({"customer": f"customer-{n % CUSTOMERS:03d}"}) if n % 5 else ""
        out.append(
            (
                f"RM_room-{n:05d}",
                f"room-{n:05d}",
                meta,
                meta or None,
                MONTH_START,
                MONTH_START,
                1,
                2,
                MONTH_START,
            )
        )
    return out


def sessions(n: int, agents: int, rooms: int, seed: int = 7) -> Iterator[tuple[object, ...]]:
    """Rows in joined_at order: mostly minutes long, a few hours long; the last ones open."""
    rnd = random.Random(seed)
    span_ms = DAYS * 86_400_000
    starts = sorted(rnd.randrange(span_ms - 3_600_000) for _ in range(n))
    open_from = n - max(1, n // 1000)
    for i, offset in enumerate(starts):
        agent = f"agent-{rnd.randrange(agents):04d}"
        room = f"room-{rnd.randrange(rooms):05d}"
        joined = MONTH_START + timedelta(milliseconds=offset)
        if rnd.random() < 0.02:
            duration_ms = rnd.randrange(3_600_000, 8 * 3_600_000)  # a long call
        else:
            duration_ms = int(min(rnd.lognormvariate(12.0, 0.9), 3_600_000))  # ~3 min median
        left = joined + timedelta(milliseconds=duration_ms, microseconds=rnd.randrange(1000))
        is_open = i >= open_from
        states = [None] * 7 if is_open else timeline(joined, duration_ms)[0]
        yield (
            room,
            f"RM_{room}",
            f"PA_{i:08d}",
            f"agent-AJ_{i:08d}",
            agent,
            "agent",
            agent,
            json.dumps(attributes(agent, i)),
            joined,
            None if is_open else left,
            None if is_open else "CLIENT_INITIATED",
            None if is_open else "rtc",
            None,
            joined if is_open else left,
            "bench",
            joined,
            joined if is_open else left,
            None if is_open else joined,
            *states,
        )


def span_rows(rows: list[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
    """The spans of every closed session."""
    for r in rows:
        if r[9] is not None:
            duration_ms = (r[9] - r[8]) // timedelta(milliseconds=1)  # type: ignore[operator]
            for kind, value, start, end in timeline(r[8], duration_ms)[1]:  # type: ignore[arg-type]
                yield (r[1], r[2], kind, value, start, end)


def fill_sqlite(path: str, rows: list[tuple[object, ...]], rooms: list[tuple[object, ...]]) -> None:
    def text(v: object) -> object:
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v

    conn = sqlite3.connect(path)
    try:
        marks = ", ".join("?" * len(COLUMNS))
        with conn:
            conn.executemany(
                f"INSERT INTO sessions ({', '.join(COLUMNS)}) VALUES ({marks})",
                ([text(v) for v in row] for row in rows),
            )
            conn.executemany(
                f"INSERT INTO session_spans ({', '.join(SPAN_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                ([text(v) for v in span] for span in span_rows(rows)),
            )
            conn.executemany(
                f"INSERT INTO rooms ({', '.join(ROOM_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(ROOM_COLUMNS))})",
                ([text(v) for v in row] for row in rooms),
            )
        conn.execute("ANALYZE")
    finally:
        conn.close()


def fill_postgres(
    url: str, rows: list[tuple[object, ...]], rooms: list[tuple[object, ...]]
) -> None:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY sessions ({', '.join(COLUMNS)}) FROM STDIN") as cp,
        ):
            for row in rows:
                cp.write_row(row)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY rooms ({', '.join(ROOM_COLUMNS)}) FROM STDIN") as cp,
        ):
            for room in rooms:
                cp.write_row(room)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY session_spans ({', '.join(SPAN_COLUMNS)}) FROM STDIN") as cp,
        ):
            for span in span_rows(rows):
                cp.write_row(span)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE session_spans")
        conn.execute("VACUUM ANALYZE sessions")
        conn.execute("VACUUM ANALYZE rooms")


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench(
    name: str,
    url: str,
    rows: list[tuple[object, ...]],
    rooms: list[tuple[object, ...]],
    runs: int,
    parts: list[int] | None = None,
) -> None:
    """`parts`: time the usage queries once for each of these numbers of slices summed at
    once (1: one query, which PostgreSQL's planner may run as a parallel aggregate); None:
    as `observer usage` does."""
    migrate.upgrade(url)
    t0 = time.perf_counter()
    if url.startswith("sqlite"):
        fill_sqlite(make_url(url).database or "", rows, rooms)
    else:
        fill_postgres(url, rows, rooms)
    fill_s = time.perf_counter() - t0

    end = MONTH_START + timedelta(days=DAYS)
    now = end + timedelta(hours=2)
    q = usage.UsageQuery(start=MONTH_START, end=end, now=now, by=("agent", "day"))
    job = reconcile.Job(period=Period(MONTH_START, end, "bench"), now=now, settle=False)
    store = Store(url)

    def summary(times: list[float]) -> str:
        each = ", ".join(f"{t:.2f}" for t in times)
        return f"median {statistics.median(times):.2f} s ({each})"

    print(f"{name}: filled in {fill_s:.0f} s", flush=True)
    try:
        for n_parts in parts or [store.usage_parts]:
            store.usage_parts = n_parts
            groups = len(usage.compute(store, q))
            # what `observer usage` does after start-up: the query, then the rows as CSV
            usage_runs = timed(lambda: usage.render(q, usage.compute(store, q), "csv"), runs)
            keyed = {}
            for by, states in (
                ("attribute:customer", False),
                ("attribute:customer", True),
                ("room-metadata:customer", False),
            ):
                kq = replace(q, by=(by, "day"), states=states)
                keyed[by + (" --states" if states else "")] = (
                    len(usage.compute(store, kq)),
                    timed(lambda kq=kq: usage.render(kq, usage.compute(store, kq), "csv"), runs),
                )
            print(
                f"  usage summed in {n_parts} slice(es) at once\n"
                f"  usage --by agent --by day, month ({groups:,} groups): {summary(usage_runs)}\n"
                + "".join(
                    f"  usage --by {by.replace(' ', ' --by day ')}"
                    f"{'' if ' ' in by else ' --by day'}, month ({n:,} groups): {summary(t)}\n"
                    for by, (n, t) in keyed.items()
                ),
                end="",
                flush=True,
            )
        # the first run writes the month's rows; the others recompute and compare
        first = timed(lambda: reconcile.run(store, None, job), 1)[0]
        reconcile_runs = timed(lambda: reconcile.run(store, None, job), runs)
    finally:
        store.close()
    print(
        f"  reconcile month, first run (writes the rollups): {first:.2f} s\n"
        f"  reconcile month, again: {summary(reconcile_runs)}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--agents", type=int, default=1_000)
    ap.add_argument("--rooms", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pg-url", help="an empty PostgreSQL database (default: start a private one)")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument(
        "--parts",
        help="time usage summed in each of these numbers of slices at once, e.g. 1,2"
        " (1: one query, the planner's own parallel aggregate on PostgreSQL; default: as"
        " `observer usage` sums)",
    )
    args = ap.parse_args()
    parts = [int(p) for p in args.parts.split(",")] if args.parts else None

    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}; load average {os.getloadavg()[0]:.2f};"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    rows = list(sessions(args.sessions, args.agents, args.rooms))
    # The data set's million rows stay in this process to fill both databases; out of the
    # garbage collector's sight, or every full collection during a timed run walks them
    # (a third more time on the page's first visit), which `observer` itself never has.
    gc.freeze()
    across = sum(1 for r in rows if r[9] is not None and str(r[8])[:10] != str(r[9])[:10])
    opened = sum(1 for r in rows if r[9] is None)
    print(
        f"data: {len(rows):,} sessions, {args.agents:,} agents, {args.rooms:,} rooms, {DAYS} days;"
        f" {across:,} cross midnight, {opened:,} open",
        flush=True,
    )

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            bench("sqlite", url, rows, room_rows(args.rooms), args.runs, parts)
    if args.skip_postgres:
        return
    if args.pg_url:
        bench(
            "postgresql",
            normalize_database_url(args.pg_url),
            rows,
            room_rows(args.rooms),
            args.runs,
            parts,
        )
        return
    import postgres_server

    # PostgreSQL's own default rather than the test suite's smaller one
    postgres_server.SERVER_SETTINGS["shared_buffers"] = "128MB"
    with postgres_server.PostgresServer() as pg:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(
            f"postgresql {version[0] if version else '?'}: private instance, shared_buffers 128MB"
        )
        url = pg.create_database("bench")
        bench("postgresql", url, rows, room_rows(args.rooms), args.runs, parts)


if __name__ == "__main__":
    main()
