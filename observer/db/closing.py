"""Where a session row is closed: by the daemon's writes and by `observer reconcile`.

Both describe the end as an `Ending`; `closed_columns` turns it into the values written,
and `close_row` writes them, and moves the session's open spans (`observer.db.open_spans`)
to `session_spans` in the same transaction. Only the times and what the observer saw are
written: `duration_ms`, `crosses_day` and `state_unknown_ms` are the database's, derived
from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from observer.core.changes import Close, missed_leave
from observer.core.events import SessionKey
from observer.core.timeline import SpanTotals, Timeline
from observer.core.vocab import END_RECONCILED, EndSource
from observer.db import open_spans
from observer.db.open_spans import Watched
from observer.db.schema import SessionRow


@dataclass(frozen=True)
class Ending:
    """How a session ended, as its row records it."""

    left_at: datetime
    end_source: EndSource
    reason: str | None = None  # LiveKit's disconnect reason, when one was given
    uncertainty_ms: int | None = None  # how long before it was learned the end may lie
    last_seen_at: datetime | None = None  # None: the row's stays
    # what the observer saw of it and had not written yet (`open_session_spans` holds the
    # rest); None: it had not watched it
    timeline: Timeline | None = None


def ending_of(op: Close) -> Ending:
    """The end the tracker decided on."""
    return Ending(
        left_at=op.left_at,
        end_source=op.end_source,
        reason=op.reason,
        uncertainty_ms=op.uncertainty_ms,
        last_seen_at=op.last_seen_at,
        timeline=op.timeline,
    )


def reconciled(last_seen_at: datetime, now: datetime) -> Ending:
    """The end of a session nobody saw leave, settled at `now` (`observer reconcile`):
    at the last time it was seen (`missed_leave`), its row's `last_seen_at` unchanged."""
    left_at, uncertainty_ms = missed_leave(last_seen_at, now)
    return Ending(left_at, END_RECONCILED, uncertainty_ms=uncertainty_ms)


def closed_columns(
    joined_at: datetime, ending: Ending, now: datetime, *, seen: Watched | None = None
) -> dict[str, Any]:
    """The values a close writes into the row of a session that joined at `joined_at`. No
    time is before the join (a clock that disagreed, a leave heard before the join).
    `seen`: what the observer saw of it, summed from its spans; else the ending's timeline
    taken as the whole."""
    values: dict[str, Any] = dict(
        left_at=max(ending.left_at, joined_at),
        disconnect_reason=ending.reason,
        end_source=ending.end_source,
        end_uncertainty_ms=ending.uncertainty_ms,
        updated_at=now,
    )
    if ending.last_seen_at is not None:
        values["last_seen_at"] = max(ending.last_seen_at, joined_at)
    if seen is None and ending.timeline is not None:
        seen = Watched(ending.timeline.observed_from, SpanTotals.of(ending.timeline.spans))
    if seen is not None:
        values.update({f"state_{name}_ms": ms for name, ms in seen.totals.state_ms.items()})
        values.update(observed_from=seen.observed_from, alone_ms=seen.totals.alone_ms)
    return values


def close_row(
    db: Session,
    row_id: int,
    joined_at: datetime,
    ending: Ending,
    *,
    now: datetime,
    only_if: Sequence[ColumnElement[bool]] = (),
    spans_of: str | None = None,
) -> bool:
    """Close the open row `row_id`, which joined at `joined_at`, as `ending` says; False
    when it was closed already or fails `only_if`. The spans of observer `spans_of` (None:
    the row's own observer), with the ending's timeline, move to `session_spans`; every
    observer's open spans of the session go."""
    query = select(SessionRow.room_sid, SessionRow.participant_sid, SessionRow.observer_id).where(
        SessionRow.id == row_id, SessionRow.left_at.is_(None), *only_if
    )
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()  # a close at the same moment by another waits
    row = db.execute(query).first()
    if row is None:
        return False
    seen = open_spans.move(
        db,
        SessionKey(row.room_sid, row.participant_sid),
        observer_id=row.observer_id if spans_of is None else spans_of,
        tail=ending.timeline,
        joined=joined_at,
        end=max(ending.left_at, joined_at),
    )
    db.execute(
        update(SessionRow)
        .where(SessionRow.id == row_id)
        .values(**closed_columns(joined_at, ending, now, seen=seen))
    )
    return True
