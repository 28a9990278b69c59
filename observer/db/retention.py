"""`observer prune`'s reads and deletes: webhook events, session spans and session witnesses
older than a cut-off, a batch of keys per transaction, walked by primary key so that each
statement reads and locks at most one batch. Sessions are never deleted."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, and_, delete, select, tuple_
from sqlalchemy.exc import DBAPIError, OperationalError

from observer.core.retention import Coverage, Interval, judge
from observer.db.schema import (
    PeriodRollupRow,
    SessionRow,
    SessionSpanRow,
    SessionWitnessRow,
    WebhookEventRow,
)

Kind = Literal["webhook_events", "session_spans", "session_witnesses"]
KINDS: tuple[Kind, ...] = ("webhook_events", "session_spans", "session_witnesses")
# a batch that met a lock or a lost connection is tried again this often, then the kind
# is reported as not deleted
ATTEMPTS = 3


def coverage(engine: Engine) -> Coverage:
    """The times finalized periods hold (a period counts by its `total` row)."""
    p = PeriodRollupRow
    q = select(p.period_start, p.period_end, p.finalized_at).where(p.group_kind == "total")
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    final: list[Interval] = [(s, e) for s, e, f in rows if f is not None]
    provisional: list[Interval] = [(s, e) for s, e, f in rows if f is None]
    return Coverage.of(final, provisional)


@dataclass
class KindResult:
    """What one kind's prune did: rows deleted, rows old enough but held back by the
    finalized-period rule (and the times they span), and the error that stopped it."""

    kind: Kind
    deleted: int = 0
    held: int = 0
    held_from: datetime | None = None
    held_to: datetime | None = None
    batches: int = 0
    longest_batch_s: float = 0.0
    batch_s: list[float] = field(default_factory=list, repr=False)  # each batch's time
    error: str | None = None
    _last: Any = field(default=None, repr=False)

    def hold(self, start: datetime, end: datetime) -> None:
        self.held += 1
        self.held_from = start if self.held_from is None else min(self.held_from, start)
        self.held_to = end if self.held_to is None else max(self.held_to, end)


def _page(kind: Kind, after: Any, limit: int) -> Any:
    """The next batch of rows after key `after`: (key..., start, end) of each."""
    s = SessionRow
    if kind == "webhook_events":
        w = WebhookEventRow
        q: Any = select(w.id, w.created_at, w.created_at).order_by(w.id)
        return (q if after is None else q.where(w.id > after[0])).limit(limit)
    if kind == "session_spans":
        sp = SessionSpanRow
        on = and_(s.room_sid == sp.room_sid, s.participant_sid == sp.participant_sid)
        q = (
            select(sp.id, s.id, s.joined_at, s.left_at, sp.started_at, sp.ended_at)
            .select_from(sp)
            .outerjoin(s, on)
            .order_by(sp.id)
        )
        return (q if after is None else q.where(sp.id > after[0])).limit(limit)
    wt = SessionWitnessRow
    on = and_(s.room_sid == wt.room_sid, s.participant_sid == wt.participant_sid)
    key = (wt.room_sid, wt.participant_sid, wt.observer_id)
    q = (
        select(*key, s.id, s.joined_at, s.left_at, wt.first_seen_at, wt.first_seen_at)
        .select_from(wt)
        .outerjoin(s, on)
        .order_by(*key)
    )
    return (q if after is None else q.where(tuple_(*key) > tuple_(*after))).limit(limit)


def _span(kind: Kind, row: Any) -> tuple[Any, datetime | None, datetime | None]:
    """A row's key and the times its data belongs to: a webhook event its own time; a span
    or witness its session's (None at the end while the session is open), or its own when
    there is no session row."""
    if kind == "webhook_events":
        return (row[0],), row[1], row[2]
    width = 1 if kind == "session_spans" else 3
    key, (session_id, joined, left, own_start, own_end) = tuple(row[:width]), row[width:]
    if session_id is None:
        return key, own_start, own_end
    return key, joined, left


def _delete(kind: Kind, keys: list[Any]) -> Any:
    if kind == "webhook_events":
        return delete(WebhookEventRow).where(WebhookEventRow.id.in_([k[0] for k in keys]))
    if kind == "session_spans":
        return delete(SessionSpanRow).where(SessionSpanRow.id.in_([k[0] for k in keys]))
    w = SessionWitnessRow
    return delete(w).where(tuple_(w.room_sid, w.participant_sid, w.observer_id).in_(keys))


def prune(
    engine: Engine,
    kind: Kind,
    *,
    cutoff: datetime,
    cov: Coverage,
    batch_size: int,
    on_batch: Callable[[KindResult], None] | None = None,
) -> KindResult:
    """Delete `kind`'s rows older than `cutoff` whose time finalized periods hold, one
    batch of at most `batch_size` keys per transaction (read, deleted, committed), so no
    lock is held for longer than a batch. A batch that meets a lock or a lost connection
    is tried again; any other failure, or one that does not heal, stops this kind with
    `error` set (what was deleted before stays deleted)."""
    result = KindResult(kind)
    while True:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                finished = _batch(engine, kind, result, cutoff, cov, batch_size)
                break
            except OperationalError as exc:
                if attempt == ATTEMPTS:
                    result.error = _first_line(exc)
                    return result
                time.sleep(0.5 * attempt)
            except DBAPIError as exc:
                result.error = _first_line(exc)
                return result
        if on_batch is not None:
            on_batch(result)
        if finished:
            return result


def _batch(
    engine: Engine, kind: Kind, result: KindResult, cutoff: datetime, cov: Coverage, size: int
) -> bool:
    """One batch in one transaction; True when the table has been walked to its end."""
    began = time.perf_counter()
    with engine.begin() as conn:
        rows = conn.execute(_page(kind, result._last, size)).all()
        doomed, held = [], []
        for row in rows:
            key, start, end = _span(kind, row)
            verdict = judge(start, end, cutoff, cov)
            if verdict.delete:
                doomed.append(key)
            elif verdict.held and start is not None and end is not None:
                held.append((start, end))
        if doomed:
            done: Any = conn.execute(_delete(kind, doomed))
            deleted = int(done.rowcount)
        else:
            deleted = 0
    # counted once the transaction committed: a batch tried again is not counted twice
    result.deleted += max(deleted, 0)
    for start, end in held:
        result.hold(start, end)
    if rows:
        result._last = _span(kind, rows[-1])[0]
    result.batches += 1
    result.batch_s.append(time.perf_counter() - began)
    result.longest_batch_s = max(result.longest_batch_s, result.batch_s[-1])
    return len(rows) < size


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return (text.splitlines() or [type(exc).__name__])[0]
