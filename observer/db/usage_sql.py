"""Standing time per group and bucket inside a window, summed in SQL."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import Label, UnaryExpression
from sqlalchemy.sql.operators import custom_op

from observer.core.timeline import AGENT_STATES, OTHER_STATE
from observer.db.schema import Base

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS = 60_000
# `UsageSpec.group_by` names -> the sessions column each groups by
USAGE_GROUP_COLUMNS = {
    "agent": "agent_name",
    "identity": "participant_identity",
    "room": "room_name",
}
# ... and the groupings by a key: the agent participant's attribute KEY, the room's metadata
# (whole) or a key of it read as a JSON object. A missing key groups as "".
ATTRIBUTE_PREFIX = "attribute:"
ROOM_METADATA = "room-metadata"
ROOM_METADATA_PREFIX = "room-metadata:"


# `sessions.crosses_day` written as the predicate of its partial index: both planners use
# the index only for these very words (SQLAlchemy writes `= 1` or `IS true`)
CROSSING: ColumnElement[bool] = literal_column("sessions.crosses_day")


def is_group_name(g: str) -> bool:
    """Whether `g` names a grouping `UsageSpec.group_by` takes."""
    return (
        g in USAGE_GROUP_COLUMNS
        or g == ROOM_METADATA
        or (g.startswith((ATTRIBUTE_PREFIX, ROOM_METADATA_PREFIX)) and g.split(":", 1)[1] != "")
    )


def group_key(g: str, sessions: Any, rooms: Any) -> ColumnElement[Any]:
    """The SQL of a session's value for the grouping `g` (from its row, or its room's)."""
    if g in USAGE_GROUP_COLUMNS:
        return sessions.c[USAGE_GROUP_COLUMNS[g]]  # type: ignore[no-any-return]
    if g == ROOM_METADATA:
        return func.coalesce(rooms.c.metadata, "")
    column, key = (
        (sessions.c.attributes, g.removeprefix(ATTRIBUTE_PREFIX))
        if g.startswith(ATTRIBUTE_PREFIX)
        else (rooms.c.metadata_json, g.removeprefix(ROOM_METADATA_PREFIX))
    )
    return func.coalesce(cast(column[key].as_string(), Text), "")


def epoch_ms(at: datetime) -> int:
    """Whole milliseconds since the Unix epoch, truncated as the SQL below truncates."""
    return (at - EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class UsageSpec:
    """What `Store.usage` sums.

    Each session is clipped to [edges[0], edges[-1]) and cut at the inner edges into pieces,
    one per bucket (bucket i is [edges[i], edges[i + 1])). Each piece is rounded up to a
    multiple of `round_to_ms`; for `billable_minutes` each piece is rounded up to a minute.

    `price_cuts` (ascending) tell the sums apart by the prices a session had at its join
    and model usage had when reported: `UsageTotal.priced` and `TokenTotal.priced` count
    the cuts at or before those times. They never change what is summed.
    """

    edges: tuple[datetime, ...]
    group_by: tuple[str, ...] = ()
    open_until: datetime | None = None  # open sessions count up to here; None leaves them out
    round_to_ms: int = 1
    kind: str | None = "agent"
    states: bool = False  # also sum the time in each agent state and alone (`STATE_SUMS`)
    price_cuts: tuple[datetime, ...] = ()


# What `UsageSpec.states` sums, in `UsageTotal.states` order: the sessions columns
# state_<name>_ms, then alone_ms. A session counts with its columns when it lies whole in a
# bucket, else with its `session_spans` cut at the edges.
STATE_SUMS = (*AGENT_STATES, OTHER_STATE, "alone")


def _state_column(name: str) -> str:
    return "alone_ms" if name == "alone" else f"state_{name}_ms"


class UsageTotal(NamedTuple):  # a tuple: a month by agent and day is 30,000 of them
    keys: tuple[str | None, ...]  # one value per `UsageSpec.group_by` entry
    bucket: int
    sessions: int
    duration_ms: int
    billable_minutes: int
    states: tuple[int, ...] = ()  # with `UsageSpec.states`: ms per `STATE_SUMS` entry
    priced: int = 0  # `UsageSpec.price_cuts` at or before the sessions' join


def priced_key(at: ColumnElement[datetime], spec: UsageSpec) -> ColumnElement[int]:
    """How many of `spec.price_cuts` are at or before `at`: the key that tells sums apart
    by the prices in effect then."""
    cuts = spec.price_cuts
    if not cuts:
        return literal_column("0")
    return case(*((at < cut, i) for i, cut in enumerate(cuts)), else_=len(cuts))


def _width(spec: UsageSpec) -> int:
    """How many keys lead each summed row: the groups', then `priced_key`'s."""
    return len(spec.group_by) + len(spec.price_cuts[:1])


def usage_totals(conn: Connection, spec: UsageSpec, parts: int = 1) -> list[UsageTotal]:
    """Standing time (and states) per group and bucket.

    With `parts` > 1 the sessions are split by when they joined into that many stretches of
    the window, each summed at the same time on a connection of its own (`conn.engine`), and
    the sums added up: each session is in one stretch, so every sum is the same as in one
    query, and a machine with several cores uses them. Without, all is read in `conn`'s
    transaction (reconcile relies on that)."""
    _tune(conn)
    since = _reach_back(conn, spec)[0]
    rows = _sum_rows(conn, spec, since, parts, "all")
    _untune(conn)
    return _with_states(conn, spec, since, rows)


def usage_totals_together(
    conn: Connection, specs: Sequence[UsageSpec], parts: int = 1
) -> list[list[UsageTotal]]:
    """`usage_totals` of each spec, reading the bulk of the sessions once when the specs
    differ only in their edges, each starts at a UTC midnight, all end together and cut
    their buckets at midnights (the days of a chart and the months of a table, say).

    The sessions that lie whole in one day, inside every window, are summed once per group
    and day (`_straight`), and each day's sums go to the bucket holding that day in each
    window that holds it; the few others are clipped and cut for each spec alone."""
    if not _can_share(specs):
        return [usage_totals(conn, spec, parts) for spec in specs]
    _tune(conn)
    start, end = min(s.edges[0] for s in specs), specs[0].edges[-1]
    midnights = [start]
    while midnights[-1] + timedelta(days=1) < end:
        midnights.append(midnights[-1] + timedelta(days=1))
    days = UsageSpec(
        edges=(*midnights, end),
        group_by=specs[0].group_by,
        open_until=specs[0].open_until,
        round_to_ms=specs[0].round_to_ms,
        kind=specs[0].kind,
        states=specs[0].states,
    )
    _, back = _reach_back(conn, days)
    starts = [back(spec.edges[0]) for spec in specs]

    def cut(spec: UsageSpec, since: datetime) -> Sequence[Any]:
        with conn.engine.connect() as own:
            _tune(own, parallel=False)
            return _sum_rows(own, spec, since, 1, "cut")

    if parts <= 1:
        cut_rows = [
            _sum_rows(conn, s, since, 1, "cut") for s, since in zip(specs, starts, strict=True)
        ]
        straight = _sum_rows(conn, days, start, 1, "straight")
    else:  # the few to cut at the same time as the bulk
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:
            cuts = pool.map(cut, specs, starts)
            straight = _sum_rows(conn, days, start, parts, "straight")
            cut_rows = list(cuts)
    width = len(days.group_by)
    out: list[tuple[UsageSpec, datetime, list[Any]]] = []
    for spec, since, rows in zip(specs, starts, cut_rows, strict=True):
        edges = [epoch_ms(e) for e in spec.edges]
        # the bucket of each day in this window, or None
        bucket: list[int | None] = [
            bisect_right(edges, at) - 1 if at >= edges[0] else None
            for at in (epoch_ms(d) for d in midnights)
        ]
        sums: dict[tuple[Any, ...], list[Any]] = {}
        for row in straight:
            b = bucket[row[width]]
            if b is not None:
                _add_into(sums, (*row[:width], b), row[width + 1 :])
        for row in rows:
            _add_into(sums, tuple(row[: width + 1]), row[width + 1 :])
        out.append((spec, since, [(*head, *values) for head, values in sums.items()]))
    _untune(conn)
    return [_with_states(conn, spec, since, rows) for spec, since, rows in out]


def _can_share(specs: Sequence[UsageSpec]) -> bool:
    """Whether `usage_totals_together` can read the specs' sessions once."""
    if len(specs) < 2 or any(s.price_cuts for s in specs):
        return False
    first = specs[0]
    same = {(s.group_by, s.open_until, s.round_to_ms, s.kind, s.states, s.edges[-1]) for s in specs}
    return (
        len(same) == 1
        and all(
            _at_midnights(s) and s.edges[0].astimezone(UTC).time() == datetime.min.time()
            for s in specs
        )
        and first.edges[-1] - min(s.edges[0] for s in specs) > timedelta(days=1)
    )


def _reach_back(
    conn: Connection, spec: UsageSpec
) -> tuple[datetime, Callable[[datetime], datetime]]:
    """How long before the window a session that reaches into it can have started: by the
    longest closed session, or when the oldest open one started. Both come from indexes,
    and the bound lets a window late in a long history read only the end of it. Returns
    that time for `spec`, and the function giving it for another start."""
    t = Base.metadata.tables["sessions"]
    oldest_open = select(func.min(t.c.joined_at)).where(t.c.left_at.is_(None)).scalar_subquery()
    longest_ms, oldest_open_at = conn.execute(select(func.max(t.c.duration_ms), oldest_open)).one()

    def back(start: datetime) -> datetime:
        since = start - timedelta(milliseconds=(longest_ms or 0) + 1000)  # ms are truncated
        if spec.open_until is not None and oldest_open_at is not None:
            since = min(since, oldest_open_at)
        return since

    return back(spec.edges[0]), back


def _sum_rows(
    conn: Connection, spec: UsageSpec, since: datetime, parts: int, which: str
) -> Sequence[Any]:
    """The rows of `_usage_query` (`which` of its sessions), in `parts` stretches at once
    (see `usage_totals`)."""
    t = Base.metadata.tables["sessions"]
    dialect = conn.dialect.name
    start, end = spec.edges[0], spec.edges[-1]
    if parts <= 1:
        return conn.execute(_usage_query(spec, dialect, since, end, start - since, which)).all()
    # Cut between the first and the last join inside the window, rather than across the
    # window, which can reach far past the sessions (a month not over yet). Each of the
    # two comes from the index on its own.
    in_window = (t.c.joined_at >= start, t.c.joined_at < end)
    first, last = conn.execute(
        select(
            select(func.min(t.c.joined_at)).where(*in_window).scalar_subquery(),
            select(func.max(t.c.joined_at)).where(*in_window).scalar_subquery(),
        )
    ).one()
    first, last = (start, end) if first is None else (first, last)
    step = (last - first) / parts
    cuts = [first + step * i for i in range(1, parts)]
    if which == "straight":
        # each session counts in the day of its join: cut at midnights, no group and day
        # is in two stretches, and their rows need no adding up
        cuts = sorted(
            {c.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) for c in cuts}
        )
        cuts = [c for c in cuts if since < c < end]
    bounds = [since, *cuts, end]

    def stretch(lo: datetime, hi: datetime) -> list[Any]:
        with conn.engine.connect() as own:
            _tune(own, parallel=False)  # the stretches are the parallelism
            query = _usage_query(spec, dialect, lo, hi, start - since, which)
            return list(own.execute(query).all())

    with ThreadPoolExecutor(max_workers=parts) as pool:
        results = pool.map(stretch, bounds[:-1], bounds[1:])
        if which == "straight":
            return [row for rows in results for row in rows]
        return _added(results, _width(spec))


def _keys(spec: UsageSpec, t: Any, rooms: Any) -> list[Label[Any]]:
    """The keys of the sessions' sums, labelled k0...: the groups', then `priced_key`'s."""
    keys = [group_key(g, t, rooms) for g in spec.group_by]
    if spec.price_cuts:
        keys.append(priced_key(t.c.joined_at, spec))
    return [k.label(f"k{i}") for i, k in enumerate(keys)]


def _with_states(
    conn: Connection, spec: UsageSpec, since: datetime, rows: Sequence[Any]
) -> list[UsageTotal]:
    """The summed rows as totals, with the states of the sessions cut from their spans."""
    groups, width = len(spec.group_by), _width(spec)
    cut = _cut_states(conn, spec, since) if spec.states else {}
    totals = []
    for row in rows:
        keys, bucket = tuple(row[:width]), row[width]
        states = [v or 0 for v in row[width + 4 :]]  # none without `spec.states`
        for i, ms in enumerate(cut.get((keys, bucket), ())):
            states[i] += ms
        n, ms_sum, minutes = row[width + 1 : width + 4]
        priced = keys[groups] if width > groups else 0
        totals.append(UsageTotal(keys[:groups], bucket, n, ms_sum, minutes, tuple(states), priced))
    return totals


def _tune(conn: Connection, parallel: bool = True) -> None:
    if conn.dialect.name == "postgresql":
        # For this transaction only: the planner's cost estimate is high enough to start JIT
        # compiling, which takes longer than the query itself; and with the default work_mem
        # (4MB) it groups a month by agent and day by sorting, about 1.6 times slower. Even
        # then it sorts when it cannot know how few groups there are (an attribute's values
        # by day: it expects one per session), spilling to disk, 1.4 times slower than
        # hashing; so sorting is off until `usage_totals` has its rows.
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '32MB'")
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        if not parallel:
            conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")


def _untune(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("RESET enable_sort")  # for the rest of the caller's transaction


def _added(results: Iterable[list[Any]], width: int) -> list[tuple[Any, ...]]:
    """Rows of (keys..., bucket, sums...) from several stretches, summed per keys and
    bucket; a sum that is NULL in every stretch stays NULL."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for rows in results:
        for row in rows:
            _add_into(out, tuple(row[: width + 1]), row[width + 1 :])
    return [(*head, *sums) for head, sums in out.items()]


def _add_into(out: dict[tuple[Any, ...], list[Any]], head: tuple[Any, ...], sums: Any) -> None:
    """Adds the sums to those of `head` in `out`; a NULL sum adds nothing."""
    had = out.get(head)
    if had is None:
        out[head] = list(sums)
        return
    for i, v in enumerate(sums):
        if v is not None:
            had[i] = v if had[i] is None else had[i] + v


def _at_midnights(spec: UsageSpec) -> bool:
    """Whether the buckets are cut only at UTC midnights (days, months), so that a closed
    session lies in one bucket when `crosses_day` is false."""
    inner = spec.edges[1:-1]
    return bool(inner) and all(e.astimezone(UTC).time() == datetime.min.time() for e in inner)


def _columns_unless_crossing(spec: UsageSpec, dialect: str) -> bool:
    """Whether `_usage_query` takes a session's state columns when it holds no midnight
    (rather than when its times fall in one bucket). PostgreSQL would compute those times
    again for each column; SQLite has them at hand."""
    return dialect == "postgresql" and _at_midnights(spec)


def _by_columns(
    edges: list[int], unless_crossing: bool, crosses: bool, joined_ms: int, left_ms: int
) -> bool:
    """Whether a closed session inside the window counts by its own state columns in
    `_usage_query`: see `_columns_unless_crossing`."""
    if unless_crossing:
        return not crosses
    first = bisect_right(edges, joined_ms) - 1
    return first == bisect_right(edges, left_ms - 1) - 1


def _cut_states(
    conn: Connection, spec: UsageSpec, since: datetime
) -> dict[tuple[tuple[str | None, ...], int], list[int]]:
    """State and alone ms of the closed sessions that do not lie whole in one bucket, from
    their spans cut at the window's and buckets' edges.

    Those are the few that hold the window's start or end, or (when every inner edge is a
    UTC midnight, as with days and months) hold a midnight: `_to_cut`."""
    dialect = conn.dialect.name
    edges = [epoch_ms(e) for e in spec.edges]
    unless_crossing = _columns_unless_crossing(spec, dialect)
    state_index = {name: i for i, name in enumerate(AGENT_STATES)}
    other, alone = STATE_SUMS.index(OTHER_STATE), STATE_SUMS.index("alone")
    first, last, buckets = edges[0], edges[-1], len(edges) - 1
    width = _width(spec)
    n = len(STATE_SUMS)
    out: dict[tuple[tuple[str | None, ...], int], list[int]] = {}
    for row in conn.execute(_cut_states_query(spec, dialect, since)).all():
        inside, crosses, kind, value, joined, left, s, e = row[width:]
        if inside and _by_columns(edges, unless_crossing, crosses, joined, left):
            continue  # counted by its own columns (as `_usage_query` decides)
        i = alone if kind == "alone" else state_index.get(value, other)
        lo = s if s > first else first
        hi = e if e < last else last
        group = tuple(row[:width])
        b = bisect_right(edges, lo) - 1
        while lo < hi and b < buckets and edges[b] < hi:
            top, bottom = edges[b + 1], edges[b]
            sums = out.get((group, b))
            if sums is None:
                sums = out[group, b] = [0] * n
            sums[i] += (hi if hi < top else top) - (lo if lo > bottom else bottom)
            b += 1
    return out


def _cut_states_query(spec: UsageSpec, dialect: str, since: datetime) -> Any:
    """(keys..., whole in the window, crosses_day, span kind, value, joined_ms, left_ms,
    span start and end ms) for each span of the sessions `_cut_states` cuts."""
    t = Base.metadata.tables["sessions"]
    sp = Base.metadata.tables["session_spans"]
    rooms = Base.metadata.tables["rooms"]
    start, end = spec.edges[0], spec.edges[-1]
    keys = _keys(spec, t, rooms)
    source: Any = t.join(
        sp, and_(sp.c.room_sid == t.c.room_sid, sp.c.participant_sid == t.c.participant_sid)
    )
    if any(g.startswith(ROOM_METADATA) for g in spec.group_by):
        source = source.outerjoin(rooms, rooms.c.sid == t.c.room_sid)
    common = [t.c.left_at.is_not(None), t.c.left_at > start]
    if spec.kind is not None:
        common.append(t.c.participant_kind == spec.kind)
    whole = and_(t.c.joined_at >= start, t.c.left_at <= end)  # as in `_usage_query`
    columns = [*keys, case((whole, 1), else_=0), t.c.crosses_day, sp.c.kind, sp.c.value]
    columns += [t.c.joined_ms, t.c.left_ms]
    columns += [epoch_ms_sql(c, dialect) for c in (sp.c.started_at, sp.c.ended_at)]
    arms = _to_cut(spec, start - since)
    return union_all(
        *(select(*columns).select_from(source).where(*a.where(since, end), *common) for a in arms)
    )


def _usage_query(
    spec: UsageSpec,
    dialect: str,
    since: datetime,
    until: datetime,
    reach: timedelta,
    which: str = "all",
) -> Select[Any]:
    """Sum the pieces of sessions per group and bucket, in whole milliseconds.

    Each session (that started at or after `since` and before `until`; no closed one
    lasts longer than `reach`) is clipped to the window, then gets one row per bucket it
    touches (nearly always one), then the piece inside that bucket is measured, rounded
    and summed.

    `which`: "all" the sessions; "straight" only the closed ones that lie whole in the
    window and hold no midnight (`_straight`), or "cut" only the others (`_to_cut`): the
    two add up to "all" for a spec whose buckets are cut at midnights.
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

    until = min(until, end)
    of_kind = [] if spec.kind is None else [t.c.participant_kind == spec.kind]
    wanted = list(of_kind)
    ended: ColumnElement[int]
    if spec.open_until is None:
        wanted.append(t.c.left_at > start)
        ended = t.c.left_ms
    else:
        wanted.append(or_(t.c.left_at.is_(None), t.c.left_at > start))
        open_end = ms(min(epoch_ms(spec.open_until), edges[-1]))
        ended = case((t.c.left_at.is_(None), open_end), else_=t.c.left_ms)
    rooms = Base.metadata.tables["rooms"]
    keys = _keys(spec, t, rooms)
    source: Any = t
    if any(g.startswith(ROOM_METADATA) for g in spec.group_by):
        source = t.outerjoin(rooms, rooms.c.sid == t.c.room_sid)
    whole = and_(t.c.left_at.is_not(None), t.c.joined_at >= start, t.c.left_at <= end)
    # Nearly every session is closed, lies whole in the window and holds no midnight: with
    # days or months (or one bucket) it lies whole in the bucket of its join, and is summed
    # straight from its columns (`_straight`). The others are clipped and cut below.
    direct: Select[Any] | None = None
    # (each part gives its sessions one range of join times: with two, SQLite would search
    # its index by either, maybe the wider)
    closed_inside = [*_joined(max(since, start), until)]
    closed_inside += [t.c.left_at <= end, *of_kind]
    if which == "straight":
        not_crossing = t.c.crosses_day.is_(False)
        straight = _straight(spec, dialect, source, [*closed_inside, not_crossing])
        states = [f"st{i}" for i in range(len(STATE_SUMS) if spec.states else 0)]
        return _summed(straight, spec, len(keys), states)
    if _straight_sums(spec) and which == "all":
        in_one_bucket = [] if len(edges) == 2 else [t.c.crosses_day.is_(False)]
        direct = _straight(spec, dialect, source, [*closed_inside, *in_one_bucket])
    arms = _to_cut(spec, reach)
    # With states: a session's own state columns while it lies whole in the window (the
    # bucketing below keeps them only when it lies whole in one bucket too); NULL otherwise,
    # when `_cut_states` counts it from its spans
    unless_crossing = _columns_unless_crossing(spec, dialect)
    if unless_crossing:
        # ... and holds no midnight: then it lies in one bucket, which the bucketing below
        # need not check
        whole = and_(whole, t.c.crosses_day.is_(False))
    state_cols = [
        case((whole, t.c[_state_column(n)]), else_=None).label(f"st{i}")
        for i, n in enumerate(STATE_SUMS if spec.states else ())
    ]
    clip = select(
        *keys,
        greatest(t.c.joined_ms, ms(edges[0])).label("s"),
        least(ended, ms(edges[-1])).label("e"),
        *state_cols,
    ).select_from(source)
    clipped: Any = (
        clip.where(*arms[0].where(since, until), *wanted)
        if len(arms) == 1
        else union_all(*(clip.where(*arm.where(since, until), *wanted) for arm in arms))
    )
    if dialect == "sqlite":
        # Keeps SQLite from flattening this subquery into its users, which would compute
        # the times above again for every place they are used.
        clipped = clipped.limit(-1)
    c = clipped.subquery("clipped").c
    ckeys = [c[f"k{i}"] for i in range(len(keys))]
    names = [f"st{i}" for i in range(len(state_cols))]
    nothing = cast(literal(None), BigInteger)

    # Each part gives (keys..., bucket, ms): one row per piece of a session in a bucket.
    parts: list[Select[Any]]
    if len(edges) == 2:
        one = select(
            *ckeys,
            literal_column("0").label("bucket"),
            (c.e - c.s).label("ms"),
            *(c[n] for n in names),
        )
        parts = [one.where(c.e > c.s)]
    else:
        bucket_of, edge = bucketing(edges)
        first, last = bucket_of(c.s), bucket_of(c.e - 1)
        if dialect == "postgresql":
            series = func.generate_series(first, last).label("bucket")
            in_one = [
                c[n] if unless_crossing else case((first == last, c[n]), else_=None).label(n)
                for n in names
            ]
            sp = select(*ckeys, c.s, c.e, series, *in_one).where(c.e > c.s).subquery("spans")
            piece = least(sp.c.e, edge(sp.c.bucket + 1)) - greatest(sp.c.s, edge(sp.c.bucket))
            parts = [
                select(
                    *[sp.c[k.name] for k in ckeys],
                    sp.c.bucket,
                    piece.label("ms"),
                    *(sp.c[n] for n in names),
                )
            ]
        else:
            # No generate_series in SQLite: the piece in the bucket where each session
            # starts, then the later pieces of the few that cross an edge, from a series of
            # offsets.
            src = (
                select(
                    *ckeys, c.s, c.e, first.label("b0"), last.label("b1"), *(c[n] for n in names)
                )
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
                    *(case((src.c.b1 == src.c.b0, src.c[n]), else_=None).label(n) for n in names),
                ),
                select(
                    *skeys,
                    b.label("bucket"),
                    (least(src.c.e, edge(b + 1)) - edge(b)).label("ms"),
                    *(nothing.label(n) for n in names),
                )
                .select_from(src.join(n, n.c.i <= src.c.b1 - src.c.b0))
                .where(src.c.b1 > src.c.b0),
            ]

    if direct is not None:
        parts = [direct, *parts]

    if len(parts) == 1:
        return _summed(parts[0], spec, len(keys), names)
    # Summing each part first and then the sums is faster in SQLite than one sum over all.
    both = union_all(*(_summed(part, spec, len(keys), names) for part in parts)).subquery("parts")
    bkeys = [both.c[k.name] for k in ckeys]
    sums = (cast(func.sum(both.c[x]), BigInteger) for x in ("sessions", "ms", "minutes", *names))
    return select(*bkeys, both.c.bucket, *sums).group_by(*bkeys, both.c.bucket)


def _summed(pieces: Select[Any], spec: UsageSpec, width: int, states: list[str]) -> Select[Any]:
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


def _straight_sums(spec: UsageSpec) -> bool:
    """Whether a closed session inside the window that holds no midnight lies whole in the
    bucket of its join: with one bucket, or buckets cut at UTC midnights (days, months)."""
    return len(spec.edges) == 2 or _at_midnights(spec)


def _joined(lo: datetime, hi: datetime) -> list[ColumnElement[bool]]:
    t = Base.metadata.tables["sessions"]
    return [t.c.joined_at >= lo, t.c.joined_at < hi]


class _Arm(NamedTuple):
    """Sessions that joined in [lo, hi) (None: unbounded) and meet `conds`."""

    lo: datetime | None
    hi: datetime | None
    conds: tuple[ColumnElement[bool], ...] = ()

    def where(self, lo: datetime, hi: datetime) -> list[ColumnElement[bool]]:
        """The arm's conditions inside [lo, hi), with one range of join times."""
        lo = lo if self.lo is None else max(lo, self.lo)
        hi = hi if self.hi is None else min(hi, self.hi)
        return [*_joined(lo, hi), *self.conds]


def _to_cut(spec: UsageSpec, reach: timedelta) -> list[_Arm]:
    """The sessions that joined from the window's start less `reach` (no closed one lasts
    longer) to its end and may not lie whole in one bucket: each found through an index of
    its own, and no session in two arms.

    With `_straight_sums`: those that joined before the window, are open, left after it,
    or (with more than one bucket) hold a midnight. Otherwise every session."""
    if not _straight_sums(spec):
        return [_Arm(None, None)]
    t = Base.metadata.tables["sessions"]
    start, end = spec.edges[0], spec.edges[-1]
    arms = [
        _Arm(None, start),
        _Arm(start, None, (t.c.left_at.is_(None),)),
        _Arm(max(start, end - reach), None, (t.c.left_at > end,)),
    ]
    if len(spec.edges) > 2:
        arms.append(_Arm(start, None, (CROSSING, t.c.left_at <= end)))
    return arms


def _straight(
    spec: UsageSpec, dialect: str, source: Any, wanted: list[ColumnElement[bool]]
) -> Select[Any]:
    """(keys..., bucket, ms, states...) of the sessions in `wanted`, each of which lies
    whole in the bucket of its join: no clipping, no cutting, no series of days."""
    t = Base.metadata.tables["sessions"]
    rooms = Base.metadata.tables["rooms"]
    edges = [epoch_ms(e) for e in spec.edges]
    keys: list[ColumnElement[Any]] = [group_key(g, t, rooms) for g in spec.group_by]
    if dialect == "sqlite":
        # With statistics, SQLite reads a month by agent through (agent_name, joined_at)
        # to have the rows in the grouping's order, jumping all over the table: 1.5-2 times
        # slower than through joined_at. Its unary + (a no-op) keeps it from doing that.
        keys = [UnaryExpression(k, operator=custom_op("+"), type_=Text()) for k in keys]
    if spec.price_cuts:
        keys.append(priced_key(t.c.joined_at, spec))
    bucket = literal_column("0") if len(edges) == 2 else bucketing(edges)[0](t.c.joined_ms)
    states = STATE_SUMS if spec.states else ()
    return (
        select(
            *(k.label(f"k{i}") for i, k in enumerate(keys)),
            bucket.label("bucket"),
            (t.c.left_ms - t.c.joined_ms).label("ms"),
            *(t.c[_state_column(n)].label(f"st{i}") for i, n in enumerate(states)),
        )
        .select_from(source)
        .where(*wanted, t.c.left_ms > t.c.joined_ms)
    )


def epoch_ms_sql(col: ColumnElement[datetime | None], dialect: str) -> ColumnElement[int]:
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


def bucketing(
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
