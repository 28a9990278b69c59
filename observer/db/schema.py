"""The tables, as typed models; Alembic's migrations follow them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# PostgreSQL: a stored time as whole milliseconds since the epoch, truncated
EPOCH_MS = "floor(extract(epoch from ({} - timestamptz '1970-01-01 00:00:00+00')) * 1000)::bigint"
# ... and what the database derives from the two (PostgreSQL's generated columns cannot read
# one another, so each repeats them; SQLite's read `joined_ms` and `left_ms`: migration 0015)
JOINED_MS, LEFT_MS = f"({EPOCH_MS.format('joined_at')})", f"({EPOCH_MS.format('left_at')})"
DURATION_MS = f"{LEFT_MS} - {JOINED_MS}"
KNOWN_STATES_MS = " + ".join(
    f"state_{s}_ms" for s in ("initializing", "idle", "listening", "thinking", "speaking", "other")
)
UNKNOWN_MS = f"({DURATION_MS}) - ({KNOWN_STATES_MS})"
DAY_MS = 86_400_000

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# JSON objects that reports group by a key of: PostgreSQL keeps them as jsonb, whose keys
# are read without parsing the text again for every row
JSON_OBJECT = JSON().with_variant(JSONB(), "postgresql")


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
    # LiveKit's kind details, comma-separated (`CLOUD_AGENT`, `DETAIL_<number>`); NULL if none
    participant_kind_details: Mapped[str | None] = mapped_column(Text)
    agent_name: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, str]] = mapped_column(JSON_OBJECT, default=dict)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # 1 when LiveKit gave the join time in milliseconds, 1000 when in whole seconds (a webhook
    # without joinedAtMs); NULL when it gave none (the rtc SDK on servers before 1.8.4) and
    # joined_at is when the observer first saw the participant
    join_precision_ms: Mapped[int | None] = mapped_column(Integer, server_default=text("1"))
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # left_ms - joined_ms, by the database; NULL while open
    duration_ms: Mapped[int | None] = mapped_column(
        BigInteger, Computed(text(DURATION_MS), persisted=True)
    )
    disconnect_reason: Mapped[str | None] = mapped_column(Text)
    end_source: Mapped[str | None] = mapped_column(Text)
    end_uncertainty_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    observer_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What the agent did, set when the session ends by the observer that recorded the end:
    # from `observed_from` (the join when it saw the join, else when it first saw the
    # participant) to `left_at`. NULL while open, or when no observer watched it.
    observed_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state_initializing_ms: Mapped[int | None] = mapped_column(BigInteger)
    state_idle_ms: Mapped[int | None] = mapped_column(BigInteger)
    state_listening_ms: Mapped[int | None] = mapped_column(BigInteger)
    state_thinking_ms: Mapped[int | None] = mapped_column(BigInteger)
    state_speaking_ms: Mapped[int | None] = mapped_column(BigInteger)
    state_other_ms: Mapped[int | None] = mapped_column(BigInteger)
    # the rest of duration_ms (never below 0), by the database; NULL while the states are
    state_unknown_ms: Mapped[int | None] = mapped_column(
        BigInteger,
        Computed(text(f"CASE WHEN {UNKNOWN_MS} < 0 THEN 0 ELSE {UNKNOWN_MS} END"), persisted=True),
    )
    alone_ms: Mapped[int | None] = mapped_column(BigInteger)
    # a closed session that holds a UTC midnight (its last millisecond is on a later day than
    # its first): the few `observer usage` cuts. By the database; false while open.
    crosses_day: Mapped[bool] = mapped_column(
        Boolean,
        Computed(
            text(f"coalesce(({LEFT_MS} - 1) / {DAY_MS} > {JOINED_MS} / {DAY_MS}, false)"),
            persisted=True,
        ),
    )
    # joined_at and left_at as whole milliseconds since the epoch, truncated: what the usage
    # sums measure, kept by the database itself. The expression is PostgreSQL's; SQLite
    # computes the same value with its own functions (migration 0013).
    joined_ms: Mapped[int | None] = mapped_column(
        BigInteger, Computed(text(EPOCH_MS.format("joined_at")), persisted=True)
    )
    left_ms: Mapped[int | None] = mapped_column(
        BigInteger, Computed(text(EPOCH_MS.format("left_at")), persisted=True)
    )

    __table_args__ = (
        UniqueConstraint("room_sid", "participant_sid"),
        Index(
            "ix_sessions_crosses_day_joined_at",
            "joined_at",
            sqlite_where=text("crosses_day"),
            postgresql_where=text("crosses_day"),
        ),
        Index("ix_sessions_agent_name_joined_at", "agent_name", "joined_at"),
        Index("ix_sessions_room_name_joined_at", "room_name", "joined_at"),
        Index("ix_sessions_participant_identity_joined_at", "participant_identity", "joined_at"),
        # (join, id): prune walks the sessions that ended before its cut-off in this order
        Index("ix_sessions_joined_at_id", "joined_at", "id"),
        Index("ix_sessions_duration_ms", "duration_ms"),
        Index(
            "ix_sessions_closed_updated_at",
            "updated_at",
            sqlite_where=text("left_at IS NOT NULL"),
            postgresql_where=text("left_at IS NOT NULL"),
        ),
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
        Index(
            "ix_sessions_open_room_sid",
            "room_sid",
            sqlite_where=text("left_at IS NULL"),
            postgresql_where=text("left_at IS NULL"),
        ),
    )


class RoomRow(Base):
    """One row per room (by sid) the observer has been in or heard of: a public interface,
    like `sessions`."""

    __tablename__ = "rooms"

    sid: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # the room's metadata as last seen ("" when none); `metadata_json` is the same read as
    # a JSON object, or NULL when it is not one (what `--by room-metadata:KEY` reads)
    metadata_: Mapped[str] = mapped_column("metadata", Text, default="")
    metadata_json: Mapped[dict[str, Any] | None] = mapped_column(JSON_OBJECT)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # by the server
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(Text)
    max_agents: Mapped[int] = mapped_column(Integer, default=0)
    max_participants: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # who is in it now, as an observer inside last saw (0 once it ended); `alone_since`:
    # since when its agents have had no company, NULL when they have or there are none
    agents_now: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    company_now: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    alone_since: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_rooms_name", "name"),
        Index("ix_rooms_first_seen_at", "first_seen_at"),
    )


class SessionSpanRow(Base):
    """A stretch of a finished session: `kind` 'state' (`value` is the `lk.agent.state`)
    or 'alone' (no company in the room; `value` ''). Written with the session's end, by the
    observer that recorded it; the reports cut sessions at window and day edges with them."""

    __tablename__ = "session_spans"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    room_sid: Mapped[str] = mapped_column(Text)
    participant_sid: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_session_spans_room_sid_participant_sid", "room_sid", "participant_sid"),
        CheckConstraint("kind IN ('state', 'alone')", name="kind"),
    )


class OpenSessionSpanRow(Base):
    """A stretch of an open session's timeline, written as it ends by the observer that
    saw it (one observer's spans never overlap; several observers' may). When the session
    closes, the spans of the observer whose end counted move to `session_spans`, cut to the
    session, and all of the session's rows here go: `observer.db.closing`."""

    __tablename__ = "open_session_spans"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    room_sid: Mapped[str] = mapped_column(Text)
    participant_sid: Mapped[str] = mapped_column(Text)
    observer_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # when the observer began watching the session (the closed row's `observed_from`)
    observed_from: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # a span written twice (a batch retried after a commit whose answer was lost) is one
        UniqueConstraint(
            "room_sid",
            "participant_sid",
            "observer_id",
            "kind",
            "started_at",
            name="uq_open_session_spans_span",
        ),
        CheckConstraint("kind IN ('state', 'alone')", name="kind"),
    )


class AgentUsageRow(Base):
    """An agent session's latest cumulative usage of one model: one row per (session,
    kind, provider, model). Linked to `sessions` by (`room_sid`, `participant_sid`); it may
    arrive before the session's row does, or for a session never recorded."""

    __tablename__ = "agent_usage"

    room_sid: Mapped[str] = mapped_column(Text, primary_key=True)
    participant_sid: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    participant_identity: Mapped[str] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    input_cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    input_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    input_text_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_text_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    characters: Mapped[int] = mapped_column(BigInteger, default=0)
    audio_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    session_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(Text)
    went_backwards: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_agent_usage_reported_at", "reported_at"),
        CheckConstraint("kind IN ('llm', 'tts', 'stt')", name="kind"),
    )


class SessionWitnessRow(Base):
    """An observer that saw a session's participant in the room itself (not only through a
    webhook): one row per (session, observer)."""

    __tablename__ = "session_witnesses"

    room_sid: Mapped[str] = mapped_column(Text, primary_key=True)
    participant_sid: Mapped[str] = mapped_column(Text, primary_key=True)
    observer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ObserverRow(Base):
    """A running observer, as its heartbeats show it; the membership rooms are placed by.
    `run_id` names the process holding the id (new at each start; its participant identity
    in rooms ends with it): one live run per id."""

    __tablename__ = "observers"

    observer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    run_id: Mapped[str] = mapped_column(Text, server_default="")
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopping: Mapped[bool] = mapped_column(Boolean, default=False)
    rooms: Mapped[list[str]] = mapped_column(JSON, default=list)  # names of rooms it is in


class StuckAlertRow(Base):
    """A stuck-agent alert raised for a room, by whichever observer claimed it first; gone
    once the room has company again, its agents left, or it ended. With several observers,
    one alert per occurrence."""

    __tablename__ = "stuck_alerts"

    room_sid: Mapped[str] = mapped_column(Text, primary_key=True)
    room_name: Mapped[str] = mapped_column(Text)
    alone_since: Mapped[datetime] = mapped_column(UTCDateTime)
    alerted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    observer_id: Mapped[str] = mapped_column(Text)


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
    # with `observer reconcile --prices`: the group's cost as exact decimal text; NULL when
    # not priced, or when something in it had no price
    cost: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("period_start", "period_end", "group_kind", "group_key"),
        CheckConstraint(
            "group_kind IN ('agent', 'room', 'total', 'room-metadata')"
            " OR group_kind LIKE 'attribute:_%'"
            " OR group_kind LIKE 'room-metadata:_%'",
            name="group_kind",
        ),
    )


class ReconcileComparisonRow(Base):
    """The last comparison of a period with a provider's statement (`observer reconcile
    --statement`): one row per period, replaced by the next comparison."""

    __tablename__ = "reconcile_comparisons"

    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    compared_at: Mapped[datetime] = mapped_column(UTCDateTime)
    statement: Mapped[str] = mapped_column(Text)  # the statement file's name
    tolerance_minutes: Mapped[str] = mapped_column(Text)
    groups_compared: Mapped[int] = mapped_column(Integer)
    # [{group_kind, group_key, observer_minutes, statement_minutes, status}, ...]
    differences: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


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
        # (time, id): prune walks the events older than its cut-off in this order
        Index("ix_webhook_events_created_at_id", "created_at", "id"),
        Index("ix_webhook_events_room_sid_participant_sid", "room_sid", "participant_sid"),
    )


class ExportRow(Base):
    """One event sent (or to send) to a billing system by `observer export`: the ledger
    that makes sending exactly once. A row is written `pending` before it is sent and
    answered in place; its identifier is the billing system's deduplication key."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(Text)  # http, stripe, openmeter
    identifier: Mapped[str] = mapped_column(Text)
    customer: Mapped[str] = mapped_column(Text)  # the billing system's customer id
    customer_value: Mapped[str] = mapped_column(Text)  # the key's value in the sessions
    agent: Mapped[str] = mapped_column(Text)  # "" for agents without a name
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(Text)  # minutes, cost, tokens:<counter>:<model>
    seq: Mapped[int] = mapped_column(Integer)  # 0 the first event of its key; corrections 1..
    quantity: Mapped[str] = mapped_column(Text)  # exact decimal; a correction's difference
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)  # the usage's time, as sent
    state: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)  # the last answer, one line
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("target", "identifier"),
        CheckConstraint("state IN ('pending', 'acknowledged', 'refused')", name="state"),
        Index("ix_exports_target_state", "target", "state"),
        Index("ix_exports_target_period_start", "target", "period_start"),
    )


def dialect_insert(dialect: str, target: Any) -> Any:
    """An INSERT that can take ON CONFLICT, in the dialect's own flavour."""
    return pg_insert(target) if dialect == "postgresql" else sqlite_insert(target)


def make_engine(url: str, *, connections: int | None = None) -> Engine:
    """An engine with the settings this project relies on for each backend; `connections`
    caps its pool (None: SQLAlchemy's default pool)."""
    pool: dict[str, Any] = {}
    if connections is not None:
        pool = {"pool_size": connections, "max_overflow": 0}
    if url.startswith("sqlite"):
        # an in-memory database is one connection per thread: no pool to size
        memory = make_url(url).database in (None, "", ":memory:")
        engine = create_engine(url, connect_args={"timeout": 30}, **({} if memory else pool))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **pool)
