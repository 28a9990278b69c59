"""Standing time per group inside a time window (`observer usage`).

Each session counts only for its part inside the window and inside each day or month
bucket; open sessions count up to `now`. The sums are computed in SQL by the store; this
module plans the buckets, names them and renders the result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from observer.core.times import iso, next_month
from observer.db.store import Store
from observer.db.usage_sql import STATE_SUMS, USAGE_GROUP_COLUMNS, UsageSpec, is_group_name
from observer.reports.render import csv_text, table
from observer.reports.sessions import human_duration

TIME_GROUPINGS = ("day", "month")
GROUPINGS = (*USAGE_GROUP_COLUMNS, *TIME_GROUPINGS)
KEYED_GROUPINGS = ("attribute:KEY", "room-metadata", "room-metadata:KEY")


def is_grouping(g: str) -> bool:
    """A name `observer usage --by` takes: one of GROUPINGS or of KEYED_GROUPINGS."""
    return g in TIME_GROUPINGS or is_group_name(g)


# --rounding -> each piece of a session is rounded up to a multiple of this many ms
ROUNDINGS = {"none": 1, "second": 1000, "minute": 60_000}


@dataclass(frozen=True)
class UsageQuery:
    """What `observer usage` was asked for, checked by the command line."""

    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    now: datetime  # open sessions count up to min(now, end)
    by: tuple[str, ...] = ()  # names from GROUPINGS, at most one of day/month
    rounding: str = "none"  # a key of ROUNDINGS
    include_open: bool = True
    kind: str | None = "agent"  # participant kind counted; None counts every kind
    states: bool = False  # add `STATE_FIELDS` per group

    @property
    def time_grouping(self) -> str | None:
        return next((g for g in self.by if g in TIME_GROUPINGS), None)


class UsageLine(NamedTuple):
    """One group's standing time."""

    groups: tuple[str | None, ...]  # one value per `UsageQuery.by` entry
    sessions: int
    duration_ms: int  # after rounding each session piece
    billable_minutes: int  # each session piece rounded up to a whole minute, then summed
    states: tuple[int, ...] = ()  # with `UsageQuery.states`: ms per `STATE_FIELDS` entry


# With --states: ms in each agent state, in no known state (never set, before the observer
# saw the agent, while it could not see, or an open session's), and alone in the room.
STATE_FIELDS = (
    *(f"state_{n}_ms" for n in STATE_SUMS if n != "alone"),
    "state_unknown_ms",
    "alone_ms",
)


def _with_unknown(duration_ms: int, sums: tuple[int, ...]) -> tuple[int, ...]:
    """`STATE_SUMS` totals -> `STATE_FIELDS` values: unknown is the rest of the time."""
    *states, alone = sums
    return (*states, max(0, duration_ms - sum(states)), alone)


def bucket_edges(start: datetime, end: datetime, unit: str | None) -> tuple[datetime, ...]:
    """The window [start, end) cut at every UTC midnight (day) or first of a month (month)."""
    edges = [start]
    if unit is not None:
        edge = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "month":
            edge = edge.replace(day=1)
        while True:
            edge = next_month(edge) if unit == "month" else edge + timedelta(days=1)
            if edge >= end:
                break
            edges.append(edge)
    edges.append(end)
    return tuple(edges)


def compute(store: Store, q: UsageQuery) -> list[UsageLine]:
    """Standing time per group of `q.by`, sorted by group."""
    unit = q.time_grouping
    edges = bucket_edges(q.start, q.end, unit)
    columns = tuple(g for g in q.by if g not in TIME_GROUPINGS)
    spec = UsageSpec(
        edges=edges,
        group_by=columns,
        open_until=q.now if q.include_open else None,
        round_to_ms=ROUNDINGS[q.rounding],
        kind=q.kind,
        states=q.states,
    )
    labels = [e.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m") for e in edges[:-1]]
    # where each group of q.by comes from: a column of the store's keys, or the bucket (-1)
    where = [columns.index(g) if g in columns else -1 for g in q.by]
    lines = [
        UsageLine(
            tuple(t.keys[i] if i >= 0 else labels[t.bucket] for i in where),
            t.sessions,
            t.duration_ms,
            t.billable_minutes,
            _with_unknown(t.duration_ms, t.states) if q.states else (),
        )
        for t in store.usage(spec)
    ]
    if not q.by and not lines:
        lines.append(UsageLine((), 0, 0, 0, (0,) * len(STATE_FIELDS) if q.states else ()))
    # Only agent names can be missing (None); they sort first, like "".
    return sorted(lines, key=lambda u: tuple(v or "" for v in u.groups))


def render(q: UsageQuery, lines: Sequence[UsageLine], fmt: str) -> str:
    """The lines as a table (human durations), CSV or JSON (durations in ms)."""
    state_fields = STATE_FIELDS if q.states else ()
    fields = (*q.by, "sessions", "duration_ms", "billable_minutes", *state_fields)
    if fmt == "json":
        return json.dumps([_line_dict(q, u) for u in lines], indent=2) + "\n"
    if fmt == "csv":
        return csv_text(
            fields,
            ((*u.groups, u.sessions, u.duration_ms, u.billable_minutes, *u.states) for u in lines),
        )
    # the table names a state by its name alone: listening, ..., unknown, alone
    state_heads = tuple(f.removeprefix("state_").removesuffix("_ms") for f in state_fields)
    header = (*q.by, "sessions", "time", "billable_min", *state_heads)
    rows = [header] + [
        (
            *("-" if v is None else v for v in u.groups),
            str(u.sessions),
            human_duration(u.duration_ms),
            str(u.billable_minutes),
            *(human_duration(ms) for ms in u.states),
        )
        for u in lines
    ]
    if q.by:
        total = (
            "total",
            *[""] * (len(q.by) - 1),
            str(sum(u.sessions for u in lines)),
            human_duration(sum(u.duration_ms for u in lines)),
            str(sum(u.billable_minutes for u in lines)),
            *(human_duration(sum(u.states[i] for u in lines)) for i in range(len(state_fields))),
        )
        rows.append(total)
    out = table(rows)
    open_rule = f"open sessions up to {iso(min(q.now, q.end))}" if q.include_open else "closed only"
    out.append(
        f"([{iso(q.start)}, {iso(q.end)}), rounding {q.rounding}, {open_rule},"
        f" kind {q.kind or 'any'})"
    )
    return "\n".join(out) + "\n"


def _line_dict(q: UsageQuery, u: UsageLine) -> dict[str, Any]:
    d: dict[str, Any] = dict(zip(q.by, u.groups, strict=True))
    d.update(sessions=u.sessions, duration_ms=u.duration_ms, billable_minutes=u.billable_minutes)
    if q.states:
        d.update(zip(STATE_FIELDS, u.states, strict=True))
    return d
