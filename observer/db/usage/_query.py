"""The usage query: the pieces of sessions per group and bucket, summed in whole
milliseconds.

Nearly every session is closed, lies whole in the window and holds no midnight: with days
or months (or one bucket) it lies whole in the bucket of its join, and is summed as they are
from its columns (`whole_pieces`). The few others (`join_ranges_to_clip`) are clipped to the
window and cut at the buckets' edges (`clipped`, `cut_pieces`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple, assert_never

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import Label

from observer.db.schema import Base
from observer.db.usage._columns import bucketing, group_key, priced_key, sum_keys
from observer.db.usage._dialect import (
    CROSSING,
    columns_unless_crossing,
    greatest,
    least,
    not_by_index,
    unflattened,
)
from observer.db.usage.spec import (
    MINUTE_MS,
    ROOM_METADATA,
    STATE_SUMS,
    Subset,
    UsageSpec,
    epoch_ms,
    state_column,
    whole_in_join_bucket,
)


def usage_query(
    spec: UsageSpec,
    dialect: str,
    since: datetime,
    until: datetime,
    reach: timedelta,
    which: Subset = "all",
) -> Select[Any]:
    """Sum the pieces of sessions per group and bucket, in whole milliseconds.

    Each session (that started at or after `since` and before `until`; no closed one
    lasts longer than `reach`) is clipped to the window, then gets one row per bucket it
    touches (nearly always one), then the piece inside that bucket is measured, rounded
    and summed. `which` of the sessions: see `Subset`.
    """
    t = Base.metadata.tables["sessions"]
    rooms = Base.metadata.tables["rooms"]
    start, end = spec.edges[0], spec.edges[-1]
    until = min(until, end)
    of_kind = [] if spec.kind is None else [t.c.participant_kind == spec.kind]
    of_kind += reported_nothing(spec)
    keys = sum_keys(spec, t, rooms, dialect)
    source: Any = t
    if any(g.startswith(ROOM_METADATA) for g in spec.group_by):
        source = t.outerjoin(rooms, rooms.c.sid == t.c.room_sid)
    # (each part gives its sessions one range of join times: with two, SQLite would search
    # its index by either, maybe the wider)
    closed_inside = [*joined_between(max(since, start), until), t.c.left_at <= end, *of_kind]
    n_states = len(STATE_SUMS) if spec.states else 0
    names = [f"st{i}" for i in range(n_states)]
    direct: Select[Any] | None
    match which:
        case "whole":
            not_crossing = t.c.crosses_day.is_(False)
            whole = whole_pieces(spec, dialect, source, [*closed_inside, not_crossing])
            return summed(whole, spec, len(keys), names)
        case "all" if whole_in_join_bucket(spec):
            in_one_bucket = [] if len(spec.edges) == 2 else [t.c.crosses_day.is_(False)]
            direct = whole_pieces(spec, dialect, source, [*closed_inside, *in_one_bucket])
        case "all" | "cut":
            direct = None
        case _:
            assert_never(which)
    ranges = join_ranges_to_clip(spec, reach)
    c = clipped(spec, dialect, source, keys, ranges, since, until).c
    ckeys = [c[f"k{i}"] for i in range(len(keys))]
    parts = cut_pieces(spec, dialect, c, ckeys, names)
    if direct is not None:
        parts = [direct, *parts]
    if len(parts) == 1:
        return summed(parts[0], spec, len(keys), names)
    # Summing each part first and then the sums is faster in SQLite than one sum over all.
    both = union_all(*(summed(part, spec, len(keys), names) for part in parts)).subquery("parts")
    bkeys = [both.c[k.name] for k in ckeys]
    sums = (cast(func.sum(both.c[x]), BigInteger) for x in ("sessions", "ms", "minutes", *names))
    return select(*bkeys, both.c.bucket, *sums).group_by(*bkeys, both.c.bucket)


def clipped(
    spec: UsageSpec,
    dialect: str,
    source: Any,
    keys: list[Label[Any]],
    ranges: list[JoinRange],
    since: datetime,
    until: datetime,
) -> Any:
    """(keys k0..., s, e, states st0...) of the sessions in `ranges`: their times in ms
    clipped to the window (an open one ending at `spec.open_until`), and with states their
    own state columns while they lie whole in the window, NULL otherwise (when `cut_states`
    counts them from their spans). A subquery."""
    t = Base.metadata.tables["sessions"]
    edges = [epoch_ms(e) for e in spec.edges]
    start, end = spec.edges[0], spec.edges[-1]
    wanted = [] if spec.kind is None else [t.c.participant_kind == spec.kind]
    wanted += reported_nothing(spec)
    ended: ColumnElement[int]
    if spec.open_until is None:
        wanted.append(t.c.left_at > start)
        ended = t.c.left_ms
    else:
        wanted.append(or_(t.c.left_at.is_(None), t.c.left_at > start))
        open_end = literal(min(epoch_ms(spec.open_until), edges[-1]), BigInteger)
        ended = case((t.c.left_at.is_(None), open_end), else_=t.c.left_ms)
    whole = and_(t.c.left_at.is_not(None), t.c.joined_at >= start, t.c.left_at <= end)
    # (the bucketing in `cut_pieces` keeps the state columns only when the session lies
    # whole in one bucket too)
    if columns_unless_crossing(spec, dialect):
        # ... and holds no midnight: then it lies in one bucket, which the bucketing need
        # not check
        whole = and_(whole, t.c.crosses_day.is_(False))
    state_cols = [
        case((whole, t.c[state_column(n)]), else_=None).label(f"st{i}")
        for i, n in enumerate(STATE_SUMS if spec.states else ())
    ]
    clip = select(
        *keys,
        greatest(dialect, t.c.joined_ms, literal(edges[0], BigInteger)).label("s"),
        least(dialect, ended, literal(edges[-1], BigInteger)).label("e"),
        *state_cols,
    ).select_from(source)
    query: Any = (
        clip.where(*ranges[0].where(since, until), *wanted)
        if len(ranges) == 1
        else union_all(*(clip.where(*r.where(since, until), *wanted) for r in ranges))
    )
    return unflattened(query, dialect).subquery("clipped")


def cut_pieces(
    spec: UsageSpec, dialect: str, c: Any, ckeys: list[Any], names: list[str]
) -> list[Select[Any]]:
    """The clipped sessions `c` cut at the buckets' edges: selects of (keys..., bucket,
    ms, states...), one row per piece of a session in a bucket."""
    edges = [epoch_ms(e) for e in spec.edges]
    nothing = cast(literal(None), BigInteger)
    if len(edges) == 2:
        one = select(
            *ckeys,
            literal_column("0").label("bucket"),
            (c.e - c.s).label("ms"),
            *(c[n] for n in names),
        )
        return [one.where(c.e > c.s)]
    bucket_of, edge = bucketing(edges)
    first, last = bucket_of(c.s), bucket_of(c.e - 1)
    if dialect == "postgresql":
        unless_crossing = columns_unless_crossing(spec, dialect)
        series = func.generate_series(first, last).label("bucket")
        in_one = [
            c[n] if unless_crossing else case((first == last, c[n]), else_=None).label(n)
            for n in names
        ]
        sp = select(*ckeys, c.s, c.e, series, *in_one).where(c.e > c.s).subquery("spans")
        piece = least(dialect, sp.c.e, edge(sp.c.bucket + 1)) - greatest(
            dialect, sp.c.s, edge(sp.c.bucket)
        )
        return [
            select(
                *[sp.c[k.name] for k in ckeys],
                sp.c.bucket,
                piece.label("ms"),
                *(sp.c[n] for n in names),
            )
        ]
    # No generate_series in SQLite: the piece in the bucket where each session starts,
    # then the later pieces of the few that cross an edge, from a series of offsets.
    src = (
        select(*ckeys, c.s, c.e, first.label("b0"), last.label("b1"), *(c[n] for n in names))
        .where(c.e > c.s)
        .cte("starts")
    )
    skeys = [src.c[k.name] for k in ckeys]
    n = select(literal_column("1").label("i")).cte("offsets", recursive=True)
    n = n.union_all(select(n.c.i + 1).where(n.c.i < len(edges) - 2))
    b = src.c.b0 + n.c.i
    return [
        select(
            *skeys,
            src.c.b0.label("bucket"),
            (least(dialect, src.c.e, edge(src.c.b0 + 1)) - src.c.s).label("ms"),
            *(case((src.c.b1 == src.c.b0, src.c[x]), else_=None).label(x) for x in names),
        ),
        select(
            *skeys,
            b.label("bucket"),
            (least(dialect, src.c.e, edge(b + 1)) - edge(b)).label("ms"),
            *(nothing.label(x) for x in names),
        )
        .select_from(src.join(n, n.c.i <= src.c.b1 - src.c.b0))
        .where(src.c.b1 > src.c.b0),
    ]


def summed(pieces: Select[Any], spec: UsageSpec, width: int, states: list[str]) -> Select[Any]:
    """(keys k0..., bucket, ms, states...) per piece -> (keys..., bucket, sessions, ms,
    minutes, states...) per group and bucket, each piece rounded as `spec` says."""
    p = pieces.subquery()
    pkeys = [p.c[f"k{i}"] for i in range(width)]
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
        *(cast(func.sum(p.c[n]), BigInteger).label(n) for n in states),
    ).group_by(*pkeys, p.c.bucket)


def reported_nothing(spec: UsageSpec) -> list[ColumnElement[bool]]:
    """With `spec.without_usage`: the session has no `agent_usage` row (a lookup by the
    table's primary key)."""
    if not spec.without_usage:
        return []
    t = Base.metadata.tables["sessions"]
    u = Base.metadata.tables["agent_usage"]
    reported = and_(u.c.room_sid == t.c.room_sid, u.c.participant_sid == t.c.participant_sid)
    return [~exists().where(reported)]


def joined_between(lo: datetime, hi: datetime) -> list[ColumnElement[bool]]:
    t = Base.metadata.tables["sessions"]
    return [t.c.joined_at >= lo, t.c.joined_at < hi]


class JoinRange(NamedTuple):
    """Sessions that joined in [lo, hi) (None: unbounded) and meet `conds`."""

    lo: datetime | None
    hi: datetime | None
    conds: tuple[ColumnElement[bool], ...] = ()

    def where(self, lo: datetime, hi: datetime) -> list[ColumnElement[bool]]:
        """The range's conditions inside [lo, hi), with one range of join times."""
        lo = lo if self.lo is None else max(lo, self.lo)
        hi = hi if self.hi is None else min(hi, self.hi)
        return [*joined_between(lo, hi), *self.conds]


def join_ranges_to_clip(spec: UsageSpec, reach: timedelta) -> list[JoinRange]:
    """The sessions that joined from the window's start less `reach` (no closed one lasts
    longer) to its end and may not lie whole in one bucket: each found through an index of
    its own, and no session in two ranges.

    With `whole_in_join_bucket`: those that joined before the window, are open, left after it,
    or (with more than one bucket) hold a midnight. Otherwise every session."""
    if not whole_in_join_bucket(spec):
        return [JoinRange(None, None)]
    t = Base.metadata.tables["sessions"]
    start, end = spec.edges[0], spec.edges[-1]
    ranges = [
        JoinRange(None, start),
        JoinRange(start, None, (t.c.left_at.is_(None),)),
        JoinRange(max(start, end - reach), None, (t.c.left_at > end,)),
    ]
    if len(spec.edges) > 2:
        ranges.append(JoinRange(start, None, (CROSSING, t.c.left_at <= end)))
    return ranges


def whole_pieces(
    spec: UsageSpec, dialect: str, source: Any, wanted: list[ColumnElement[bool]]
) -> Select[Any]:
    """(keys..., bucket, ms, states...) of the sessions in `wanted`, each of which lies
    whole in the bucket of its join: no clipping, no cutting, no series of days."""
    t = Base.metadata.tables["sessions"]
    rooms = Base.metadata.tables["rooms"]
    edges = [epoch_ms(e) for e in spec.edges]
    keys = not_by_index([group_key(g, t, rooms, dialect) for g in spec.group_by], dialect)
    if spec.price_cuts:
        keys.append(priced_key(t.c.joined_at, spec))
    bucket = literal_column("0") if len(edges) == 2 else bucketing(edges)[0](t.c.joined_ms)
    states = STATE_SUMS if spec.states else ()
    return (
        select(
            *(k.label(f"k{i}") for i, k in enumerate(keys)),
            bucket.label("bucket"),
            (t.c.left_ms - t.c.joined_ms).label("ms"),
            *(t.c[state_column(n)].label(f"st{i}") for i, n in enumerate(states)),
        )
        .select_from(source)
        .where(*wanted, t.c.left_ms > t.c.joined_ms)
    )
