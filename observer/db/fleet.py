"""The observers sharing a database: heartbeats, who is alive, and what each watches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, false, func, select
from sqlalchemy.orm import Session

from observer.core.events import TrackedSession
from observer.core.times import utcnow
from observer.db.schema import (
    ObserverRow,
    SessionRow,
    SessionWitnessRow,
    StuckAlertRow,
    dialect_insert,
)
from observer.db.writes import tracked


@dataclass(frozen=True)
class Member:
    observer_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopping: bool
    rooms: tuple[str, ...]
    run_id: str


class IdTaken(Exception):
    """Another run of this observer id took the row over (it found this run's heartbeat
    stale): this run must stop."""


def heartbeat(
    engine: Engine,
    *,
    observer_id: str,
    run_id: str,
    host: str,
    pid: int,
    started_at: datetime,
    stopping: bool,
    rooms: Sequence[str],
    dead_after_s: float,
    now: datetime | None = None,
) -> list[Member]:
    """Say this observer is alive (and what it watches); return every live observer, this
    one included, as of `now` (by default the time of the call: a heartbeat that waited
    for a thread must not look older to the others than it is). Raises `IdTaken` when the
    row belongs to another run now."""
    now = now or utcnow()
    values = {
        "observer_id": observer_id,
        "run_id": run_id,
        "host": host,
        "pid": pid,
        "started_at": started_at,
        "heartbeat_at": now,
        "stopping": stopping,
        "rooms": sorted(rooms),
    }
    with Session(engine) as db, db.begin():
        if not _upsert(db, values, replacing=run_id):
            raise IdTaken(observer_id)
        return _members(db, now, dead_after_s)


def holder(engine: Engine, observer_id: str) -> Member | None:
    """The row of this observer id, live or not."""
    with Session(engine) as db:
        row = db.get(ObserverRow, observer_id)
        return None if row is None else _member(row)


def take(
    engine: Engine,
    *,
    observer_id: str,
    run_id: str,
    host: str,
    pid: int,
    replacing: str | None,
    now: datetime,
) -> bool:
    """Make `run_id` the holder of this observer id, provided the row still belongs to run
    `replacing` (None: there is no row). False if another run changed it meanwhile."""
    values = {
        "observer_id": observer_id,
        "run_id": run_id,
        "host": host,
        "pid": pid,
        "started_at": now,
        "heartbeat_at": now,
        "stopping": False,
        "rooms": [],
    }
    with Session(engine) as db, db.begin():
        return _upsert(db, values, replacing=replacing)


def _upsert(db: Session, values: dict[str, object], *, replacing: str | None) -> bool:
    """Insert the row, or update it if it belongs to run `replacing`; whether it was written."""
    stmt = dialect_insert(db.get_bind().dialect.name, ObserverRow).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["observer_id"],
        set_={k: stmt.excluded[k] for k in values if k != "observer_id"},
        where=false() if replacing is None else ObserverRow.run_id == replacing,
    ).returning(ObserverRow.observer_id)
    return db.execute(stmt).first() is not None


def members(engine: Engine, now: datetime, dead_after_s: float) -> list[Member]:
    with Session(engine) as db:
        return _members(db, now, dead_after_s)


def _members(db: Session, now: datetime, dead_after_s: float) -> list[Member]:
    since = now - timedelta(seconds=dead_after_s)
    rows = db.scalars(
        select(ObserverRow)
        .where(ObserverRow.heartbeat_at >= since)
        .order_by(ObserverRow.observer_id)
    ).all()
    return [_member(r) for r in rows]


def _member(r: ObserverRow) -> Member:
    return Member(
        r.observer_id,
        r.host,
        r.pid,
        r.started_at,
        r.heartbeat_at,
        r.stopping,
        tuple(r.rooms),
        r.run_id,
    )


def leave(engine: Engine, observer_id: str, run_id: str) -> None:
    """A clean stop: this observer no longer counts (unless another run holds the id)."""
    with Session(engine) as db, db.begin():
        db.execute(
            delete(ObserverRow).where(
                ObserverRow.observer_id == observer_id, ObserverRow.run_id == run_id
            )
        )


def claim_stuck_alert(
    engine: Engine,
    *,
    room_sid: str,
    room_name: str,
    alone_since: datetime,
    observer_id: str,
    now: datetime,
) -> bool:
    """Whether this observer raises the alert for agents alone in the room: the first to
    claim it does; the claim lasts until the room has company again (`writes`)."""
    with Session(engine) as db, db.begin():
        stmt = dialect_insert(db.get_bind().dialect.name, StuckAlertRow.__table__).values(
            room_sid=room_sid,
            room_name=room_name,
            alone_since=alone_since,
            alerted_at=now,
            observer_id=observer_id,
        )
        claimed = stmt.on_conflict_do_nothing(index_elements=["room_sid"]).returning(
            StuckAlertRow.room_sid
        )
        return db.execute(claimed).first() is not None


def open_in_room(engine: Engine, room_sid: str) -> list[TrackedSession]:
    """Open rows of one room, whichever observer wrote them."""
    with Session(engine) as db:
        rows = db.scalars(
            select(SessionRow).where(SessionRow.room_sid == room_sid, SessionRow.left_at.is_(None))
        ).all()
        return [tracked(r) for r in rows]


def open_seen_by_several(engine: Engine) -> int:
    """Open sessions that more than one observer saw in the room itself."""
    w = SessionWitnessRow
    several = (
        select(w.room_sid, w.participant_sid)
        .group_by(w.room_sid, w.participant_sid)
        .having(func.count() > 1)
        .subquery()
    )
    q = (
        select(func.count())
        .select_from(several)
        .join(
            SessionRow,
            (SessionRow.room_sid == several.c.room_sid)
            & (SessionRow.participant_sid == several.c.participant_sid),
        )
        .where(SessionRow.left_at.is_(None))
    )
    with Session(engine) as db:
        return int(db.scalar(q) or 0)
