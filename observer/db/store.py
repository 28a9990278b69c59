"""The store: the one gateway to the database. It owns the engine and runs each read or
write in its own transaction, and owns the threads that run them for async code
(`Store.run`) and their connection budget; nothing outside `observer/db/` (but the
migrations) touches the engine.

The connection budget: a store's pool holds exactly `workers` connections for its threads,
one for each thread that `usage` sums slices on at once (`usage_parts`), and one for
the thread that owns the store (start-up, a command's own reads); it never opens more
(no overflow), and no thread holds more than one, so no call waits for a connection.

The daemon has two: the recording store (the writer, webhooks, the fleet, readiness) and
the page's (`Store.for_page`), with threads and a pool of their own, so that nothing a
reader of the page does can take a thread or a connection that recording needs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Row,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from observer.core.events import TrackedSession
from observer.core.retention import Coverage
from observer.core.times import utcnow
from observer.db import erasure, export_summary, exports, fleet, retention
from observer.db._threads import Busy as Busy  # what a call that waited too long raises
from observer.db._threads import Threads
from observer.db.export_summary import PeriodExport, TargetSummary
from observer.db.exports import Answer, ExportTx, LedgerRow
from observer.db.fleet import Member
from observer.db.reads import (
    GroupingKeys,
    LiveAgent,
    PeriodSummary,
    RoomFilter,
    SessionFilter,
    StaleSession,
    export_batches,
    export_end,
    grouping_keys,
    live_agents,
    period_summaries,
    room_rows,
    session_rows,
    stale_sessions,
    usage_version,
)
from observer.db.retention import KindResult
from observer.db.rollups import RollupTx
from observer.db.schema import RoomRow, SessionRow, WebhookEventRow, make_engine
from observer.db.usage import (
    Fanout,
    TokenSessions,
    TokenTotal,
    UsageSpec,
    UsageTotal,
    token_totals,
    usage_totals,
    usage_totals_together,
)
from observer.db.writes import WebhookRecord, Write, apply_ops, insert_webhook, open_sessions

log = logging.getLogger(__name__)

# threads of the recording store: the writer, webhooks being stored, the fleet's beats,
# readiness checks, rooms' open rows read before a join
RECORDING_WORKERS = 8
# how long a page request waits for one of the page's threads before it is answered 503
PAGE_WAIT_S = 20.0
# rows of an export read (and held) at a time
EXPORT_BATCH = 1000


def _in_memory(url: str) -> bool:
    return url.startswith("sqlite") and make_url(url).database in (None, "", ":memory:")


def usage_parts(url: str) -> int:
    """`usage` sums slices of the window at once on this many connections: one per core,
    up to 4 (one for an in-memory SQLite, which each connection sees afresh)."""
    return 1 if _in_memory(url) else max(1, min(os.cpu_count() or 1, 4))


class Store:
    """Owns the engine; every method is synchronous and runs one transaction. `run` runs
    one on the store's own threads, for async code (`_threads.Threads`)."""

    def __init__(
        self,
        url: str,
        *,
        workers: int = RECORDING_WORKERS,
        wait_s: float | None = None,
        parallel: bool = True,
        name: str = "store",
    ) -> None:
        """`workers` threads run the store's work for async code; a call waits for one at
        most `wait_s` (None: as long as it takes); `parallel`: `usage` may sum on several
        connections (and threads) at once. The pool is sized to the budget (module doc)."""
        self.usage_parts = usage_parts(url) if parallel else 1
        fan_out = self.usage_parts if parallel else 0
        self.connections = workers + fan_out + 1
        self.engine = make_engine(url, connections=self.connections)
        self.threads = Threads(workers, wait_s=wait_s, name=name)
        # the threads `usage` sums slices on, beside the thread that asked
        self._fan_out = (
            ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix=f"{name}-parts")
            if fan_out
            else None
        )
        # blocking work from async code: `await store.run(store.apply, ops, observer_id)`
        self.run = self.threads.run
        self.run_queued = self.threads.run_queued
        self.stream = self.threads.stream
        self.submit = self.threads.submit

    @classmethod
    def for_page(cls, url: str, *, workers: int) -> Store:
        """A store for the page: `workers` threads, each computing on one connection (no
        slices summed at once beside it: the page takes `workers` threads of the
        machine, no more), and a pool of its own (`workers` + 1 connections). A page
        request waits `PAGE_WAIT_S` at most for a thread."""
        return cls(url, workers=workers, wait_s=PAGE_WAIT_S, parallel=False, name="page")

    def close(self) -> None:
        """After the work under way is done: no connection is opened on a closed engine."""
        self.threads.shutdown()
        if self._fan_out is not None:
            self._fan_out.shutdown(wait=True)
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def schema_is_current(self) -> bool:
        from observer.db.migrate import is_current

        return is_current(self.engine)

    def apply(self, ops: Sequence[Write], observer_id: str) -> list[str]:
        """Apply a batch of tracker operations in one transaction; returns the usage totals
        that went backwards.

        Every operation is idempotent, so a batch that failed half-way can be retried whole.
        """
        with Session(self.engine) as db, db.begin():
            return apply_ops(db, ops, observer_id, utcnow())

    def record_webhook(self, rec: WebhookRecord) -> bool:
        """Store a webhook event unless it is already stored; True if it is new."""
        with Session(self.engine) as db, db.begin():
            return insert_webhook(db, rec)

    def webhook_events(self) -> list[WebhookEventRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            rows = list(db.scalars(select(WebhookEventRow).order_by(WebhookEventRow.received_at)))
            db.expunge_all()
            return rows

    def open_sessions(self, observer_id: str) -> list[TrackedSession]:
        """Sessions this observer left open, to continue after a restart."""
        return open_sessions(self.engine, observer_id)

    def sessions(self, f: SessionFilter) -> list[SessionRow]:
        """Rows matching a filter, newest first."""
        return session_rows(self.engine, f)

    def export_end(self, f: SessionFilter, *, after: int, limit: int) -> int | None:
        """The id of the last row of an export's page when more rows follow it, else None
        (`reads.export_end`)."""
        return export_end(self.engine, f, after=after, limit=limit)

    def export_batches(
        self,
        f: SessionFilter,
        *,
        after: int,
        through: int | None,
        limit: int,
    ) -> Generator[Sequence[Row[Any]], None, None]:
        """An export's rows by id, `EXPORT_BATCH` at a time from one query
        (`reads.export_batches`)."""
        return export_batches(
            self.engine, f, after=after, through=through, limit=limit, batch=EXPORT_BATCH
        )

    def rooms(self, f: RoomFilter) -> list[RoomRow]:
        """Room rows matching a filter, newest first."""
        return room_rows(self.engine, f)

    def live_agents(self) -> list[LiveAgent]:
        return live_agents(self.engine)

    def usage_version(self, *, kind: str, rooms: bool) -> tuple[Any, ...] | None:
        """What usage sums depend on besides the clock (`reads.usage_version`)."""
        return usage_version(self.engine, kind=kind, rooms=rooms)

    def grouping_keys(self) -> GroupingKeys:
        """Attribute and room-metadata keys of the latest agent sessions, most seen first."""
        return grouping_keys(self.engine)

    def periods(self, limit: int = 12) -> list[PeriodSummary]:
        return period_summaries(self.engine, limit)

    def tokens(self, spec: UsageSpec) -> tuple[list[TokenTotal], list[TokenSessions]]:
        """Model usage per group and bucket, and the sessions that reported it."""
        with self.engine.connect() as conn:
            return token_totals(conn, spec)

    def usage(self, spec: UsageSpec) -> list[UsageTotal]:
        """Standing time per group and bucket, computed in SQL."""
        with self.engine.connect() as conn:
            return usage_totals(conn, spec, self._fanout())

    def usage_together(self, specs: Sequence[UsageSpec]) -> list[list[UsageTotal]]:
        """`usage` of each spec, the sessions read once where they can be."""
        with self.engine.connect() as conn:
            return usage_totals_together(conn, specs, self._fanout())

    def _fanout(self) -> Fanout | None:
        if self._fan_out is None or self.usage_parts <= 1:
            return None
        return Fanout(self.usage_parts, self._fan_out, self.engine.connect)

    def stale_open_sessions(self, seen_before: datetime) -> list[StaleSession]:
        """Open sessions of every observer, last confirmed present before `seen_before`."""
        return stale_sessions(self.engine, seen_before)

    @contextmanager
    def rollup_transaction(self) -> Iterator[RollupTx]:
        """One transaction for a reconcile run: committed when the block ends normally."""
        with Session(self.engine) as db, db.begin():
            yield RollupTx(db)

    # ---- the exports ledger (`db/exports.py`) ---------------------------------------------

    @contextmanager
    def export_transaction(self) -> Iterator[ExportTx]:
        """One transaction for planning an export: committed when the block ends normally."""
        with Session(self.engine) as db, db.begin():
            yield ExportTx(db)

    def export_pending(self, target: str, *, after: int = 0, limit: int = 1000) -> list[LedgerRow]:
        """The target's pending events after id `after`, in the order recorded."""
        return exports.pending(self.engine, target, after=after, limit=limit)

    def export_answers(self, answers: Sequence[Answer], now: datetime) -> None:
        """Write the billing system's answers to the ledger, in one transaction."""
        exports.answer(self.engine, answers, now)

    def export_rows(self, target: str | None = None) -> list[LedgerRow]:
        """The ledger (of one target), in the order recorded."""
        return exports.rows(self.engine, target)

    def finalized_periods(self) -> list[tuple[datetime, datetime]]:
        """The periods `observer reconcile` finalized, by start."""
        return exports.finalized_periods(self.engine)

    def export_refused(self, target: str | None = None) -> list[LedgerRow]:
        """Refused events whose key was not sent again since (`exports.refused_outstanding`)."""
        return exports.refused_outstanding(self.engine, target)

    def export_summaries(self) -> list[TargetSummary]:
        """Each target's ledger, counted (`export_summary.target_summaries`)."""
        return export_summary.target_summaries(self.engine)

    def period_exports(
        self, periods: Sequence[tuple[datetime, datetime]]
    ) -> dict[tuple[datetime, datetime], list[PeriodExport]]:
        """Per period, what each target holds (`export_summary.period_exports`)."""
        return export_summary.period_exports(self.engine, periods)

    def export_counts(self) -> dict[tuple[str, str], int]:
        """Events per (target, state)."""
        return exports.counts(self.engine)

    # ---- retention and erasure (`db/retention.py`, `db/erasure.py`) ------------------------

    def prune_coverage(self) -> Coverage:
        """The times finalized periods hold: what `prune` may delete the details of."""
        return retention.coverage(self.engine)

    def prune(
        self,
        kind: retention.Kind,
        *,
        cutoff: datetime,
        cov: Coverage,
        batch_size: int,
        on_batch: Callable[[KindResult], None] | None = None,
    ) -> KindResult:
        """Delete `kind`'s rows older than `cutoff`, a batch per transaction
        (`retention.prune`)."""
        return retention.prune(
            self.engine, kind, cutoff=cutoff, cov=cov, batch_size=batch_size, on_batch=on_batch
        )

    def forget(self, identity: str, hashed: str) -> dict[str, int] | None:
        """Replace an identity by its hash everywhere, in one transaction: rows changed per
        table, or None when nothing held it and nothing holds the hash either."""
        with Session(self.engine) as db, db.begin():
            changed = erasure.forget(db, identity, hashed)
            if any(changed.values()) or erasure.remembers(db, hashed):
                return changed
            return None

    # ---- the fleet: observers' rows, their heartbeats, alerts (`db/fleet.py`) ----------------

    def heartbeat(
        self,
        *,
        observer_id: str,
        run_id: str,
        host: str,
        pid: int,
        started_at: datetime,
        stopping: bool,
        rooms: Sequence[str],
        dead_after_s: float,
    ) -> list[Member]:
        """This run's beat (`fleet.heartbeat`): every live observer, this one included."""
        return fleet.heartbeat(
            self.engine,
            observer_id=observer_id,
            run_id=run_id,
            host=host,
            pid=pid,
            started_at=started_at,
            stopping=stopping,
            rooms=rooms,
            dead_after_s=dead_after_s,
        )

    def id_holder(self, observer_id: str) -> Member | None:
        """The row of the run holding an observer id, if any."""
        return fleet.holder(self.engine, observer_id)

    def take_id(
        self,
        *,
        observer_id: str,
        run_id: str,
        host: str,
        pid: int,
        replacing: str | None,
        now: datetime,
    ) -> bool:
        """Make `run_id` the holder of the id (`fleet.take`)."""
        return fleet.take(
            self.engine,
            observer_id=observer_id,
            run_id=run_id,
            host=host,
            pid=pid,
            replacing=replacing,
            now=now,
        )

    def observers(self, now: datetime, dead_after_s: float) -> list[Member]:
        """The observers whose heartbeats are current."""
        return fleet.members(self.engine, now, dead_after_s)

    def leave_fleet(self, observer_id: str, run_id: str) -> None:
        """Remove this run's row: a clean stop."""
        fleet.leave(self.engine, observer_id, run_id)

    def claim_stuck_alert(
        self,
        *,
        room_sid: str,
        room_name: str,
        alone_since: datetime,
        observer_id: str,
        now: datetime,
    ) -> bool:
        """Whether this observer raises the alert for agents alone in a room."""
        return fleet.claim_stuck_alert(
            self.engine,
            room_sid=room_sid,
            room_name=room_name,
            alone_since=alone_since,
            observer_id=observer_id,
            now=now,
        )

    def open_in_room(self, room_sid: str) -> list[TrackedSession]:
        """Open rows of one room, whichever observer wrote them."""
        return fleet.open_in_room(self.engine, room_sid)

    def open_seen_by_several(self) -> int:
        """Open sessions that more than one observer saw in the room itself."""
        return fleet.open_seen_by_several(self.engine)
