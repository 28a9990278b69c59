"""The daemon's writes: tracker operations and webhook records applied to the rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, assert_never

from sqlalchemy import (
    Engine,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from observer.core.agent_usage import COUNTERS, UsageReport
from observer.core.changes import (
    Close,
    Open,
    RecordUsage,
    RefreshLastSeen,
    RoomEnded,
    RoomPresence,
    RoomSeen,
    RowWrite,
    SpanEnded,
    UpdateAttributes,
    Witnessed,
)
from observer.core.events import SessionKey, TrackedSession
from observer.db import open_spans
from observer.db.closing import close_row, ending_of
from observer.db.schema import (
    AgentUsageRow,
    Base,
    RoomRow,
    SessionRow,
    SessionWitnessRow,
    StuckAlertRow,
    WebhookEventRow,
    dialect_insert,
)


@dataclass(frozen=True)
class WebhookRecord:
    """A webhook event as stored in `webhook_events`."""

    id: str
    event: str
    room_name: str | None
    room_sid: str | None
    participant_sid: str | None
    participant_identity: str | None
    created_at: datetime
    received_at: datetime
    body: str


Write = RowWrite | WebhookRecord


def _key_clause(key: SessionKey) -> tuple[Any, ...]:
    return (SessionRow.room_sid == key.room_sid, SessionRow.participant_sid == key.participant_sid)


def tracked(r: SessionRow) -> TrackedSession:
    return TrackedSession(
        room_name=r.room_name,
        room_sid=r.room_sid,
        participant_sid=r.participant_sid,
        identity=r.participant_identity,
        name=r.participant_name or "",
        kind=r.participant_kind,
        agent_name=r.agent_name,
        attributes=dict(r.attributes or {}),
        joined_at=r.joined_at,
        last_seen_at=r.last_seen_at,
        kind_details=tuple(r.participant_kind_details.split(","))
        if r.participant_kind_details
        else (),
        join_precision_ms=r.join_precision_ms,
    )


def apply_ops(db: Session, ops: Sequence[Write], observer_id: str, now: datetime) -> list[str]:
    """Apply a batch of tracker writes and webhook records inside the caller's transaction.

    Every write is idempotent, so a batch that failed half-way can be retried whole.
    Returns the usage totals that went backwards (see `record_usage`).
    """
    backwards: list[str] = []
    spans: list[SpanEnded] = []  # written together, in order before any other write
    for op in ops:
        if isinstance(op, SpanEnded):
            spans.append(op)
            continue
        open_spans.record(db, spans, observer_id)
        spans.clear()
        match op:
            case Open():
                _open(db, op.session, observer_id, now)
            case Close():
                _close(db, op, observer_id, now)
            case RefreshLastSeen():
                _touch(db, op.keys, op.at, now)
            case UpdateAttributes():
                db.execute(
                    update(SessionRow)
                    .where(*_key_clause(op.key))
                    .values(
                        attributes=dict(op.attributes), agent_name=op.agent_name, updated_at=now
                    )
                )
            case Witnessed():
                _witnessed(db, op, observer_id)
            case RoomSeen():
                _room_seen(db, op, now)
            case RoomPresence():
                _room_presence(db, op, now)
            case RoomEnded():
                _room_ended(db, op, now)
            case RecordUsage():
                backwards += record_usage(db, op.report, now)
            case WebhookRecord():
                insert_webhook(db, op)
            case SpanEnded():
                pass  # gathered above
            case _:
                assert_never(op)
    open_spans.record(db, spans, observer_id)
    return backwards


def metadata_object(metadata: str | None) -> dict[str, Any] | None:
    """The room's metadata read as a JSON object, or None when it is not one."""
    if not metadata:
        return None
    try:
        value = json.loads(metadata)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _room_seen(db: Session, op: RoomSeen, now: datetime) -> None:
    """Record the room: its metadata when this brings some, its peaks of company."""
    dialect = db.get_bind().dialect.name
    greatest = func.greatest if dialect == "postgresql" else func.max
    t = RoomRow.__table__
    values: dict[str, Any] = dict(
        sid=op.room_sid,
        name=op.room_name,
        metadata=op.metadata if op.metadata is not None else "",
        metadata_json=metadata_object(op.metadata),
        created_at=op.created_at,
        first_seen_at=op.at,
        max_agents=op.agents,
        max_participants=op.participants,
        updated_at=now,
    )
    stmt = dialect_insert(dialect, t).values(**values)
    new = stmt.excluded
    changes: dict[str, Any] = dict(
        name=new.name,
        created_at=func.coalesce(t.c.created_at, new.created_at),
        first_seen_at=func.least(t.c.first_seen_at, new.first_seen_at)
        if dialect == "postgresql"
        else func.min(t.c.first_seen_at, new.first_seen_at),
        max_agents=greatest(t.c.max_agents, new.max_agents),
        max_participants=greatest(t.c.max_participants, new.max_participants),
        updated_at=new.updated_at,
    )
    if op.metadata is not None:
        changes.update(metadata=new.metadata, metadata_json=new.metadata_json)
    db.execute(stmt.on_conflict_do_update(index_elements=[t.c.sid], set_=changes))


def _room_presence(db: Session, op: RoomPresence, now: datetime) -> None:
    """The room's company now; a room already ended keeps its zeros."""
    db.execute(
        update(RoomRow)
        .where(RoomRow.sid == op.room_sid, RoomRow.ended_at.is_(None))
        .values(
            agents_now=op.agents,
            company_now=op.company,
            alone_since=op.alone_since,
            updated_at=now,
        )
    )
    if op.alone_since is None:  # company again, or no agents: a later alone spell alerts anew
        db.execute(delete(StuckAlertRow).where(StuckAlertRow.room_sid == op.room_sid))


def _room_ended(db: Session, op: RoomEnded, now: datetime) -> None:
    dialect = db.get_bind().dialect.name
    t = RoomRow.__table__
    stmt = dialect_insert(dialect, t).values(
        sid=op.room_sid,
        name=op.room_name,
        metadata="",
        first_seen_at=op.at,
        ended_at=op.at,
        end_reason=op.reason,
        max_agents=0,
        max_participants=0,
        updated_at=now,
    )
    new = stmt.excluded
    db.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.sid],
            set_=dict(
                ended_at=func.coalesce(t.c.ended_at, new.ended_at),
                end_reason=func.coalesce(t.c.end_reason, new.end_reason),
                agents_now=0,
                company_now=0,
                alone_since=None,
                updated_at=new.updated_at,
            ),
        )
    )
    db.execute(delete(StuckAlertRow).where(StuckAlertRow.room_sid == op.room_sid))


def record_usage(db: Session, report: UsageReport, now: datetime) -> list[str]:
    """Keep an agent session's totals, model by model. Totals reported earlier than the
    ones kept change nothing (a repeat, or another observer's copy arriving late); newer
    totals replace them. Newer totals lower than the kept ones are kept as the larger of
    each counter and flagged `went_backwards`. Returns what went backwards (kind/model)."""
    backwards = []
    dialect = db.get_bind().dialect.name
    for m in report.models:
        key = dict(
            room_sid=report.room_sid,
            participant_sid=report.participant_sid,
            kind=m.kind,
            provider=m.provider,
            model=m.model,
        )
        new = m.counters()
        inserted = db.execute(
            dialect_insert(dialect, AgentUsageRow)
            .values(
                **key,
                **new,
                participant_identity=report.identity,
                reported_at=report.reported_at,
                first_reported_at=report.reported_at,
                source=report.source,
                went_backwards=False,
                updated_at=now,
            )
            .on_conflict_do_nothing()
            .returning(AgentUsageRow.kind)
        ).first()
        if inserted is not None:
            continue
        query = select(AgentUsageRow).filter_by(**key)
        if dialect == "postgresql":
            query = query.with_for_update()
        row = db.execute(query).scalar_one()
        if report.reported_at <= row.reported_at:
            continue
        old = {name: getattr(row, name) for name in COUNTERS}
        if new == old:
            continue
        went_back = any(new[name] < old[name] for name in COUNTERS)
        if went_back:
            backwards.append(
                f"{report.room_sid}/{report.participant_sid}: {m.kind} {m.provider}/{m.model}"
            )
            new = {name: max(new[name], old[name]) for name in COUNTERS}
        db.execute(
            update(AgentUsageRow)
            .filter_by(**key)
            .values(
                **new,
                reported_at=report.reported_at,
                source=report.source,
                went_backwards=row.went_backwards or went_back,
                updated_at=now,
            )
        )
    return backwards


def insert_webhook(db: Session, rec: WebhookRecord) -> bool:
    """Store a webhook event once; True if this call stored it, False if it was already
    there (a redelivery, whichever process received the first one)."""
    stmt = dialect_insert(db.get_bind().dialect.name, WebhookEventRow).values(**vars(rec))
    stmt = stmt.on_conflict_do_nothing(index_elements=["id"]).returning(WebhookEventRow.id)
    return db.execute(stmt).first() is not None


def _witnessed(db: Session, op: Witnessed, observer_id: str) -> None:
    rows = [
        {
            "room_sid": k.room_sid,
            "participant_sid": k.participant_sid,
            "observer_id": observer_id,
            "first_seen_at": op.at,
        }
        for k in op.keys
    ]
    stmt = dialect_insert(db.get_bind().dialect.name, SessionWitnessRow)
    db.execute(stmt.on_conflict_do_nothing(), rows)


def _open(db: Session, s: TrackedSession, observer_id: str, now: datetime) -> None:
    values: dict[str, Any] = dict(
        room_name=s.room_name,
        room_sid=s.room_sid,
        participant_sid=s.participant_sid,
        participant_identity=s.identity,
        participant_name=s.name or None,
        participant_kind=s.kind,
        agent_name=s.agent_name,
        attributes=dict(s.attributes),
        joined_at=s.joined_at,
        last_seen_at=s.last_seen_at,
        observer_id=observer_id,
        created_at=now,
        updated_at=now,
    )
    # the columns of revision 0019 only when they say something: a row opened so reads alike
    # on a schema before it (the database's default is 1)
    if s.kind_details:
        values["participant_kind_details"] = ",".join(s.kind_details)
    if s.join_precision_ms != 1:
        values["join_precision_ms"] = s.join_precision_ms
    stmt = dialect_insert(db.get_bind().dialect.name, SessionRow).values(**values)
    db.execute(stmt.on_conflict_do_nothing(index_elements=["room_sid", "participant_sid"]))


def _close(db: Session, op: Close, observer_id: str, now: datetime) -> None:
    """Close the session, with the timeline of the observer whose end counted: only that
    observer's spans are kept, one timeline per session."""
    row = db.execute(
        select(SessionRow.id, SessionRow.joined_at).where(
            *_key_clause(op.key), SessionRow.left_at.is_(None)
        )
    ).first()
    if row is None or not close_row(
        db, row.id, row.joined_at, ending_of(op), now=now, spans_of=observer_id
    ):
        open_spans.forget(db, op.key, observer_id)  # another end closed it


def _touch(db: Session, keys: Iterable[SessionKey], at: datetime, now: datetime) -> None:
    # In key order: several observers touch the same rows, and updates taken in one order
    # by all cannot deadlock one another.
    params = [
        {"r": k.room_sid, "p": k.participant_sid, "at": at, "now": now}
        for k in sorted(keys, key=lambda k: (k.room_sid, k.participant_sid))
    ]
    if not params:
        return
    table = Base.metadata.tables["sessions"]
    stmt = (
        update(table)
        .where(
            table.c.room_sid == bindparam("r"),
            table.c.participant_sid == bindparam("p"),
            table.c.left_at.is_(None),
        )
        .values(last_seen_at=bindparam("at"), updated_at=bindparam("now"))
    )
    db.connection().execute(stmt, params)


def open_sessions(engine: Engine, observer_id: str) -> list[TrackedSession]:
    """Sessions this observer left open, to continue after a restart."""
    with Session(engine) as db:
        rows = db.scalars(
            select(SessionRow)
            .where(SessionRow.left_at.is_(None), SessionRow.observer_id == observer_id)
            .order_by(SessionRow.id)
        ).all()
        return [tracked(r) for r in rows]
