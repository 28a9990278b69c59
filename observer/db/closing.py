"""Where a session row is closed: by the daemon's writes and by `observer reconcile`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from observer.db import day_sums
from observer.db.schema import SessionRow


class Closed(NamedTuple):
    changed_day: date | None  # the day over whose kept usage sums the close changes, if any


def close_row(
    db: Session,
    row_id: int,
    joined_at: datetime,
    left_at: datetime,
    *,
    now: datetime,
    only_if: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> Closed | None:
    """Close the open row `row_id`, which joined at `joined_at`, at `left_at` (never before
    its join), with `values` for its other columns; None when it was closed already or fails
    `only_if`. Only the times are written: `duration_ms`, `crosses_day` and
    `state_unknown_ms` are the database's, derived from them."""
    closed = db.execute(
        update(SessionRow)
        .where(SessionRow.id == row_id, SessionRow.left_at.is_(None), *only_if)
        .values(left_at=max(left_at, joined_at), updated_at=now, **values)
        .returning(SessionRow.crosses_day)
    ).first()
    if closed is None:
        return None
    return Closed(day_sums.changed_day(joined_at, bool(closed.crosses_day), now))
