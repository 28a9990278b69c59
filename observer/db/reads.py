"""The reports' reads of the sessions table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Row,
    Select,
    func,
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
    q = _matching(select(SessionRow), f)
    q = q.order_by(SessionRow.joined_at.desc(), SessionRow.id.desc())
    if f.limit:
        q = q.limit(f.limit)
    with Session(engine, expire_on_commit=False) as db:
        rows = list(db.scalars(q).all())
        db.expunge_all()
        return rows


def export_end(engine: Engine, f: SessionFilter, *, after: int, limit: int) -> int | None:
    """Where a page of an export (the first `limit` rows matching `f` with an id above
    `after`, by id) ends when more rows match after it: its last row's id; else None."""
    q = _matching(select(SessionRow.id), f).where(SessionRow.id > after)
    with engine.connect() as conn:
        ids = conn.scalars(q.order_by(SessionRow.id).offset(limit - 1).limit(2)).all()
    return ids[0] if len(ids) == 2 else None


def export_batches(
    engine: Engine, f: SessionFilter, *, after: int, through: int | None, limit: int, batch: int
) -> Generator[Sequence[Row[Any]], None, None]:
    """The rows matching `f` with an id above `after` (and at most `through`), by id, at
    most `limit`, `batch` at a time from one query on one connection (a server-side
    cursor on PostgreSQL): memory holds one batch, however many rows there are."""
    q = _matching(select(*SessionRow.__table__.c), f).where(SessionRow.id > after)
    if through is not None:
        q = q.where(SessionRow.id <= through)
    q = q.order_by(SessionRow.id).limit(limit)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
        yield from result.partitions()


def _matching(q: Select[Any], f: SessionFilter) -> Select[Any]:
    """`q` narrowed to the sessions `f` matches."""
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
    return q


@dataclass(frozen=True)
class RoomFilter:
    room: str | None = None
    since: datetime | None = None  # rooms live at or after this time
    until: datetime | None = None  # rooms that started before this time
    state: SessionState | None = None  # open: not ended yet
    limit: int | None = None


def room_rows(engine: Engine, f: RoomFilter) -> list[RoomRow]:
    """Rooms matching a filter, newest first: by the server's creation time, or when it is
    unknown (a room known only from webhooks) by when an observer first knew of the room."""
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
    created = func.coalesce(RoomRow.created_at, RoomRow.first_seen_at)
    q = q.order_by(created.desc(), RoomRow.sid)
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


@dataclass(frozen=True)
class LiveAgent:
    """An open agent session, with its room's company as last seen."""

    room_name: str
    room_sid: str
    participant_sid: str
    identity: str
    agent_name: str | None
    joined_at: datetime
    last_seen_at: datetime
    company_now: int | None  # None: the room is not known to any observer's row yet
    alone_since: datetime | None


def live_agents(engine: Engine, kind: str = "agent") -> list[LiveAgent]:
    """Open sessions of `kind`, by room name and join time."""
    q = (
        select(
            SessionRow.room_name,
            SessionRow.room_sid,
            SessionRow.participant_sid,
            SessionRow.participant_identity,
            SessionRow.agent_name,
            SessionRow.joined_at,
            SessionRow.last_seen_at,
            RoomRow.company_now,
            RoomRow.alone_since,
        )
        .outerjoin(RoomRow, RoomRow.sid == SessionRow.room_sid)
        .where(SessionRow.left_at.is_(None), SessionRow.participant_kind == kind)
        .order_by(SessionRow.room_name, SessionRow.joined_at)
    )
    with Session(engine) as db:
        return [LiveAgent(*row) for row in db.execute(q)]


def usage_version(engine: Engine, *, kind: str, rooms: bool) -> tuple[Any, ...] | None:
    """What the usage sums of `kind`'s sessions up to now depend on besides the clock, to
    tell whether sums computed earlier are still true: None while a session of that kind is
    open (its time grows with the clock). Else the newest session id (a session recorded),
    the newest change of a closed session (one closed, late or not, or given attributes:
    read from its index) and, with `rooms`, the newest change of a room (its metadata)."""
    s = SessionRow.__table__
    with engine.connect() as conn:
        open_now = s.c.left_at.is_(None) & (s.c.participant_kind == kind)
        if conn.scalar(select(func.count()).select_from(s).where(open_now)):
            return None
        version: tuple[Any, ...] = (
            conn.scalar(select(func.max(s.c.id))),
            conn.scalar(select(func.max(s.c.updated_at)).where(s.c.left_at.is_not(None))),
        )
        if rooms:
            version += (conn.scalar(select(func.max(RoomRow.__table__.c.updated_at))),)
        return version


@dataclass(frozen=True)
class PeriodAgent:
    """One agent name's row of a rolled-up period ("" for sessions without one)."""

    agent_name: str
    sessions: int
    duration_ms: int
    billable_minutes: int
    cost: str | None


@dataclass(frozen=True)
class PeriodSummary:
    """One rolled-up period: its state and totals, its agents (most billable minutes
    first), and its last comparison if any."""

    start: datetime
    end: datetime
    finalized_at: datetime | None
    computed_at: datetime
    sessions: int
    duration_ms: int
    billable_minutes: int
    cost: str | None
    compared_at: datetime | None
    statement: str | None
    groups_compared: int | None
    differences: list[dict[str, object]]
    agents: list[PeriodAgent]


def period_summaries(engine: Engine, limit: int = 12) -> list[PeriodSummary]:
    """The latest rolled-up periods (by start), newest first, with the rows `observer
    reconcile` stored for them per agent name (which add up to the total)."""
    from observer.db.schema import PeriodRollupRow, ReconcileComparisonRow

    p, c = PeriodRollupRow, ReconcileComparisonRow
    q = (
        select(
            p.period_start,
            p.period_end,
            p.finalized_at,
            p.computed_at,
            p.sessions,
            p.duration_ms,
            p.billable_minutes,
            p.cost,
            c.compared_at,
            c.statement,
            c.groups_compared,
            c.differences,
        )
        .outerjoin(c, (c.period_start == p.period_start) & (c.period_end == p.period_end))
        .where(p.group_kind == "total")
        .order_by(p.period_start.desc(), p.period_end)
        .limit(limit)
    )
    with Session(engine) as db:
        rows = db.execute(q).all()
        agents: dict[tuple[datetime, datetime], list[PeriodAgent]] = {}
        if rows:
            per_agent = (
                select(
                    p.period_start,
                    p.period_end,
                    p.group_key,
                    p.sessions,
                    p.duration_ms,
                    p.billable_minutes,
                    p.cost,
                )
                .where(p.group_kind == "agent", p.period_start.in_({r[0] for r in rows}))
                .order_by(p.billable_minutes.desc(), p.group_key)
            )
            for a in db.execute(per_agent):
                agents.setdefault((a.period_start, a.period_end), []).append(
                    PeriodAgent(a.group_key, a.sessions, a.duration_ms, a.billable_minutes, a.cost)
                )
    return [
        PeriodSummary(
            start=row.period_start,
            end=row.period_end,
            finalized_at=row.finalized_at,
            computed_at=row.computed_at,
            sessions=row.sessions,
            duration_ms=row.duration_ms,
            billable_minutes=row.billable_minutes,
            cost=row.cost,
            compared_at=row.compared_at,
            statement=row.statement,
            groups_compared=row.groups_compared,
            differences=list(row.differences or []),
            agents=agents.get((row.period_start, row.period_end), []),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class GroupingKeys:
    """The keys worth grouping by, as the latest agent sessions show them."""

    attributes: list[str]
    room_metadata: list[str]


def grouping_keys(engine: Engine, recent: int = 1000, most: int = 6) -> GroupingKeys:
    """The `most` attribute keys and room-metadata keys found most often in the latest
    `recent` agent sessions and their rooms; LiveKit's own `lk.` attributes left out."""
    latest = (
        select(SessionRow.room_sid, SessionRow.attributes)
        .where(SessionRow.participant_kind == "agent")
        .order_by(SessionRow.id.desc())
        .limit(recent)
    )
    with Session(engine) as db:
        rows = db.execute(latest).all()
        sids = sorted({sid for sid, _ in rows})
        metadata = [
            m
            for chunk in range(0, len(sids), 500)
            for m in db.scalars(
                select(RoomRow.metadata_json).where(RoomRow.sid.in_(sids[chunk : chunk + 500]))
            )
        ]
    attributes = Counter(k for _, a in rows for k in (a or {}) if not k.startswith("lk."))
    room_keys = Counter(k for m in metadata if isinstance(m, dict) for k in m)

    def top(c: Counter[str]) -> list[str]:
        return [k for k, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:most]]

    return GroupingKeys(top(attributes), top(room_keys))
