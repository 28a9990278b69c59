"""The database: the typed schema and every read and write the daemon and reports make."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ColumnElement,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from observer.tracker import (
    END_RECONCILED,
    Close,
    Op,
    Open,
    SessionKey,
    Touch,
    TrackedSession,
    UpdateAttributes,
)

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
        Index("ix_sessions_duration_ms", "duration_ms"),
        Index(
            "ix_sessions_open_joined_at",
            "joined_at",
            sqlite_where=text("left_at IS NULL"),
            postgresql_where=text("left_at IS NULL"),
        ),
        Index(
            "ix_sessions_open",
            "observer_id",
            "room_sid",
            sqlite_where=text("left_at IS NULL"),
            postgresql_where=text("left_at IS NULL"),
        ),
    )


class PeriodRollupRow(Base):
    """One group's standing time in one period, written by `observer reconcile`."""

    __tablename__ = "period_rollups"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    group_kind: Mapped[str] = mapped_column(Text)
    group_key: Mapped[str] = mapped_column(Text)
    sessions: Mapped[int] = mapped_column(BigInteger)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    billable_minutes: Mapped[int] = mapped_column(BigInteger)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("period_start", "period_end", "group_kind", "group_key"),
        CheckConstraint("group_kind IN ('agent', 'room', 'total')", name="group_kind"),
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


def _insert(dialect: str, target: Any) -> Any:
    """An INSERT that can take ON CONFLICT, in the dialect's own flavour."""
    return pg_insert(target) if dialect == "postgresql" else sqlite_insert(target)


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
                    stmt = _insert(db.get_bind().dialect.name, WebhookEventRow).values(**vars(op))
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
        stmt = _insert(db.get_bind().dialect.name, SessionRow).values(**values)
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

    def usage(self, spec: UsageSpec) -> list[UsageTotal]:
        """Standing time per group and bucket, computed in SQL."""
        with self.engine.connect() as conn:
            return _usage(conn, spec)

    def stale_open_sessions(self, seen_before: datetime) -> list[StaleSession]:
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
        with Session(self.engine) as db:
            return [StaleSession(*row) for row in db.execute(q)]

    @contextmanager
    def rollup_transaction(self) -> Iterator[RollupTx]:
        """One transaction for a reconcile run: committed when the block ends normally."""
        with Session(self.engine) as db, db.begin():
            yield RollupTx(db)


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


# ---- usage: standing time per group inside a window, and period rollups -------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS = 60_000
# `UsageSpec.group_by` names -> the sessions column each groups by
USAGE_GROUP_COLUMNS = {
    "agent": "agent_name",
    "identity": "participant_identity",
    "room": "room_name",
}


def epoch_ms(at: datetime) -> int:
    """Whole milliseconds since the Unix epoch, truncated as the SQL below truncates."""
    return (at - EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class UsageSpec:
    """What `Store.usage` sums.

    Each session is clipped to [edges[0], edges[-1]) and cut at the inner edges into pieces,
    one per bucket (bucket i is [edges[i], edges[i + 1])). Each piece is rounded up to a
    multiple of `round_to_ms`; for `billable_minutes` each piece is rounded up to a minute.
    """

    edges: tuple[datetime, ...]
    group_by: tuple[str, ...] = ()
    open_until: datetime | None = None  # open sessions count up to here; None leaves them out
    round_to_ms: int = 1
    kind: str | None = "agent"


class UsageTotal(NamedTuple):  # a tuple: a month by agent and day is 30,000 of them
    keys: tuple[str | None, ...]  # one value per `UsageSpec.group_by` entry
    bucket: int
    sessions: int
    duration_ms: int
    billable_minutes: int


@dataclass(frozen=True)
class Rollup:
    """One group's standing time in one period, as stored in `period_rollups`."""

    group_kind: str  # "agent" | "room" | "total"
    group_key: str  # the agent or room name; "" for sessions without an agent name, and total
    sessions: int
    duration_ms: int
    billable_minutes: int
    finalized_at: datetime | None = None
    computed_at: datetime | None = None


@dataclass(frozen=True)
class StaleSession:
    """An open session that no observer has confirmed present lately."""

    id: int
    room_name: str
    room_sid: str
    participant_sid: str
    joined_at: datetime
    last_seen_at: datetime


class RollupTx:
    """The reads and writes of one reconcile run, all inside one transaction."""

    def __init__(self, db: Session) -> None:
        self.db = db

    def settle(self, sessions: Iterable[StaleSession], now: datetime) -> int:
        """Close sessions whose participant is gone, as the daemon does at start-up: at the
        last time they were seen, with the gap up to `now` as the uncertainty.

        A row that was closed or seen again since it was read is left alone, so a daemon
        still watching it wins. Returns how many rows were closed.
        """
        closed = 0
        conn = self.db.connection()
        for s in sessions:
            left_at = max(s.last_seen_at, s.joined_at)
            stmt = (
                update(SessionRow)
                .where(
                    SessionRow.id == s.id,
                    SessionRow.left_at.is_(None),
                    SessionRow.last_seen_at == s.last_seen_at,
                )
                .values(
                    left_at=left_at,
                    duration_ms=round((left_at - s.joined_at).total_seconds() * 1000),
                    disconnect_reason=None,
                    end_source=END_RECONCILED,
                    end_uncertainty_ms=max(0, round((now - s.last_seen_at).total_seconds() * 1000)),
                    updated_at=now,
                )
            )
            closed += conn.execute(stmt).rowcount
        return closed

    def usage(self, spec: UsageSpec) -> list[UsageTotal]:
        """As `Store.usage`, inside this transaction (after its settling)."""
        return _usage(self.db.connection(), spec)

    def rollups(self, start: datetime, end: datetime) -> list[Rollup]:
        """The stored rows of one period, by group."""
        t = Base.metadata.tables["period_rollups"]
        q = (
            select(*(t.c[f.name] for f in fields(Rollup)))
            .where(t.c.period_start == start, t.c.period_end == end)
            .order_by(t.c.group_kind, t.c.group_key)
        )
        return [Rollup(*row) for row in self.db.execute(q).all()]

    def write_rollups(
        self,
        start: datetime,
        end: datetime,
        rows: Sequence[Rollup],
        drop: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Insert or replace `rows` of the period; delete the groups in `drop`."""
        table = Base.metadata.tables["period_rollups"]
        conn = self.db.connection()
        if drop:
            stmt = delete(table).where(
                table.c.period_start == start,
                table.c.period_end == end,
                table.c.group_kind == bindparam("kind"),
                table.c.group_key == bindparam("key"),
            )
            conn.execute(stmt, [{"kind": kind, "key": key} for kind, key in drop])
        if not rows:
            return
        insert = _insert(conn.dialect.name, table)
        numbers = ("sessions", "duration_ms", "billable_minutes", "finalized_at", "computed_at")
        upsert = insert.on_conflict_do_update(
            index_elements=["period_start", "period_end", "group_kind", "group_key"],
            set_={c: insert.excluded[c] for c in numbers},
        )
        conn.execute(
            upsert,
            [{"period_start": start, "period_end": end, **vars(r)} for r in rows],
        )


def _usage(conn: Connection, spec: UsageSpec) -> list[UsageTotal]:
    if conn.dialect.name == "postgresql":
        # For this transaction only: the planner's cost estimate is high enough to start JIT
        # compiling, which takes longer than the query itself; and with the default work_mem
        # (4MB) it groups a month by agent and day by sorting, about 1.6 times slower.
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '32MB'")
    # How long before the window a session that reaches into it can have started: by the
    # longest closed session, or when the oldest open one started. Both come from indexes,
    # and the bound lets a window late in a long history read only the end of it.
    t = Base.metadata.tables["sessions"]
    oldest_open = select(func.min(t.c.joined_at)).where(t.c.left_at.is_(None)).scalar_subquery()
    longest_ms, oldest_open_at = conn.execute(select(func.max(t.c.duration_ms), oldest_open)).one()
    since = spec.edges[0] - timedelta(milliseconds=(longest_ms or 0) + 1000)  # ms are rounded
    if spec.open_until is not None and oldest_open_at is not None:
        since = min(since, oldest_open_at)
    rows = conn.execute(_usage_query(spec, conn.dialect.name, since)).all()
    width = len(spec.group_by)
    return [UsageTotal(tuple(row[:width]), *row[width:]) for row in rows]


def _usage_query(spec: UsageSpec, dialect: str, since: datetime) -> Select[Any]:
    """Sum the pieces of sessions per group and bucket, in whole milliseconds.

    Each session (that started at or after `since`) is clipped to the window, then gets one
    row per bucket it touches (nearly always one), then the piece inside that bucket is
    measured, rounded and summed.
    """
    t = Base.metadata.tables["sessions"]
    edges = [epoch_ms(e) for e in spec.edges]
    start, end = spec.edges[0], spec.edges[-1]

    def ms(value: int) -> ColumnElement[int]:
        return literal(value, BigInteger)

    def greatest(a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
        fn = func.max if dialect == "sqlite" else func.greatest
        return fn(a, b, type_=BigInteger)

    def least(a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
        fn = func.min if dialect == "sqlite" else func.least
        return fn(a, b, type_=BigInteger)

    left_ms = _epoch_ms_sql(t.c.left_at, dialect)
    wanted = [t.c.joined_at >= since, t.c.joined_at < end]
    if spec.kind is not None:
        wanted.append(t.c.participant_kind == spec.kind)
    ended: ColumnElement[int]
    if spec.open_until is None:
        wanted.append(t.c.left_at > start)
        ended = left_ms
    else:
        wanted.append(or_(t.c.left_at.is_(None), t.c.left_at > start))
        open_end = ms(min(epoch_ms(spec.open_until), edges[-1]))
        ended = case((t.c.left_at.is_(None), open_end), else_=left_ms)
    keys = [t.c[USAGE_GROUP_COLUMNS[g]].label(f"k{i}") for i, g in enumerate(spec.group_by)]
    clipped = select(
        *keys,
        greatest(_epoch_ms_sql(t.c.joined_at, dialect), ms(edges[0])).label("s"),
        least(ended, ms(edges[-1])).label("e"),
    ).where(*wanted)
    if dialect == "sqlite":
        # Keeps SQLite from flattening this subquery into its users, which would compute
        # the times above again for every place they are used.
        clipped = clipped.limit(-1)
    c = clipped.subquery("clipped").c
    ckeys = [c[f"k{i}"] for i in range(len(keys))]

    # Each part gives (keys..., bucket, ms): one row per piece of a session in a bucket.
    parts: list[Select[Any]]
    if len(edges) == 2:
        whole = select(*ckeys, literal_column("0").label("bucket"), (c.e - c.s).label("ms"))
        parts = [whole.where(c.e > c.s)]
    else:
        bucket_of, edge = _bucketing(edges)
        first, last = bucket_of(c.s), bucket_of(c.e - 1)
        if dialect == "postgresql":
            series = func.generate_series(first, last).label("bucket")
            sp = select(*ckeys, c.s, c.e, series).where(c.e > c.s).subquery("spans")
            piece = least(sp.c.e, edge(sp.c.bucket + 1)) - greatest(sp.c.s, edge(sp.c.bucket))
            parts = [select(*[sp.c[k.name] for k in ckeys], sp.c.bucket, piece.label("ms"))]
        else:
            # No generate_series in SQLite: the piece in the bucket where each session
            # starts, then the later pieces of the few that cross an edge, from a series of
            # offsets.
            src = (
                select(*ckeys, c.s, c.e, first.label("b0"), last.label("b1"))
                .where(c.e > c.s)
                .cte("starts")
            )
            skeys = [src.c[k.name] for k in ckeys]
            n = select(literal_column("1").label("i")).cte("offsets", recursive=True)
            n = n.union_all(select(n.c.i + 1).where(n.c.i < len(edges) - 2))
            b = src.c.b0 + n.c.i
            parts = [
                select(
                    *skeys,
                    src.c.b0.label("bucket"),
                    (least(src.c.e, edge(src.c.b0 + 1)) - src.c.s).label("ms"),
                ),
                select(
                    *skeys, b.label("bucket"), (least(src.c.e, edge(b + 1)) - edge(b)).label("ms")
                )
                .select_from(src.join(n, n.c.i <= src.c.b1 - src.c.b0))
                .where(src.c.b1 > src.c.b0),
            ]

    def summed(pieces: Select[Any]) -> Select[Any]:
        p = pieces.subquery()
        pkeys = [p.c[k.name] for k in ckeys]
        r = spec.round_to_ms
        rounded = p.c.ms if r == 1 else (p.c.ms + (r - 1)) // r * r
        minutes = (p.c.ms + (MINUTE_MS - 1)) // MINUTE_MS
        # PostgreSQL sums bigints as numeric: back to bigint, or each comes as a Decimal.
        return select(
            *pkeys,
            p.c.bucket,
            func.count().label("sessions"),
            cast(func.sum(rounded), BigInteger).label("ms"),
            cast(func.sum(minutes), BigInteger).label("minutes"),
        ).group_by(*pkeys, p.c.bucket)

    if len(parts) == 1:
        return summed(parts[0])
    # Summing each part first and then the sums is faster in SQLite than one sum over both.
    both = union_all(*(summed(part) for part in parts)).subquery("parts")
    bkeys = [both.c[k.name] for k in ckeys]
    sums = (func.sum(both.c[x]) for x in ("sessions", "ms", "minutes"))
    return select(*bkeys, both.c.bucket, *sums).group_by(*bkeys, both.c.bucket)


def _epoch_ms_sql(col: ColumnElement[datetime | None], dialect: str) -> ColumnElement[int]:
    """Whole milliseconds since the epoch of a stored time, truncated, exact on both backends."""
    if dialect == "sqlite":
        # Stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'; julianday() would round the
        # microseconds, so cut them off first. The double it returns is within 0.03 ms of
        # the exact value, which round() then restores.
        day = func.julianday(func.substr(col, 1, 23)) - 2440587.5
        return cast(func.round(day * 86_400_000.0), BigInteger)
    # date_part() is a double within 0.25 us of the exact epoch (extract() is exact but its
    # numeric arithmetic is several times slower); half a microsecond more keeps floor()
    # exact for every whole microsecond.
    return cast(func.floor(func.date_part("epoch", col) * 1000 + 0.0005), BigInteger)


def _bucketing(
    edges: list[int],
) -> tuple[
    Callable[[ColumnElement[int]], ColumnElement[int]],
    Callable[[ColumnElement[int]], ColumnElement[int]],
]:
    """SQL for the bucket number of a time, and for the start of bucket number i.

    Evenly spaced edges (days) are arithmetic; others (months) a CASE over the edges.
    """
    inner = edges[1:-1]
    steps = {b - a for a, b in pairwise(inner)}
    if len(steps) == 1:
        width = steps.pop()
        origin = inner[0] - width
        if edges[0] >= origin and edges[-1] <= inner[-1] + width:

            def uniform_bucket(x: ColumnElement[int]) -> ColumnElement[int]:
                return (x - literal(origin, BigInteger)) // width

            def uniform_edge(i: ColumnElement[int]) -> ColumnElement[int]:
                return literal(origin, BigInteger) + i * literal(width, BigInteger)

            return uniform_bucket, uniform_edge

    def bucket(x: ColumnElement[int]) -> ColumnElement[int]:
        whens = [(x < literal(e, BigInteger), i) for i, e in enumerate(inner)]
        return case(*whens, else_=len(inner))

    def edge(i: ColumnElement[int]) -> ColumnElement[int]:
        return case({n: literal(e, BigInteger) for n, e in enumerate(edges)}, value=i)

    return bucket, edge
