"""`observer prune`'s reads and deletes: webhook events, session spans and session witnesses
older than a cut-off, a batch of keys per transaction, so that each statement reads and
locks at most one batch. Only old rows are walked: webhook events by their time, spans and
witnesses by their sessions' (kept rows cost nothing). Sessions are never deleted."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, and_, delete, func, select, tuple_
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import aliased

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

    def hold(self, start: datetime, end: datetime, rows: int = 1) -> None:
        self.held += rows
        self.held_from = start if self.held_from is None else min(self.held_from, start)
        self.held_to = end if self.held_to is None else max(self.held_to, end)


def _events_page(after: Any, cutoff: datetime, limit: int) -> Any:
    """The next webhook events older than the cut-off, in (time, id) order from `after`:
    (time, id) of each. Only old events are read (`ix_webhook_events_created_at_id`)."""
    w = WebhookEventRow
    q = select(w.created_at, w.id).where(w.created_at < cutoff)
    if after is not None:
        q = q.where(w.created_at >= after[0], tuple_(w.created_at, w.id) > tuple_(*after))
    return q.order_by(w.created_at, w.id).limit(limit)


def _sessions_page(after: Any, cutoff: datetime, limit: int) -> Any:
    """The next sessions that ended before the cut-off, in (join, id) order from `after`:
    (joined_at, id, left_at). Only sessions that
    joined before the cut-off are read (`ix_sessions_joined_at_id`): the rows of sessions
    prune keeps are never walked."""
    s = SessionRow
    q = select(s.joined_at, s.id, s.left_at).where(s.joined_at < cutoff, s.left_at < cutoff)
    if after is not None:
        q = q.where(s.joined_at >= after[0], tuple_(s.joined_at, s.id) > tuple_(*after))
    return q.order_by(s.joined_at, s.id).limit(limit)


def _of_sessions(kind: Kind, sessions: list[int], t: Any = None) -> tuple[Any, Any, Any]:
    """The table of `kind` (spans or witnesses; or `t`, an alias of it), its key columns,
    and the join and clause picking the rows of these sessions (by the sessions' ids: an
    index lookup each)."""
    if t is None:
        t = SessionSpanRow if kind == "session_spans" else SessionWitnessRow
    key = (t.id,) if kind == "session_spans" else (t.room_sid, t.participant_sid, t.observer_id)
    s = SessionRow
    on = and_(s.room_sid == t.room_sid, s.participant_sid == t.participant_sid)
    return t, key, (on, s.id.in_(sessions))


def prune(
    engine: Engine,
    kind: Kind,
    *,
    cutoff: datetime,
    cov: Coverage,
    batch_size: int,
    on_batch: Callable[[KindResult], None] | None = None,
) -> KindResult:
    """Delete `kind`'s rows older than `cutoff` whose time finalized periods hold, at most
    `batch_size` rows per transaction (read, deleted, committed), so no lock is held for
    longer than a batch. Only old data is read: webhook events older than the cut-off, and
    the spans and witnesses of sessions that ended before it (a span or witness is always
    written with, or after, its session's row, and sessions are never deleted). A batch
    that meets a lock or a lost connection is tried again; any other failure, or one that
    does not heal, stops this kind with `error` set (what was deleted before stays
    deleted)."""
    walk = _Walk(engine, kind, KindResult(kind), cutoff, cov, batch_size, on_batch)
    try:
        if kind == "webhook_events":
            walk.events()
        else:
            walk.sessions()
    except _Stopped as stop:
        walk.result.error = stop.reason
    return walk.result


class _Stopped(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass
class _Walk:
    """One kind's prune: what it walks with, and what it did so far (`result`)."""

    engine: Engine
    kind: Kind
    result: KindResult
    cutoff: datetime
    cov: Coverage
    size: int
    on_batch: Callable[[KindResult], None] | None

    def events(self) -> None:
        after: Any = None
        while True:
            page = _events_page(after, self.cutoff, self.size)
            rows, deleted, held = self._attempt(self._events_batch, page)
            # counted once the transaction committed: a batch tried again is not counted twice
            self._deleted(deleted)
            for start, end in held:
                self.result.hold(start, end)
            if len(rows) < self.size:
                return
            after = (rows[-1][0], rows[-1][1])

    def sessions(self) -> None:
        after: Any = None
        while True:
            sessions = self._attempt(self._read, _sessions_page(after, self.cutoff, self.size))
            doomed: list[int] = []
            held: dict[int, tuple[datetime, datetime]] = {}
            for start, session_id, end in sessions:
                verdict = judge(start, end, self.cutoff, self.cov)
                if verdict.delete:
                    doomed.append(session_id)
                elif verdict.held:
                    held[session_id] = (start, end)
            if held:
                self._hold(held)
            if doomed:
                self._delete_of(doomed)
            if len(sessions) < self.size:
                return
            after = (sessions[-1][0], sessions[-1][1])

    def _hold(self, held: dict[int, tuple[datetime, datetime]]) -> None:
        """Count the rows the finalized-period rule holds back, one query a page."""
        t, _, (on, of) = _of_sessions(self.kind, list(held))
        query = select(SessionRow.id, func.count()).select_from(t).join(SessionRow, on).where(of)
        for session_id, n in self._attempt(self._read, query.group_by(SessionRow.id)):
            self.result.hold(*held[session_id], n)

    def _delete_of(self, sessions: list[int]) -> None:
        """Delete the rows of these sessions, at most a batch a transaction: one statement
        each, whose subquery picks the keys (an alias of the table, so that it does not
        stand for the rows being deleted)."""
        t, key, _ = _of_sessions(self.kind, sessions)
        inner, inner_key, (on, of) = _of_sessions(self.kind, sessions, aliased(t))
        page = select(*inner_key).select_from(inner).join(SessionRow, on).where(of)
        page = page.limit(self.size)
        stmt = delete(t).where(tuple_(*key).in_(page) if len(key) > 1 else key[0].in_(page))
        while True:
            deleted = self._attempt(self._delete, stmt)
            if deleted:
                self._deleted(deleted)
            if deleted < self.size:
                return

    def _deleted(self, rows: int) -> None:
        self.result.deleted += max(rows, 0)
        self.result.batches += 1
        if self.on_batch is not None:
            self.on_batch(self.result)

    def _attempt(self, step: Callable[[Any], Any], arg: Any) -> Any:
        """Run one batch's transaction, again after a lock or a lost connection; timed."""
        for attempt in range(1, ATTEMPTS + 1):
            began = time.perf_counter()
            try:
                out = step(arg)
            except OperationalError as exc:
                if attempt == ATTEMPTS:
                    raise _Stopped(_first_line(exc)) from None
                time.sleep(0.5 * attempt)
                continue
            except DBAPIError as exc:
                raise _Stopped(_first_line(exc)) from None
            self.result.batch_s.append(time.perf_counter() - began)
            self.result.longest_batch_s = max(self.result.longest_batch_s, self.result.batch_s[-1])
            return out
        raise AssertionError("unreachable")

    def _events_batch(self, page: Any) -> tuple[list[Any], int, list[tuple[datetime, datetime]]]:
        with self.engine.begin() as conn:
            rows = list(conn.execute(page).all())
            doomed, held = [], []
            for created, event_id in rows:
                verdict = judge(created, created, self.cutoff, self.cov)
                if verdict.delete:
                    doomed.append(event_id)
                elif verdict.held:
                    held.append((created, created))
            stmt = delete(WebhookEventRow).where(WebhookEventRow.id.in_(doomed))
            deleted = int(conn.execute(stmt).rowcount) if doomed else 0
        return rows, deleted, held

    def _read(self, query: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def _delete(self, stmt: Any) -> int:
        with self.engine.begin() as conn:
            return max(int(conn.execute(stmt).rowcount), 0)


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return (text.splitlines() or [type(exc).__name__])[0]
