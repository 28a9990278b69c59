"""Benchmark: what sharing a fleet costs, next to watching it.

Several observers on one PostgreSQL database pay for their coordination with heartbeats
(an upsert and a read of the live list every OBSERVER_FAILOVER_S / 5 seconds each), the
placement of every listing (core/placement.py), and one read of a room's open rows before
each join. This runs exactly that code for N observers over R rooms against a private
PostgreSQL, without LiveKit, and prints:

- database transactions per second caused by the heartbeats (from pg_stat_database);
- one heartbeat's round trip (median, p95);
- one placement of the whole listing (median), and both as a share of one core at the
  daemon's rates (a heartbeat every OBSERVER_FAILOVER_S / 5 s, a placement per listing).

    .venv/bin/python bench/bench_coordination.py --observers 3 --rooms 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psycopg
from postgres_server import PostgresServer

from observer.core.placement import assign
from observer.db import fleet, migrate
from observer.db.store import Store


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def commits(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def main(args: argparse.Namespace) -> None:
    rooms = [f"room-{i}" for i in range(args.rooms)]
    observers = [f"obs-{i}" for i in range(args.observers)]
    interval = args.failover_s / 5
    with PostgresServer() as pg:
        url = pg.create_database("bench_coordination")
        migrate.upgrade(url)
        store = Store(url)
        conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        mine = assign(rooms, observers, args.replicas)
        trips: list[float] = []
        stop = threading.Event()

        def beat(observer_id: str) -> None:
            inside = [r for r, obs in mine.items() if observer_id in obs]
            started = datetime.now(UTC)
            while not stop.is_set():
                t0 = time.perf_counter()
                fleet.heartbeat(
                    store.engine,
                    observer_id=observer_id,
                    run_id=f"bench-{observer_id}",
                    host="bench",
                    pid=os.getpid(),
                    started_at=started,
                    now=datetime.now(UTC),
                    stopping=False,
                    rooms=inside,
                    dead_after_s=args.failover_s / 2,
                )
                trips.append(time.perf_counter() - t0)
                stop.wait(interval)

        threads = [threading.Thread(target=beat, args=(o,)) for o in observers]
        for t in threads:
            t.start()
        time.sleep(interval * 2)
        c0, w0 = commits(conninfo), time.monotonic()
        time.sleep(args.window_s)
        c1, w1 = commits(conninfo), time.monotonic()
        stop.set()
        for t in threads:
            t.join()
        # two commits of the measuring connections themselves are in the window
        per_s = (c1 - c0 - 1) / (w1 - w0)

        placements = []
        for _ in range(50):
            t0 = time.perf_counter()
            assign(rooms, observers, args.replicas)
            placements.append(time.perf_counter() - t0)
        store.close()

    trip = statistics.median(trips)
    place = statistics.median(placements)
    beat_share = trip / interval * 100  # one observer's heartbeats, % of one core at most
    place_share = place / args.poll_interval_s * 100
    print(f"machine: {os.cpu_count()} cores; observers: {args.observers}; rooms: {args.rooms};")
    print(f"  replicas {args.replicas}; failover {args.failover_s:g} s")
    print(f"heartbeats: {per_s:.2f} database transactions/s for the whole fleet")
    print(
        f"heartbeat round trip: median {trip * 1000:.1f} ms, p95 {pct(trips, 0.95) * 1000:.1f} ms"
    )
    print(f"placement of the whole listing: median {place * 1000:.2f} ms")
    print(
        f"per observer, as a share of one core: heartbeats <= {beat_share:.2f} %"
        f" (wall time, an upper bound), placement {place_share:.3f} %"
        f" (a listing every {args.poll_interval_s:g} s)"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--observers", type=int, default=3)
    p.add_argument("--rooms", type=int, default=300)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--failover-s", type=float, default=10.0)
    p.add_argument("--poll-interval-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=20.0)
    main(p.parse_args())
