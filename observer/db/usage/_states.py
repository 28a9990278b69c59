"""The time in each agent state and alone (`UsageSpec.states`): from a session's own
columns where it lies whole in a bucket (`usage_query` sums those), else from its spans cut
at the window's and buckets' edges (here)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, select, union_all

from observer.core.timeline import AGENT_STATES, OTHER_STATE
from observer.db.schema import Base
from observer.db.usage._columns import sum_keys
from observer.db.usage._dialect import columns_unless_crossing, epoch_ms_sql
from observer.db.usage._query import join_ranges_to_clip
from observer.db.usage.spec import (
    ROOM_METADATA,
    STATE_SUMS,
    UsageSpec,
    UsageTotal,
    epoch_ms,
    key_width,
)


def with_states(
    conn: Connection, spec: UsageSpec, since: datetime, rows: Sequence[Any]
) -> list[UsageTotal]:
    """The summed rows as totals, with the states of the sessions cut from their spans."""
    groups, width = len(spec.group_by), key_width(spec)
    cut = cut_states(conn, spec, since) if spec.states else {}
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


def by_columns(
    edges: list[int], unless_crossing: bool, crosses: bool, joined_ms: int, left_ms: int
) -> bool:
    """Whether a closed session inside the window counts by its own state columns in
    `usage_query`: see `columns_unless_crossing`."""
    if unless_crossing:
        return not crosses
    first = bisect_right(edges, joined_ms) - 1
    return first == bisect_right(edges, left_ms - 1) - 1


def cut_states(
    conn: Connection, spec: UsageSpec, since: datetime
) -> dict[tuple[tuple[str | None, ...], int], list[int]]:
    """State and alone ms of the closed sessions that do not lie whole in one bucket, from
    their spans cut at the window's and buckets' edges.

    Those are the few that hold the window's start or end, or (when every inner edge is a
    UTC midnight, as with days and months) hold a midnight: `join_ranges_to_clip`."""
    dialect = conn.dialect.name
    edges = [epoch_ms(e) for e in spec.edges]
    unless_crossing = columns_unless_crossing(spec, dialect)
    state_index = {name: i for i, name in enumerate(AGENT_STATES)}
    other, alone = STATE_SUMS.index(OTHER_STATE), STATE_SUMS.index("alone")
    first, last, buckets = edges[0], edges[-1], len(edges) - 1
    width = key_width(spec)
    n = len(STATE_SUMS)
    out: dict[tuple[tuple[str | None, ...], int], list[int]] = {}
    for row in conn.execute(cut_states_query(spec, dialect, since)).all():
        inside, crosses, kind, value, joined, left, s, e = row[width:]
        if inside and by_columns(edges, unless_crossing, crosses, joined, left):
            continue  # counted by its own columns (as `usage_query` decides)
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


def cut_states_query(spec: UsageSpec, dialect: str, since: datetime) -> Any:
    """(keys..., whole in the window, crosses_day, span kind, value, joined_ms, left_ms,
    span start and end ms) for each span of the sessions `cut_states` cuts."""
    t = Base.metadata.tables["sessions"]
    sp = Base.metadata.tables["session_spans"]
    rooms = Base.metadata.tables["rooms"]
    start, end = spec.edges[0], spec.edges[-1]
    keys = sum_keys(spec, t, rooms, dialect)
    source: Any = t.join(
        sp, and_(sp.c.room_sid == t.c.room_sid, sp.c.participant_sid == t.c.participant_sid)
    )
    if any(g.startswith(ROOM_METADATA) for g in spec.group_by):
        source = source.outerjoin(rooms, rooms.c.sid == t.c.room_sid)
    common = [t.c.left_at.is_not(None), t.c.left_at > start]
    if spec.kind is not None:
        common.append(t.c.participant_kind == spec.kind)
    whole = and_(t.c.joined_at >= start, t.c.left_at <= end)  # as in `usage_query`
    columns = [*keys, case((whole, 1), else_=0), t.c.crosses_day, sp.c.kind, sp.c.value]
    columns += [t.c.joined_ms, t.c.left_ms]
    columns += [epoch_ms_sql(c, dialect) for c in (sp.c.started_at, sp.c.ended_at)]
    ranges = join_ranges_to_clip(spec, start - since)
    return union_all(
        *(select(*columns).select_from(source).where(*a.where(since, end), *common) for a in ranges)
    )
