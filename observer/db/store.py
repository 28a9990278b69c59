"""The store: owns the engine and runs each read or write in its own transaction."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import (
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from observer.core.times import utcnow
from observer.core.tracker import (
    TrackedSession,
)
from observer.db import day_sums
from observer.db.reads import (
    GroupingKeys,
    LiveAgent,
    PeriodSummary,
    RoomFilter,
    SessionFilter,
    StaleSession,
    grouping_keys,
    live_agents,
    period_summaries,
    room_rows,
    session_rows,
    stale_sessions,
)
from observer.db.rollups import RollupTx
from observer.db.schema import RoomRow, SessionRow, WebhookEventRow, make_engine
from observer.db.token_sql import TokenSessions, TokenTotal, token_totals
from observer.db.usage_sql import (
    UsageSpec,
    UsageTotal,
    usage_totals,
    usage_totals_together,
)
from observer.db.writes import WebhookRecord, Write, apply_ops, insert_webhook, open_sessions

log = logging.getLogger(__name__)


class Store:
    """Owns the engine; every method is synchronous and runs one transaction."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        # `usage` sums stretches of the window at once on this many connections: one per
        # core, up to 4 (one for an in-memory SQLite, which each connection sees afresh)
        memory = url.startswith("sqlite") and make_url(url).database in (None, "", ":memory:")
        self.usage_parts = 1 if memory else max(1, min(os.cpu_count() or 1, 4))
        self._keep_day_sums = not memory  # (another connection would not see them)

    def close(self) -> None:
        """After the day sums handed to the background are kept (or failed): none is lost,
        and no connection is opened on a closed engine."""
        day_sums.kept_all()
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

    def rooms(self, f: RoomFilter) -> list[RoomRow]:
        """Room rows matching a filter, newest first."""
        return room_rows(self.engine, f)

    def live_agents(self) -> list[LiveAgent]:
        return live_agents(self.engine)

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
            return usage_totals(conn, spec, self.usage_parts)

    def usage_together(self, specs: Sequence[UsageSpec]) -> list[list[UsageTotal]]:
        """`usage` of each spec, the sessions read once where they can be."""
        with self.engine.connect() as conn:
            return usage_totals_together(conn, specs, self.usage_parts, self._keep_day_sums)

    def stale_open_sessions(self, seen_before: datetime) -> list[StaleSession]:
        """Open sessions of every observer, last confirmed present before `seen_before`."""
        return stale_sessions(self.engine, seen_before)

    @contextmanager
    def rollup_transaction(self) -> Iterator[RollupTx]:
        """One transaction for a reconcile run: committed when the block ends normally."""
        with Session(self.engine) as db, db.begin():
            yield RollupTx(db)
