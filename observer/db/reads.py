"""The reports' reads of the sessions table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Engine,
    select,
)
from sqlalchemy.orm import Session

from observer.core.vocab import SessionState
from observer.db.schema import RoomRow, SessionRow


@dataclass(frozen=True)
class SessionFilter:
    room: str | None = None
    identity: str | None = None
    agent_name: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: SessionState | None = None
    limit: int | None = None


@dataclass(frozen=True)
class StaleSession:
    """An open session that no observer has confirmed present lately."""

    id: int
    room_name: str
    room_sid: str
    participant_sid: str
    joined_at: datetime
    last_seen_at: datetime


def session_rows(engine: Engine, f: SessionFilter) -> list[SessionRow]:
    """Rows matching a filter, newest first."""
    q = select(SessionRow)
    if f.room:
        q = q.where(SessionRow.room_name == f.room)
    if f.identity:
        q = q.where(SessionRow.participant_identity == f.identity)
    if f.agent_name:
        q = q.where(SessionRow.agent_name == f.agent_name)
    if f.kind:
        q = q.where(SessionRow.participant_kind == f.kind)
    if f.since:
        q = q.where((SessionRow.left_at.is_(None)) | (SessionRow.left_at >= f.since))
    if f.until:
        q = q.where(SessionRow.joined_at < f.until)
    if f.state == "open":
        q = q.where(SessionRow.left_at.is_(None))
    elif f.state == "closed":
        q = q.where(SessionRow.left_at.is_not(None))
    q = q.order_by(SessionRow.joined_at.desc(), SessionRow.id.desc())
    if f.limit:
        q = q.limit(f.limit)
    with Session(engine, expire_on_commit=False) as db:
        rows = list(db.scalars(q).all())
        db.expunge_all()
        return rows


@dataclass(frozen=True)
class RoomFilter:
    room: str | None = None
    since: datetime | None = None  # rooms live at or after this time
    until: datetime | None = None  # rooms that started before this time
    state: SessionState | None = None  # open: not ended yet
    limit: int | None = None


def room_rows(engine: Engine, f: RoomFilter) -> list[RoomRow]:
    """Rooms matching a filter, newest first (by when the observer first knew of them)."""
    q = select(RoomRow)
    if f.room:
        q = q.where(RoomRow.name == f.room)
    if f.since:
        q = q.where((RoomRow.ended_at.is_(None)) | (RoomRow.ended_at >= f.since))
    if f.until:
        q = q.where(RoomRow.first_seen_at < f.until)
    if f.state == "open":
        q = q.where(RoomRow.ended_at.is_(None))
    elif f.state == "closed":
        q = q.where(RoomRow.ended_at.is_not(None))
    q = q.order_by(RoomRow.first_seen_at.desc(), RoomRow.sid)
    if f.limit:
        q = q.limit(f.limit)
    with Session(engine, expire_on_commit=False) as db:
        rows = list(db.scalars(q).all())
        db.expunge_all()
        return rows


def stale_sessions(engine: Engine, seen_before: datetime) -> list[StaleSession]:
    """Open sessions of every observer, last confirmed present before `seen_before`."""
    q = (
        select(
            SessionRow.id,
            SessionRow.room_name,
            SessionRow.room_sid,
            SessionRow.participant_sid,
            SessionRow.joined_at,
            SessionRow.last_seen_at,
        )
        .where(SessionRow.left_at.is_(None), SessionRow.last_seen_at < seen_before)
        .order_by(SessionRow.id)
    )
    with Session(engine) as db:
        return [StaleSession(*row) for row in db.execute(q)]
