"""`open_session_spans`: an open session's spans, written as each ends, so that neither the
daemon nor a session that lasts days keeps them in memory; and, at the close, their move
to `session_spans`, cut to the session, in pages (never the whole timeline at once)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.orm import Session

from observer.core.changes import SpanEnded
from observer.core.events import SessionKey
from observer.core.timeline import Span, SpanTotals, Timeline, clipped, watched_from
from observer.db.schema import OpenSessionSpanRow, SessionSpanRow, dialect_insert

# spans read, cut and written to `session_spans` at a time when a session closes
MOVE_PAGE = 1000


@dataclass(frozen=True)
class Watched:
    """What an observer saw of a closed session, summed: the closed row's values."""

    observed_from: datetime
    totals: SpanTotals = field(default_factory=SpanTotals)


def record(db: Session, spans: Sequence[SpanEnded], observer_id: str) -> None:
    """Write the spans that ended; one written before (a retried batch) stays one."""
    if not spans:
        return
    rows = [
        dict(
            room_sid=s.key.room_sid,
            participant_sid=s.key.participant_sid,
            observer_id=observer_id,
            kind=s.span.kind,
            value=s.span.value,
            started_at=s.span.start,
            ended_at=s.span.end,
            observed_from=s.observed_from,
        )
        for s in spans
    ]
    stmt = dialect_insert(db.get_bind().dialect.name, OpenSessionSpanRow)
    db.execute(stmt.on_conflict_do_nothing(), rows)


def _of(key: SessionKey) -> tuple[ColumnElement[bool], ...]:
    t = OpenSessionSpanRow
    return (t.room_sid == key.room_sid, t.participant_sid == key.participant_sid)


def forget(db: Session, key: SessionKey, observer_id: str) -> None:
    """Drop what `observer_id` wrote of a session another end closed."""
    db.execute(
        delete(OpenSessionSpanRow).where(*_of(key), OpenSessionSpanRow.observer_id == observer_id)
    )


def move(
    db: Session,
    key: SessionKey,
    *,
    observer_id: str,
    tail: Timeline | None,
    joined: datetime,
    end: datetime,
) -> Watched | None:
    """The session `key`, which joined at `joined`, closed at `end`: `observer_id`'s spans
    of it, then `tail` (what that observer had not written yet), cut to the session, go to
    `session_spans`, and every observer's open spans of it go. Returns their sums, or None
    when that observer saw nothing of it (no spans, no tail)."""
    t = OpenSessionSpanRow
    mine = (*_of(key), t.observer_id == observer_id)
    first = db.execute(select(func.min(t.observed_from)).where(*mine)).scalar_one()
    if first is None and tail is None:
        db.execute(delete(t).where(*_of(key)))
        return None
    froms = [f for f in (first, tail.observed_from if tail else None) if f is not None]
    start = watched_from(min(froms), joined, end)
    seen = Watched(start)
    after = 0
    while True:
        rows = db.execute(
            select(t.id, t.kind, t.value, t.started_at, t.ended_at)
            .where(*mine, t.id > after)
            .order_by(t.id)
            .limit(MOVE_PAGE)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        stored = (Span(r.kind, r.value, r.started_at, r.ended_at) for r in rows)
        _keep(db, key, seen, clipped(stored, start, end))
    if tail is not None:
        _keep(db, key, seen, clipped(tail.spans, start, end))
    db.execute(delete(t).where(*_of(key)))
    return seen


def _keep(db: Session, key: SessionKey, seen: Watched, spans: Iterable[Span]) -> None:
    rows = []
    for sp in spans:
        seen.totals.add(sp)
        rows.append(
            dict(
                room_sid=key.room_sid,
                participant_sid=key.participant_sid,
                kind=sp.kind,
                value=sp.value,
                started_at=sp.start,
                ended_at=sp.end,
            )
        )
    if rows:
        db.execute(insert(SessionSpanRow), rows)
