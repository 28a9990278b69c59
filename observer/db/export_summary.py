"""What the `exports` ledger says, summed: per target for the export's metrics, per
target and period for the page's Reconcile view. Every number is counted from the rows
when asked, never kept beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    ColumnElement,
    Engine,
    Numeric,
    and_,
    case,
    cast,
    func,
    literal_column,
    select,
)

from observer.db.exports import newer_row_exists
from observer.db.schema import ExportRow

Period = tuple[datetime, datetime]


@dataclass(frozen=True)
class TargetSummary:
    """One target's ledger, counted."""

    target: str
    acknowledged: int = 0  # events the billing system took (settled ones included)
    settled: int = 0  # ... of which settled by hand (acknowledged without a try)
    pending: int = 0  # recorded, not acknowledged yet
    refused: int = 0  # every refused event, retried or not
    refused_outstanding: int = 0  # refused, and its key not sent again since: held
    retries: int = 0  # tries beyond each event's first, over all runs
    last_answered_at: datetime | None = None


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def target_summaries(engine: Engine) -> list[TargetSummary]:
    """Each target's counts, by target name."""
    x = ExportRow
    q = (
        select(
            x.target,
            _count(x.state == "acknowledged"),
            _count(and_(x.state == "acknowledged", x.attempts == 0)),
            _count(x.state == "pending"),
            _count(x.state == "refused"),
            func.sum(case((x.attempts > 1, x.attempts - 1), else_=0)),
            func.max(x.answered_at),
        )
        .group_by(x.target)
        .order_by(x.target)
    )
    held = (
        select(x.target, func.count())
        .where(x.state == "refused", ~newer_row_exists())
        .group_by(x.target)
    )
    with engine.connect() as conn:
        outstanding = {t: int(n) for t, n in conn.execute(held).all()}
        return [
            TargetSummary(
                str(t),
                int(ack or 0),
                int(settled or 0),
                int(pend or 0),
                int(ref or 0),
                outstanding.get(str(t), 0),
                int(retries or 0),
                last,
            )
            for t, ack, settled, pend, ref, retries, last in conn.execute(q).all()
        ]


@dataclass(frozen=True)
class PeriodExport:
    """What one target was sent for the buckets of one period."""

    target: str
    recorded: int = 0  # events written to the ledger (sent or to send)
    acknowledged: int = 0
    acknowledged_minutes: Decimal = Decimal(0)  # the minutes those events carry
    settled: int = 0
    pending: int = 0
    pending_corrections: int = 0  # ... of which corrections (seq above 0)
    refused_outstanding: int = 0


def period_exports(engine: Engine, periods: Sequence[Period]) -> dict[Period, list[PeriodExport]]:
    """Per period, what each target holds for the buckets that start inside it."""
    if not periods:
        return {}
    lo, hi = min(p[0] for p in periods), max(p[1] for p in periods)
    x = ExportRow
    minutes = case((x.kind == "minutes", cast(x.quantity, Numeric)), else_=0)
    # literal zeros: the same SQL text in the select list and GROUP BY (PostgreSQL compares
    # the expressions, and two bound parameters are not the same expression)
    zero: ColumnElement[int] = literal_column("0")
    correction, untried = x.seq > zero, x.attempts == zero
    q = (
        select(
            x.target,
            x.period_start,
            x.state,
            correction,
            untried,
            func.count(),
            func.sum(minutes),
        )
        .where(x.period_start >= lo, x.period_start < hi)
        .group_by(x.target, x.period_start, x.state, correction, untried)
    )
    held = (
        select(x.target, x.period_start, func.count())
        .where(x.state == "refused", x.period_start >= lo, x.period_start < hi)
        .where(~newer_row_exists())
        .group_by(x.target, x.period_start)
    )
    out: dict[Period, dict[str, PeriodExport]] = {p: {} for p in periods}

    def add(target: str, start: datetime, **more: int | Decimal) -> None:
        for p, by_target in out.items():
            if p[0] <= start < p[1]:
                e = by_target.get(target) or PeriodExport(target)
                by_target[target] = replace(e, **{k: getattr(e, k) + v for k, v in more.items()})

    with engine.connect() as conn:
        for target, start, state, correction, untried, n, mins in conn.execute(q).all():
            n = int(n)
            add(str(target), start, recorded=n)
            if state == "acknowledged":
                m = Decimal(str(mins or 0))
                m = m.to_integral_value() if m == m.to_integral_value() else m
                add(str(target), start, acknowledged=n, acknowledged_minutes=m)
                if untried:
                    add(str(target), start, settled=n)
            elif state == "pending":
                add(str(target), start, pending=n, pending_corrections=n if correction else 0)
        for target, start, n in conn.execute(held).all():
            add(str(target), start, refused_outstanding=int(n))
    return {p: sorted(v.values(), key=lambda e: e.target) for p, v in out.items()}
