"""The database: the typed schema and every read and write the daemon makes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from observer.tracker import Close, Op, Open, SessionKey, Touch, TrackedSession, UpdateAttributes

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no timezone type; storing naive UTC there and attaching UTC on the way
    out gives the same values, ordering and comparisons as PostgreSQL's timestamptz.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SessionRow(Base):
    """One participant session (one participant sid in one room)."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    room_name: Mapped[str] = mapped_column(Text)
    room_sid: Mapped[str] = mapped_column(Text)
    participant_sid: Mapped[str] = mapped_column(Text)
    participant_identity: Mapped[str] = mapped_column(Text)
    participant_name: Mapped[str | None] = mapped_column(Text)
    participant_kind: Mapped[str] = mapped_column(Text)
    agent_name: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    disconnect_reason: Mapped[str | None] = mapped_column(Text)
    end_source: Mapped[str | None] = mapped_column(Text)
    end_uncertainty_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    observer_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("room_sid", "participant_sid"),
        Index("ix_sessions_agent_name_joined_at", "agent_name", "joined_at"),
        Index("ix_sessions_room_name_joined_at", "room_name", "joined_at"),
        Index("ix_sessions_participant_identity_joined_at", "participant_identity", "joined_at"),
        Index("ix_sessions_joined_at", "joined_at"),
        Index(
            "ix_sessions_open",
            "observer_id",
            "room_sid",
            sqlite_where=text("left_at IS NULL"),
            postgresql_where=text("left_at IS NULL"),
        ),
    )


class WebhookEventRow(Base):
    """Every accepted LiveKit webhook event, once (deduplicated by the event id)."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    event: Mapped[str] = mapped_column(Text)
    room_name: Mapped[str | None] = mapped_column(Text)
    room_sid: Mapped[str | None] = mapped_column(Text)
    participant_sid: Mapped[str | None] = mapped_column(Text)
    participant_identity: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_webhook_events_created_at", "created_at"),
        Index("ix_webhook_events_room_sid_participant_sid", "room_sid", "participant_sid"),
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


Write = Op | WebhookRecord


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine with the settings this project relies on for each backend."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


@dataclass(frozen=True)
class SessionFilter:
    room: str | None = None
    identity: str | None = None
    agent_name: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None  # "open" | "closed" | None
    limit: int | None = None


class Store:
    """Owns the engine; every method is synchronous and runs one transaction."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def schema_is_current(self) -> bool:
        from observer.migrate import is_current

        return is_current(self.engine)

    def apply(self, ops: Sequence[Write], observer_id: str) -> None:
        """Apply a batch of tracker operations in one transaction.

        Every operation is idempotent, so a batch that failed half-way can be retried whole.
        """
        now = utcnow()
        with Session(self.engine) as db, db.begin():
            for op in ops:
                if isinstance(op, Open):
                    self._open(db, op.session, observer_id, now)
                elif isinstance(op, Close):
                    self._close(db, op, now)
                elif isinstance(op, Touch):
                    self._touch(db, op.keys, op.at, now)
                elif isinstance(op, WebhookRecord):
                    insert = (
                        pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
                    )
                    stmt = insert(WebhookEventRow).values(**vars(op))
                    db.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
                elif isinstance(op, UpdateAttributes):
                    db.execute(
                        update(SessionRow)
                        .where(*_key_clause(op.key))
                        .values(
                            attributes=dict(op.attributes), agent_name=op.agent_name, updated_at=now
                        )
                    )

    def _open(self, db: Session, s: TrackedSession, observer_id: str, now: datetime) -> None:
        values = dict(
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
        insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(SessionRow).values(**values)
        db.execute(stmt.on_conflict_do_nothing(index_elements=["room_sid", "participant_sid"]))

    def _close(self, db: Session, op: Close, now: datetime) -> None:
        row = db.execute(
            select(SessionRow.id, SessionRow.joined_at).where(
                *_key_clause(op.key), SessionRow.left_at.is_(None)
            )
        ).first()
        if row is None:
            return
        left_at = max(op.left_at, row.joined_at)
        duration_ms = round((left_at - row.joined_at).total_seconds() * 1000)
        db.execute(
            update(SessionRow)
            .where(SessionRow.id == row.id, SessionRow.left_at.is_(None))
            .values(
                left_at=left_at,
                duration_ms=duration_ms,
                disconnect_reason=op.reason,
                end_source=op.end_source,
                end_uncertainty_ms=op.uncertainty_ms,
                last_seen_at=max(op.last_seen_at, row.joined_at),
                updated_at=now,
            )
        )

    def _touch(self, db: Session, keys: Iterable[SessionKey], at: datetime, now: datetime) -> None:
        params = [{"r": k.room_sid, "p": k.participant_sid, "at": at, "now": now} for k in keys]
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

    def webhook_events(self) -> list[WebhookEventRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            rows = list(db.scalars(select(WebhookEventRow).order_by(WebhookEventRow.received_at)))
            db.expunge_all()
            return rows

    def open_sessions(self, observer_id: str) -> list[TrackedSession]:
        """Sessions this observer left open, to continue after a restart."""
        with Session(self.engine) as db:
            rows = db.scalars(
                select(SessionRow)
                .where(SessionRow.left_at.is_(None), SessionRow.observer_id == observer_id)
                .order_by(SessionRow.id)
            ).all()
            return [_tracked(r) for r in rows]

    def sessions(self, f: SessionFilter) -> list[SessionRow]:
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
        with Session(self.engine, expire_on_commit=False) as db:
            rows = list(db.scalars(q).all())
            db.expunge_all()
            return rows


def _key_clause(key: SessionKey) -> tuple[Any, ...]:
    return (SessionRow.room_sid == key.room_sid, SessionRow.participant_sid == key.participant_sid)


def _tracked(r: SessionRow) -> TrackedSession:
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
    )
