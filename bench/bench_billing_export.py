"""Benchmark: `observer export` of a month, one event per customer, agent and day, to the
deduplicating fake billing system of the tests (tests/billing_fake.py), paced at Stripe's
documented limit for meter events (1,000 a second in live mode).

Fills a fresh SQLite file with one agent session a day for each customer (by default
10,000 customers x 30 days = 300,000 events), finalizes the month with `observer
reconcile`, then runs `observer export` as its own process and prints its wall time, its
peak RSS (from the kernel's accounting of the finished child) and what the fake holds,
then a second run (which must send nothing).

    .venv/bin/python bench/bench_billing_export.py
    .venv/bin/python bench/bench_billing_export.py --customers 1000 --rate 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from billing_fake import billing_fake
from sqlalchemy import insert

from observer.cli import main
from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db import migrate
from observer.db.schema import SessionRow
from observer.db.store import Store

MONTH = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "bench-secret-0123456789"


def sessions(customers: int, days: int) -> Iterator[tuple[TrackedSession, datetime]]:
    """One closed agent session a day per customer: the session and its leave."""
    for day in range(days):
        for c in range(customers):
            joined = MONTH + timedelta(days=day, seconds=(c * 7) % 80_000)
            s = TrackedSession(
                room_name=f"room-{c}",
                room_sid=f"RM_{c}_{day}",
                participant_sid=f"PA_{c}_{day}",
                identity=f"agent-{c}-{day}",
                name="",
                kind="agent",
                agent_name="support-bot",
                attributes={"customer": f"cus_{c:06d}"},
                joined_at=joined,
                last_seen_at=joined,
            )
            yield s, joined + timedelta(seconds=30 + (c % 600))


def fill(url: str, customers: int, days: int) -> int:
    """Through the store's own write path, as the daemon's writer records."""
    store = Store(url)
    n = 0
    try:
        batch: list[object] = []
        for s, left in sessions(customers, days):
            batch += [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]
            n += 1
            if len(batch) >= 10_000:
                store.apply(batch, "bench")  # type: ignore[arg-type]
                batch = []
        if batch:
            store.apply(batch, "bench")  # type: ignore[arg-type]
    finally:
        store.close()
    return n


def fill_bulk(url: str, customers: int, days: int) -> int:
    """The same rows, inserted by SQL in large batches (the store's path takes about
    2 ms a session here, some 10 minutes for the full month)."""
    store = Store(url)
    n = 0
    try:
        with store.engine.begin() as conn:
            batch: list[dict[str, object]] = []
            for s, left in sessions(customers, days):
                batch.append(
                    {
                        "room_name": s.room_name,
                        "room_sid": s.room_sid,
                        "participant_sid": s.participant_sid,
                        "participant_identity": s.identity,
                        "participant_name": s.name or None,
                        "participant_kind": s.kind,
                        "agent_name": s.agent_name,
                        "attributes": dict(s.attributes),
                        "joined_at": s.joined_at,
                        "left_at": left,
                        "disconnect_reason": "CLIENT_INITIATED",
                        "end_source": END_RTC,
                        "last_seen_at": left,
                        "observer_id": "bench",
                        "created_at": s.joined_at,
                        "updated_at": left,
                    }
                )
                n += 1
                if len(batch) >= 20_000:
                    conn.execute(insert(SessionRow), batch)
                    batch = []
            if batch:
                conn.execute(insert(SessionRow), batch)
    finally:
        store.close()
    return n


def export(env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one `observer export` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "observer", "export"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"export failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    # ru_maxrss of children is the largest child so far: this one's when it is the largest
    return wall, max(peak, before) / 1024, proc.stdout


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--rate", type=float, default=1000.0, help="events per second (Stripe: 1000)")
    p.add_argument(
        "--through-store",
        action="store_true",
        help="fill through the store's write path (slow) rather than by SQL",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/observer.db"
        migrate.upgrade(url)
        t0 = time.perf_counter()
        n = (fill if args.through_store else fill_bulk)(url, args.customers, args.days)
        how = "through the store" if args.through_store else "by SQL"
        print(f"filled {n:,} sessions {how} in {time.perf_counter() - t0:.1f} s")
        env = {
            **os.environ,
            "OBSERVER_DATABASE_URL": url,
            "OBSERVER_LOG_LEVEL": "warning",
        }
        os.environ.update(env)
        t0 = time.perf_counter()
        assert main(["reconcile", "--period", "2026-03", "--no-settle", "--now", "2026-04-02"]) == 0
        print(f"reconcile finalized the month in {time.perf_counter() - t0:.1f} s")
        with billing_fake(SECRET) as fake:
            env |= {
                "OBSERVER_EXPORT_TARGET": "http",
                "OBSERVER_EXPORT_URL": fake.url + "/events",
                "OBSERVER_EXPORT_SECRET": SECRET,
                "OBSERVER_EXPORT_CUSTOMER_KEY": "attribute:customer",
                "OBSERVER_EXPORT_RATE_PER_S": str(args.rate),
            }
            wall, peak, out = export(env)
            print(out.strip())
            print(
                f"export: {len(fake.events):,} events held by the fake in {wall:.1f} s"
                f" ({len(fake.events) / wall:,.0f}/s at a limit of {args.rate:g}/s),"
                f" peak RSS {peak:.0f} MiB"
            )
            wall2, _peak2, out2 = export(env)
            print(f"second run: {wall2:.1f} s; {out2.splitlines()[0]}")
            assert len(fake.events) == n
        print(
            f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
            f" Python {platform.python_version()})"
        )


if __name__ == "__main__":
    main_()
