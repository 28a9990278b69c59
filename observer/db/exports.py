"""The `exports` ledger: what `observer export` recorded and sent, and the answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased

from observer.db.schema import Base, ExportRow, dialect_insert
from observer.export.planner import Event, ExportState, Key, Sent

SETTLED_ANSWER = "settled by hand (observer export --settled)"
RELEASED_ANSWER = "released by --retry-refused: nothing owed under the current mapping"

# The advisory lock key of `observer export` planning (any constant unique to this program).
EXPORT_LOCK_KEY = 0x6C6B6F62_65787074 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class LedgerRow:
    """One event of the ledger, with what sending it needs."""

    id: int
    target: str
    identifier: str
    key: Key
    customer_value: str
    seq: int
    quantity: Decimal
    event_time: datetime
    state: ExportState
    attempts: int
    answer: str | None


@dataclass(frozen=True)
class Answer:
    """What the billing system said to one event after `attempts` more tries."""

    id: int
    state: ExportState  # pending: not answered yet (the API down, retries spent)
    answer: str
    attempts: int


_COLUMNS = (
    ExportRow.id,
    ExportRow.target,
    ExportRow.identifier,
    ExportRow.customer,
    ExportRow.agent,
    ExportRow.period_start,
    ExportRow.period_end,
    ExportRow.kind,
    ExportRow.customer_value,
    ExportRow.seq,
    ExportRow.quantity,
    ExportRow.event_time,
    ExportRow.state,
    ExportRow.attempts,
    ExportRow.answer,
)


def _row(r: Sequence[object]) -> LedgerRow:
    (id_, target, ident, customer, agent, start, end, kind, value, seq, qty, at, state, n, ans) = r
    return LedgerRow(
        id=int(str(id_)),
        target=str(target),
        identifier=str(ident),
        key=Key(str(customer), str(agent), start, end, str(kind)),  # type: ignore[arg-type]
        customer_value=str(value),
        seq=int(str(seq)),
        quantity=Decimal(str(qty)),
        event_time=at,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        attempts=int(str(n)),
        answer=None if ans is None else str(ans),
    )


class ExportTx:
    """Planning's reads and writes for one target, inside one transaction."""

    def __init__(self, db: Session) -> None:
        self.db = db

    def try_lock(self) -> bool:
        """Take the export lock for this transaction; False if another run holds it.
        PostgreSQL: an advisory lock; SQLite allows one writer at a time anyway."""
        conn = self.db.connection()
        if conn.dialect.name != "postgresql":
            return True
        got = conn.execute(select(func.pg_try_advisory_xact_lock(EXPORT_LOCK_KEY))).scalar_one()
        return bool(got)

    def ledger(self, target: str, start: datetime, end: datetime) -> list[Sent]:
        """What was recorded for the target's buckets that start in [start, end)."""
        q = select(
            ExportRow.customer,
            ExportRow.agent,
            ExportRow.period_start,
            ExportRow.period_end,
            ExportRow.kind,
            ExportRow.seq,
            ExportRow.quantity,
            ExportRow.state,
            ExportRow.customer_value,
        ).where(
            ExportRow.target == target,
            ExportRow.period_start >= start,
            ExportRow.period_start < end,
        )
        return [
            Sent(Key(c, a, s, e, k), seq, Decimal(q), state, v)  # type: ignore[arg-type]
            for c, a, s, e, k, seq, q, state, v in self.db.execute(q).all()
        ]

    def settle(self, events: Sequence[Event], now: datetime, answer: str = SETTLED_ANSWER) -> int:
        """Write events the operator settled by hand in the billing system (a credit note
        for a negative correction), or that release a refused key, as acknowledged with no
        try: they count as billed and are never sent."""
        if not events:
            return 0
        self.record(events, now)
        t = Base.metadata.tables["exports"].c
        self.db.connection().execute(
            update(Base.metadata.tables["exports"])
            .where(t.target == events[0].target, t.identifier.in_([e.identifier for e in events]))
            .values(state="acknowledged", answer=answer, answered_at=now)
        )
        return len(events)

    def record(self, events: Sequence[Event], now: datetime) -> int:
        """Write the events as pending (one already recorded is left as it is)."""
        if not events:
            return 0
        conn = self.db.connection()
        insert = dialect_insert(conn.dialect.name, Base.metadata.tables["exports"])
        stmt = insert.on_conflict_do_nothing(index_elements=["target", "identifier"])
        conn.execute(
            stmt,
            [
                {
                    "target": e.target,
                    "identifier": e.identifier,
                    "customer": e.key.customer,
                    "customer_value": e.customer_value,
                    "agent": e.key.agent,
                    "period_start": e.key.start,
                    "period_end": e.key.end,
                    "kind": e.key.kind,
                    "seq": e.seq,
                    "quantity": str(e.quantity),
                    "event_time": e.timestamp,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                }
                for e in events
            ],
        )
        return len(events)


def pending(engine: Engine, target: str, *, after: int = 0, limit: int = 1000) -> list[LedgerRow]:
    """The target's pending events with an id above `after`, in the order recorded."""
    q = (
        select(*_COLUMNS)
        .where(ExportRow.target == target, ExportRow.state == "pending", ExportRow.id > after)
        .order_by(ExportRow.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(q).all()]


def rows(engine: Engine, target: str | None = None) -> list[LedgerRow]:
    """Every row of the ledger (of one target), in the order recorded."""
    q = select(*_COLUMNS).order_by(ExportRow.id)
    if target is not None:
        q = q.where(ExportRow.target == target)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(q).all()]


def answer(engine: Engine, answers: Sequence[Answer], now: datetime) -> None:
    """Write the answers in one transaction. An answer never takes an acknowledged event
    back to pending or refused: a late answer to an earlier try cannot undo it."""
    if not answers:
        return
    table = Base.metadata.tables["exports"]
    t = table.c
    stmt = (
        update(table)
        .where(t.id == bindparam("row_id"), t.state != "acknowledged")
        .values(
            state=bindparam("new_state"),
            answer=bindparam("new_answer"),
            attempts=t.attempts + bindparam("tries"),
            answered_at=now,
        )
    )
    params = [
        {"row_id": a.id, "new_state": a.state, "new_answer": a.answer[:500], "tries": a.attempts}
        for a in answers
    ]
    with Session(engine) as db, db.begin():
        db.connection().execute(stmt, params)


def counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Events per (target, state)."""
    q = select(ExportRow.target, ExportRow.state, func.count()).group_by(
        ExportRow.target, ExportRow.state
    )
    with engine.connect() as conn:
        return {(t, s): int(n) for t, s, n in conn.execute(q).all()}


def finalized_periods(engine: Engine) -> list[tuple[datetime, datetime]]:
    """The periods `observer reconcile` finalized, by start: what may be billed."""
    from observer.db.schema import PeriodRollupRow as p

    q = (
        select(p.period_start, p.period_end)
        .where(p.group_kind == "total", p.finalized_at.is_not(None))
        .order_by(p.period_start, p.period_end)
    )
    with engine.connect() as conn:
        return [(s, e) for s, e in conn.execute(q).all()]


def newer_row_exists() -> Any:
    """Whether a later event (higher `seq`) of the same key exists: a refused row without
    one is outstanding (its key is held until the refused events are retried)."""
    later = aliased(ExportRow)
    return (
        select(later.id)
        .where(
            later.target == ExportRow.target,
            later.customer == ExportRow.customer,
            later.agent == ExportRow.agent,
            later.period_start == ExportRow.period_start,
            later.period_end == ExportRow.period_end,
            later.kind == ExportRow.kind,
            later.seq > ExportRow.seq,
        )
        .exists()
    )


def refused_outstanding(engine: Engine, target: str | None = None) -> list[LedgerRow]:
    """Refused events not followed by a later event of their key, in the order recorded."""
    q = (
        select(*_COLUMNS)
        .where(ExportRow.state == "refused", ~newer_row_exists())
        .order_by(ExportRow.id)
    )
    if target is not None:
        q = q.where(ExportRow.target == target)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(q).all()]
