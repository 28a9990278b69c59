"""Benchmark: `observer prune --older-than 90d` over half a year of sessions, on SQLite and
PostgreSQL, while a writer records sessions beside it as the daemon does.

Fills a fresh database with bulk SQL in the shape `bench_capacity.py` measures through the
store (per session: 66-67 state and alone spans, 2 witnesses, 10 webhook events with
LiveKit's bodies, its room), spread over 180 days; months are finalized up to the last one,
the current month is provisional. Then runs prune as the command does (1,000 keys a batch)
and prints per kind the rows deleted, the time, the longest single transaction, and the
writer's longest wait for one of its writes (a session opened, witnessed and closed with its
spans, every 100 ms); then the next night's run (the cut-off a day later) and its time.

    .venv/bin/python bench/bench_prune.py --sessions 50000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import bench_capacity as capacity
from sqlalchemy import text

from observer.core.retention import parse_age
from observer.db import migrate
from observer.db.retention import KINDS
from observer.db.store import Store

DAYS = 180
NOW = datetime.now(UTC)
START = NOW - timedelta(days=DAYS + 1)


def stamp(at: datetime, sqlite: bool) -> Any:
    return at.replace(tzinfo=None).isoformat(sep=" ") if sqlite else at


def rows(n: int, sqlite: bool, seed: int = 11) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) in chunks, for `n` sessions over `DAYS` days."""
    rng = random.Random(seed)
    random.seed(seed)
    gap = timedelta(days=DAYS) / n
    chunk: dict[str, list[tuple[Any, ...]]] = {t: [] for t in capacity.TABLES}
    for i in range(n):
        joined = START + gap * i
        first, _ = capacity.session_ops(i, joined, rng)
        room_seen, opened, _witness, *rest = first
        s = opened.session
        close = next(op for op in rest if type(op).__name__ == "Close")
        hooks = [op for op in rest if type(op).__name__ == "WebhookRecord"]
        left = close.left_at
        attrs = json.dumps(dict(s.attributes))
        chunk["sessions"].append(
            (
                s.room_name,
                s.room_sid,
                s.participant_sid,
                s.identity,
                s.name,
                "agent",
                s.agent_name,
                attrs,
                stamp(joined, sqlite),
                stamp(left, sqlite),
                "CLIENT_INITIATED",
                "rtc",
                stamp(left, sqlite),
                "observer-a",
                stamp(joined, sqlite),
                stamp(left, sqlite),
            )
        )
        for sp in close.timeline.spans:
            chunk["session_spans"].append(
                (
                    s.room_sid,
                    s.participant_sid,
                    sp.kind,
                    sp.value,
                    stamp(sp.start, sqlite),
                    stamp(sp.end, sqlite),
                )
            )
        for k, obs in enumerate(capacity.OBSERVERS):
            chunk["session_witnesses"].append(
                (
                    s.room_sid,
                    s.participant_sid,
                    obs,
                    stamp(joined + timedelta(milliseconds=300 * k), sqlite),
                )
            )
        for h in hooks:
            chunk["webhook_events"].append(
                (
                    h.id,
                    h.event,
                    h.room_name,
                    h.room_sid,
                    h.participant_sid,
                    h.participant_identity,
                    stamp(h.created_at, sqlite),
                    stamp(h.received_at, sqlite),
                    h.body,
                )
            )
        meta = room_seen.metadata
        chunk["rooms"].append(
            (
                s.room_sid,
                s.room_name,
                meta,
                meta,
                stamp(joined, sqlite),
                stamp(joined, sqlite),
                1,
                2,
                stamp(left, sqlite),
            )
        )
        if len(chunk["session_spans"]) >= 200_000 or i == n - 1:
            for table, batch in chunk.items():
                if batch:
                    yield table, batch
            chunk = {t: [] for t in capacity.TABLES}


COLUMNS = {
    "sessions": (
        "room_name, room_sid, participant_sid, participant_identity, participant_name,"
        " participant_kind, agent_name, attributes, joined_at, left_at, disconnect_reason,"
        " end_source, last_seen_at, observer_id, created_at, updated_at"
    ),
    "session_spans": "room_sid, participant_sid, kind, value, started_at, ended_at",
    "session_witnesses": "room_sid, participant_sid, observer_id, first_seen_at",
    "webhook_events": (
        "id, event, room_name, room_sid, participant_sid, participant_identity, created_at,"
        " received_at, body"
    ),
    "rooms": (
        "sid, name, metadata, metadata_json, created_at, first_seen_at, max_agents,"
        " max_participants, updated_at"
    ),
}


def fill(store: Store, n: int) -> float:
    sqlite = store.engine.dialect.name == "sqlite"
    began = time.perf_counter()
    raw: Any = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        for table, batch in rows(n, sqlite):
            if table not in COLUMNS:
                continue
            if sqlite:
                marks = ", ".join("?" * len(batch[0]))
                cur.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", batch)
            else:
                with cur.copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
            raw.commit()
    finally:
        raw.close()
    periods(store)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    return time.perf_counter() - began


def periods(store: Store) -> None:
    """Calendar months finalized up to the last one; the current month provisional."""
    sqlite = store.engine.dialect.name == "sqlite"
    month = START.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with store.engine.begin() as conn:
        while month <= NOW:
            nxt = (month + timedelta(days=32)).replace(day=1)
            final = nxt + timedelta(hours=2) if nxt + timedelta(hours=1) < NOW else None
            conn.execute(
                text(
                    "INSERT INTO period_rollups (period_start, period_end, group_kind,"
                    " group_key, sessions, duration_ms, billable_minutes, finalized_at,"
                    " computed_at) VALUES (:s, :e, 'total', '', 0, 0, 0, :f, :c)"
                ),
                {
                    "s": stamp(month, sqlite),
                    "e": stamp(nxt, sqlite),
                    "f": stamp(final, sqlite) if final else None,
                    "c": stamp(NOW, sqlite),
                },
            )
            month = nxt


class Writer(threading.Thread):
    """Records a session every `every_s` as the daemon's writer does, timing each write."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.store = Store(url)
        self.every_s = every_s
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rng = random.Random(3)
        i = 10_000_000
        try:
            while not self.stop.is_set():
                first, second = capacity.session_ops(i, NOW - timedelta(minutes=5), rng)
                began = time.perf_counter()
                self.store.apply(first, capacity.OBSERVERS[0])
                self.store.apply(second, capacity.OBSERVERS[1])
                self.waits.append(time.perf_counter() - began)
                i += 1
                self.stop.wait(self.every_s)
        except BaseException as exc:  # reported with the numbers
            self.errors.append(exc)
        finally:
            self.store.close()


def waits(w: list[float]) -> str:
    if not w:
        return "no sessions recorded"
    p99 = w[min(len(w) - 1, int(len(w) * 0.99))]
    return (
        f"{len(w)} sessions recorded, median {statistics.median(w) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, longest {w[-1] * 1000:.0f} ms"
    )


def bench(label: str, url: str, n: int, older_than: str, batch: int) -> None:
    migrate.upgrade(url)
    store = Store(url)
    try:
        took = fill(store, n)
        counted = {
            t: capacity.counts(store)[t] for t in ("session_spans", "webhook_events", "sessions")
        }
        print(
            f"\n{label}: {n:,} sessions ({counted['session_spans']:,} spans,"
            f" {counted['webhook_events']:,} webhook events) generated in {took:.0f} s"
        )
        cutoff = datetime.now(UTC) - parse_age(older_than)
        cov = store.prune_coverage()
        writer = Writer(url)
        writer.start()
        time.sleep(15)  # the writer alone first: what its waits are without prune
        alone = sorted(writer.waits)
        started = len(writer.waits)
        print(
            f"{'kind':<20}{'deleted':>12}{'held':>10}{'time':>10}{'batches':>10}"
            f"{'tx median':>11}{'tx p99':>9}{'longest tx':>12}"
        )
        total = 0.0
        for kind in KINDS:
            began = time.perf_counter()
            r = store.prune(kind, cutoff=cutoff, cov=cov, batch_size=batch)
            spent = time.perf_counter() - began
            total += spent
            tx = sorted(r.batch_s)
            print(
                f"{kind:<20}{r.deleted:>12,}{r.held:>10,}{spent:>9.1f}s{r.batches:>10,}"
                f"{statistics.median(tx) * 1000:>9.0f}ms{tx[int(len(tx) * 0.99)] * 1000:>7.0f}ms"
                f"{r.longest_batch_s * 1000:>10.0f}ms" + (f"  error: {r.error}" if r.error else "")
            )
        writer.stop.set()
        writer.join(30)
        w = sorted(writer.waits[started:])
        # the next night's run: one more day of old data to delete, everything else kept
        nightly = 0.0
        deleted = 0
        for kind in KINDS:
            began = time.perf_counter()
            r = store.prune(kind, cutoff=cutoff + timedelta(days=1), cov=cov, batch_size=batch)
            nightly += time.perf_counter() - began
            deleted += r.deleted
        print(f"the next night's prune (cut-off a day later): {deleted:,} rows in {nightly:.1f} s")
        print(f"writer alone: {waits(alone)}")
        print(f"prune in all: {total:.1f} s; sessions left: {capacity.counts(store)['sessions']:,}")
        print(
            f"writer beside prune: {waits(w)}"
            + (f"; errors: {writer.errors}" if writer.errors else "")
        )
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50_000)
    ap.add_argument("--older-than", default="90d")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            bench(
                "sqlite",
                f"sqlite:///{tmp}/prune.db",
                args.sessions,
                args.older_than,
                args.batch_size,
            )
    if args.skip_postgres:
        return
    import postgres_server

    postgres_server.SERVER_SETTINGS["shared_buffers"] = "128MB"
    with postgres_server.PostgresServer() as pg:
        url = pg.create_database("prune")
        bench("postgresql", url, args.sessions, args.older_than, args.batch_size)


if __name__ == "__main__":
    main()
