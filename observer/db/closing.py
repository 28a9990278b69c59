"""Where a session row is closed: by the daemon's writes and by `observer reconcile`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from observer.db.schema import SessionRow


def close_row(
    db: Session,
    row_id: int,
    joined_at: datetime,
    left_at: datetime,
    *,
    now: datetime,
    only_if: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Close the open row `row_id`, which joined at `joined_at`, at `left_at` (never before
    its join), with `values` for its other columns; False when it was closed already or fails
    `only_if`. Only the times are written: `duration_ms`, `crosses_day` and
    `state_unknown_ms` are the database's, derived from them."""
    closed = db.execute(
        update(SessionRow)
        .where(SessionRow.id == row_id, SessionRow.left_at.is_(None), *only_if)
        .values(left_at=max(left_at, joined_at), updated_at=now, **values)
        .returning(SessionRow.id)
    ).first()
    return closed is not None
