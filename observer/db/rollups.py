"""The reads and writes of one reconcile run: settling, usage and period rollups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import (
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Session

from observer.core.vocab import (
    GroupKind,
)
from observer.db.closing import close_row, reconciled
from observer.db.reads import StaleSession
from observer.db.schema import Base, SessionRow, dialect_insert
from observer.db.usage import (
    TokenSessions,
    TokenTotal,
    UsageSpec,
    UsageTotal,
    token_totals,
    usage_totals,
)


@dataclass(frozen=True)
class Rollup:
    """One group's standing time in one period, as stored in `period_rollups`."""

    group_kind: GroupKind | str  # or a keyed grouping: attribute:KEY, room-metadata[:KEY]
    group_key: str  # the agent or room name, or the key's value; "" when none, and total
    sessions: int
    duration_ms: int
    billable_minutes: int
    finalized_at: datetime | None = None
    computed_at: datetime | None = None
    cost: str | None = None  # exact decimal text; None: not priced, or unknown


# The advisory lock key of `observer reconcile` (any constant unique to this program).
RECONCILE_LOCK_KEY = 0x6C6B6F62_72656331 & 0x7FFFFFFFFFFFFFFF


class RollupTx:
    """The reads and writes of one reconcile run, all inside one transaction."""

    def __init__(self, db: Session) -> None:
        self.db = db

    def try_lock(self) -> bool:
        """Take the reconcile lock for this transaction; False if another run holds it.
        PostgreSQL: an advisory lock, released at commit or rollback. SQLite allows one
        writer at a time anyway."""
        conn = self.db.connection()
        if conn.dialect.name != "postgresql":
            return True
        got = conn.execute(select(func.pg_try_advisory_xact_lock(RECONCILE_LOCK_KEY))).scalar_one()
        return bool(got)

    def settle(self, sessions: Iterable[StaleSession], now: datetime) -> int:
        """Close sessions whose participant is gone, as the daemon does at start-up: at the
        last time they were seen, with the gap up to `now` as the uncertainty.

        A row that was closed or seen again since it was read is left alone, so a daemon
        still watching it wins. Returns how many rows were closed.
        """
        return sum(
            close_row(
                self.db,
                s.id,
                s.joined_at,
                reconciled(s.last_seen_at, now),
                now=now,
                only_if=(SessionRow.last_seen_at == s.last_seen_at,),
            )
            for s in sessions
        )

    def usage(self, spec: UsageSpec) -> list[UsageTotal]:
        """As `Store.usage`, inside this transaction (after its settling)."""
        return usage_totals(self.db.connection(), spec)

    def tokens(self, spec: UsageSpec) -> tuple[list[TokenTotal], list[TokenSessions]]:
        """As `Store.tokens`, inside this transaction."""
        return token_totals(self.db.connection(), spec)

    def rollups(self, start: datetime, end: datetime) -> list[Rollup]:
        """The stored rows of one period, by group."""
        t = Base.metadata.tables["period_rollups"]
        q = (
            select(*(t.c[f.name] for f in fields(Rollup)))
            .where(t.c.period_start == start, t.c.period_end == end)
            .order_by(t.c.group_kind, t.c.group_key)
        )
        return [Rollup(*row) for row in self.db.execute(q).all()]

    def write_comparison(self, start: datetime, end: datetime, **values: object) -> None:
        """Keep this comparison as the period's last (see `reconcile_comparisons`)."""
        table = Base.metadata.tables["reconcile_comparisons"]
        conn = self.db.connection()
        conn.execute(delete(table).where(table.c.period_start == start, table.c.period_end == end))
        conn.execute(table.insert().values(period_start=start, period_end=end, **values))

    def write_rollups(
        self,
        start: datetime,
        end: datetime,
        rows: Sequence[Rollup],
        drop: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Insert or replace `rows` of the period; delete the groups in `drop`."""
        table = Base.metadata.tables["period_rollups"]
        conn = self.db.connection()
        if drop:
            stmt = delete(table).where(
                table.c.period_start == start,
                table.c.period_end == end,
                table.c.group_kind == bindparam("kind"),
                table.c.group_key == bindparam("key"),
            )
            conn.execute(stmt, [{"kind": kind, "key": key} for kind, key in drop])
        if not rows:
            return
        insert = dialect_insert(conn.dialect.name, table)
        numbers = (
            "sessions",
            "duration_ms",
            "billable_minutes",
            "finalized_at",
            "computed_at",
            "cost",
        )
        upsert = insert.on_conflict_do_update(
            index_elements=["period_start", "period_end", "group_kind", "group_key"],
            set_={c: insert.excluded[c] for c in numbers},
        )
        conn.execute(
            upsert,
            [{"period_start": start, "period_end": end, **vars(r)} for r in rows],
        )
