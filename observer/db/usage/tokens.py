"""Model usage per group and bucket inside a window, and the sessions that reported it,
summed in SQL (`observer usage --tokens` and `--prices`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
)

from observer.core.agent_usage import COUNTERS
from observer.db.schema import Base
from observer.db.usage._columns import bucketing, group_key, priced_key
from observer.db.usage._dialect import epoch_ms_sql
from observer.db.usage.spec import ROOM_METADATA, UsageSpec, epoch_ms


class TokenTotal(NamedTuple):
    """One model's usage in one group and bucket: the sums of `COUNTERS`."""

    keys: tuple[str | None, ...]
    bucket: int
    kind: str
    provider: str
    model: str
    counters: tuple[int, ...]  # in `COUNTERS` order
    priced: int = 0  # `UsageSpec.price_cuts` at or before the usage was reported


class TokenSessions(NamedTuple):
    """The agent sessions that reported model usage in one group and bucket, each counted
    once however many models it reported, and how many of them have each flag."""

    keys: tuple[str | None, ...]
    bucket: int
    sessions: int
    unseen: int  # no session row exists
    backwards: int  # a model's totals went backwards at some point
    silent_realtime: int  # a realtime model (session time) with 0 output audio tokens


def token_totals(conn: Connection, spec: UsageSpec) -> tuple[list[TokenTotal], list[TokenSessions]]:
    """Model usage per group and bucket, and the sessions that reported it. Each agent
    session's latest totals count in the bucket of `agent_usage.reported_at` (when they
    were reported)."""
    dialect = conn.dialect.name
    u = Base.metadata.tables["agent_usage"]
    t = Base.metadata.tables["sessions"]
    rooms = Base.metadata.tables["rooms"]
    edges = [epoch_ms(e) for e in spec.edges]
    source: Any = u.outerjoin(
        t, and_(t.c.room_sid == u.c.room_sid, t.c.participant_sid == u.c.participant_sid)
    )
    if any(g.startswith(ROOM_METADATA) for g in spec.group_by):
        source = source.outerjoin(rooms, rooms.c.sid == u.c.room_sid)
    if len(edges) == 2:
        bucket: ColumnElement[int] = literal_column("0")
    else:
        bucket_of, _ = bucketing(edges)
        bucket = bucket_of(epoch_ms_sql(u.c.reported_at, dialect))
    wanted = [u.c.reported_at >= spec.edges[0], u.c.reported_at < spec.edges[-1]]
    if spec.kind is not None:
        wanted.append(or_(t.c.participant_kind == spec.kind, t.c.id.is_(None)))
    silent = and_(
        u.c.kind == "llm",
        u.c.session_ms > 0,
        u.c.output_audio_tokens == 0,
        or_(t.c.state_speaking_ms.is_(None), t.c.state_speaking_ms > 0),
    )
    flags = [t.c.id.is_(None), u.c.went_backwards, silent]
    # one row per session and model
    r = (
        select(
            *(group_key(g, t, rooms, dialect).label(f"k{i}") for i, g in enumerate(spec.group_by)),
            bucket.label("bucket"),
            priced_key(u.c.reported_at, spec).label("priced"),
            u.c.room_sid,
            u.c.participant_sid,
            u.c.kind,
            u.c.provider,
            u.c.model,
            *(u.c[name] for name in COUNTERS),
            *(case((flag, 1), else_=0).label(f"f{i}") for i, flag in enumerate(flags)),
        )
        .select_from(source)
        .where(*wanted)
        .subquery("reported")
    )
    head = [r.c[f"k{i}"] for i in range(len(spec.group_by))] + [r.c.bucket]
    which = [r.c.kind, r.c.provider, r.c.model, r.c.priced]
    models = select(
        *head, *which, *(cast(func.sum(r.c[name]), BigInteger) for name in COUNTERS)
    ).group_by(*head, *which)
    per_session = (
        select(*head, *(func.max(r.c[f"f{i}"]).label(f"f{i}") for i in range(len(flags))))
        .group_by(*head, r.c.room_sid, r.c.participant_sid)
        .subquery("per_session")
    )
    s = per_session.c
    shead = [s[c.name] for c in head]
    sessions = select(
        *shead,
        func.count(),
        *(cast(func.sum(s[f"f{i}"]), BigInteger) for i in range(len(flags))),
    ).group_by(*shead)
    width = len(spec.group_by)
    totals = []
    for row in conn.execute(models):
        b, kind, provider, model, priced, *counters = row[width:]
        keys = tuple(row[:width])
        totals.append(TokenTotal(keys, b, kind, provider, model, tuple(counters), priced))
    return (
        totals,
        [TokenSessions(tuple(row[:width]), *row[width:]) for row in conn.execute(sessions)],
    )
