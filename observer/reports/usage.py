"""Standing time per group inside a time window (`observer usage`).

Each session counts only for its part inside the window and inside each day or month
bucket; open sessions count up to `now`. The sums are computed in SQL by the store; this
module plans the buckets, names them and renders the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from observer.core.agent_usage import COUNTERS, USAGE_KINDS
from observer.core.times import iso, next_month
from observer.db.usage import (
    STATE_SUMS,
    USAGE_GROUP_COLUMNS,
    TokenSessions,
    TokenTotal,
    UsageSpec,
    UsageTotal,
    is_group_name,
)
from observer.reports.prices import PriceBook, model_cost
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
    tokens: bool = False  # add `TOKEN_FIELDS` per group
    prices: PriceBook | None = None  # add `COST_FIELDS` per group

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
    # with `UsageQuery.tokens`: per `TOKEN_FIELDS` entry; the counters None (unknown, not 0)
    # when no session of the group ever reported usage (`no_usage_reported`)
    tokens: tuple[int | bool | None, ...] = ()
    costs: tuple[Decimal | None, ...] = ()  # with prices: per `COST_FIELDS`; None: unknown


# With --states: ms in each agent state, in no known state (never set, before the observer
# saw the agent, while it could not see, or an open session's), and alone in the room.
STATE_FIELDS = (
    *(f"state_{n}_ms" for n in STATE_SUMS if n != "alone"),
    "state_unknown_ms",
    "alone_ms",
)
# With --tokens: model usage reported in the window, and the flags on it; then the group's
# sessions whose agent never reported usage to the room (an agent that does not broadcast
# it, such as livekit-agents before 1.5), and whether that is all the group has: then its
# counters are unknown (None), not 0.
TOKEN_FIELDS = (
    "usage_sessions",
    *COUNTERS,
    "usage_unseen_sessions",
    "usage_went_backwards",
    "usage_silent_realtime",
    "no_usage_sessions",
    "no_usage_reported",
)
_NO_USAGE = TOKEN_FIELDS.index("no_usage_sessions")
# With --prices: cost per kind and in all
COST_KINDS = ("agent_minutes", *USAGE_KINDS)
COST_FIELDS = (*(f"cost_{k}" for k in COST_KINDS), "cost")


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


@dataclass(slots=True)
class _Group:
    states: list[int]  # per `STATE_SUMS`, with `UsageQuery.states`
    tokens: list[int]  # per `TOKEN_FIELDS` but the marker, with tokens or prices
    costs: dict[str, Decimal | None]  # per `COST_KINDS`, with prices
    sessions: int = 0
    duration_ms: int = 0
    billable_minutes: int = 0

    def add_cost(self, kind: str, amount: Decimal | None) -> None:
        before = self.costs[kind]
        self.costs[kind] = None if before is None or amount is None else before + amount


class UsageSource(Protocol):
    """Where the sums come from: the store, or a reconcile run's transaction."""

    def usage(self, spec: UsageSpec) -> list[UsageTotal]: ...

    def tokens(self, spec: UsageSpec) -> tuple[list[TokenTotal], list[TokenSessions]]: ...


class SharedUsageSource(UsageSource, Protocol):
    """A source that can sum several windows at once (the store)."""

    def usage_together(self, specs: Sequence[UsageSpec]) -> list[list[UsageTotal]]: ...


@dataclass(frozen=True)
class _Plan:
    spec: UsageSpec
    labels: list[str]  # the label of each bucket of `spec`
    where: list[int]  # each group of q.by: an index of the spec's keys, or -1 the bucket


def _plan(q: UsageQuery) -> _Plan:
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
        # prices never cut a session: they tell apart its sums by the prices at its join
        price_cuts=() if q.prices is None else q.prices.changes(),
    )
    labels = [e.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m") for e in edges[:-1]]
    where = [columns.index(g) if g in columns else -1 for g in q.by]
    return _Plan(spec, labels, where)


def _price_time(cuts: Sequence[datetime], priced: int) -> datetime:
    """A time at which the prices are those in effect after the first `priced` of `cuts`
    (every change of a price): before the first, none is."""
    return cuts[priced - 1] if priced else datetime.min.replace(tzinfo=UTC)


def compute(
    store: UsageSource, q: UsageQuery, warn: Callable[[str], None] = lambda _m: None
) -> list[UsageLine]:
    """Standing time (and what `q` adds) per group of `q.by`, sorted by group. `warn` hears
    once of each thing that has no price."""
    plan = _plan(q)
    return _lines(store, q, plan, store.usage(plan.spec), warn)


def compute_together(
    store: SharedUsageSource, queries: Sequence[UsageQuery]
) -> list[list[UsageLine]]:
    """`compute` of each query, the sessions read once where the store can (the same
    groups over windows that end together, in days or months)."""
    plans = [_plan(q) for q in queries]
    totals = store.usage_together([p.spec for p in plans])
    return [
        _lines(store, q, p, t, lambda _m: None)
        for q, p, t in zip(queries, plans, totals, strict=True)
    ]


def _lines(
    store: UsageSource,
    q: UsageQuery,
    plan: _Plan,
    totals: Sequence[UsageTotal],
    warn: Callable[[str], None],
) -> list[UsageLine]:
    labels, where, cuts = plan.labels, plan.where, plan.spec.price_cuts
    if not (q.states or q.tokens or q.prices is not None):
        return _plain_lines(q, plan, totals)
    warned: set[str] = set()

    def unpriced(what: str) -> None:
        if what not in warned:
            warned.add(what)
            warn(f"no price for {what}: its cost is left empty")

    groups: dict[tuple[str | None, ...], _Group] = {}
    with_tokens = q.tokens or q.prices is not None

    def group(key: tuple[str | None, ...]) -> _Group:
        g = groups.get(key)
        if g is None:  # only what `q` asks for: a month by agent and day is 30,000 groups
            g = groups[key] = _Group(
                states=[0] * len(STATE_SUMS) if q.states else [],
                tokens=[0] * (_NO_USAGE + 1) if with_tokens else [],
                costs=dict.fromkeys(COST_KINDS, Decimal(0)) if q.prices is not None else {},
            )
        return g

    for t in totals:
        g = group(tuple(t.keys[i] if i >= 0 else labels[t.bucket] for i in where))
        g.sessions += t.sessions
        g.duration_ms += t.duration_ms
        g.billable_minutes += t.billable_minutes
        for i, ms in enumerate(t.states):
            g.states[i] += ms
        if q.prices is not None:  # each session's minutes at the price at its join
            price = q.prices.minute_price(_price_time(cuts, t.priced))
            if price is None:
                unpriced("agent minutes of the sessions that joined before any agent_minute")
            g.add_cost("agent_minutes", None if price is None else price * t.billable_minutes)
    if with_tokens:
        models, sessions = store.tokens(plan.spec)
        for ts in sessions:
            g = group(tuple(ts.keys[i] if i >= 0 else labels[ts.bucket] for i in where))
            g.tokens[0] += ts.sessions
            for i, n in enumerate((ts.unseen, ts.backwards, ts.silent_realtime), 1 + len(COUNTERS)):
                g.tokens[i] += n
        for tt in models:
            g = group(tuple(tt.keys[i] if i >= 0 else labels[tt.bucket] for i in where))
            for i, n in enumerate(tt.counters, 1):
                g.tokens[i] += n
            if q.prices is not None:  # at the prices when the totals were reported
                at = _price_time(cuts, tt.priced)
                prices = q.prices.model_prices(tt.kind, tt.provider, tt.model, at)
                if prices is None:
                    unpriced(f"{tt.kind} model {tt.provider}/{tt.model}")
                    g.add_cost(tt.kind, None)
                else:
                    g.add_cost(
                        tt.kind, model_cost(prices, dict(zip(COUNTERS, tt.counters, strict=True)))
                    )
        if q.tokens:  # the sessions, cut as above, whose agents never reported usage
            silent = replace(plan.spec, without_usage=True, states=False, price_cuts=())
            for t in store.usage(silent):
                g = group(tuple(t.keys[i] if i >= 0 else labels[t.bucket] for i in where))
                g.tokens[_NO_USAGE] += t.sessions
    if not q.by and not groups:
        group(())
    lines = []
    for key, g in groups.items():
        costs: tuple[Decimal | None, ...] = ()
        if q.prices is not None:
            parts = [g.costs[k] for k in COST_KINDS]
            total = None if None in parts else sum((p for p in parts if p is not None), Decimal(0))
            costs = (*parts, total)
        lines.append(
            UsageLine(
                key,
                g.sessions,
                g.duration_ms,
                g.billable_minutes,
                _with_unknown(g.duration_ms, tuple(g.states)) if q.states else (),
                _token_values(g) if q.tokens else (),
                costs,
            )
        )
    return sorted(lines, key=_sort_key)


def _token_values(g: _Group) -> tuple[int | bool | None, ...]:
    """A group's `TOKEN_FIELDS` values: with `no_usage_reported` when it has sessions and
    none of them (nor any other) reported usage, its counters unknown rather than 0."""
    no_usage = g.tokens[_NO_USAGE]
    nothing = g.tokens[0] == 0 and no_usage > 0 and no_usage == g.sessions
    counters = [None if nothing else n for n in g.tokens[1 : 1 + len(COUNTERS)]]
    return (g.tokens[0], *counters, *g.tokens[1 + len(COUNTERS) : _NO_USAGE], no_usage, nothing)


def _plain_lines(q: UsageQuery, plan: _Plan, totals: Sequence[UsageTotal]) -> list[UsageLine]:
    """`_lines` of a query for standing time alone: a month by agent and day is 30,000
    groups, each made with as little as it takes."""
    labels, where = plan.labels, plan.where
    sums: dict[tuple[str | None, ...], list[int]] = {}
    for t in totals:
        keys = t.keys
        key = tuple([labels[t.bucket] if i < 0 else keys[i] for i in where])
        had = sums.get(key)
        if had is None:
            sums[key] = [t.sessions, t.duration_ms, t.billable_minutes]
        else:
            had[0] += t.sessions
            had[1] += t.duration_ms
            had[2] += t.billable_minutes
    if not q.by and not sums:
        sums[()] = [0, 0, 0]
    lines = [UsageLine(key, n, ms, minutes) for key, (n, ms, minutes) in sums.items()]
    return sorted(lines, key=_sort_key)


def _sort_key(u: UsageLine) -> tuple[str, ...]:
    # Only agent names can be missing (None); they sort first, like "".
    return tuple([v or "" for v in u.groups])


def _money(v: Decimal | None) -> str:
    return "" if v is None else str(v)


def render(q: UsageQuery, lines: Sequence[UsageLine], fmt: str) -> str:
    """The lines as a table (human durations), CSV or JSON (durations in ms, money as
    exact decimal text; an unknown cost is empty, or null in JSON)."""
    state_fields = STATE_FIELDS if q.states else ()
    token_fields = TOKEN_FIELDS if q.tokens else ()
    cost_fields = COST_FIELDS if q.prices is not None else ()
    fields = (
        *q.by,
        "sessions",
        "duration_ms",
        "billable_minutes",
        *state_fields,
        *token_fields,
        *cost_fields,
    )
    if fmt == "json":
        return json.dumps([_line_dict(q, u) for u in lines], indent=2) + "\n"
    if fmt == "csv":
        return csv_text(
            fields,
            (
                (
                    *u.groups,
                    u.sessions,
                    u.duration_ms,
                    u.billable_minutes,
                    *u.states,
                    *(_token_cell(v, "true", "false", "") for v in u.tokens),
                    *(_money(c) for c in u.costs),
                )
                for u in lines
            ),
        )
    # the table names a state by its name alone: listening, ..., unknown, alone
    state_heads = tuple(f.removeprefix("state_").removesuffix("_ms") for f in state_fields)
    header = (*q.by, "sessions", "time", "billable_min", *state_heads, *token_fields, *cost_fields)
    rows = [header] + [
        (
            *("-" if v is None else v for v in u.groups),
            str(u.sessions),
            human_duration(u.duration_ms),
            str(u.billable_minutes),
            *(human_duration(ms) for ms in u.states),
            *(_token_cell(v, "yes", "no", "-") for v in u.tokens),
            *(_money(c) for c in u.costs),
        )
        for u in lines
    ]
    if q.by:
        costs = [[u.costs[i] for u in lines] for i in range(len(cost_fields))]
        total = (
            "total",
            *[""] * (len(q.by) - 1),
            str(sum(u.sessions for u in lines)),
            human_duration(sum(u.duration_ms for u in lines)),
            str(sum(u.billable_minutes for u in lines)),
            *(human_duration(sum(u.states[i] for u in lines)) for i in range(len(state_fields))),
            *(_token_total([u.tokens[i] for u in lines]) for i in range(len(token_fields))),
            *(
                "" if None in column else str(sum((c for c in column if c), Decimal(0)))
                for column in costs
            ),
        )
        rows.append(total)
    out = table(rows)
    open_rule = f"open sessions up to {iso(min(q.now, q.end))}" if q.include_open else "closed only"
    currency = f", costs in {q.prices.currency}" if q.prices and q.prices.currency else ""
    out.append(
        f"([{iso(q.start)}, {iso(q.end)}), rounding {q.rounding}, {open_rule},"
        f" kind {q.kind or 'any'}{currency})"
    )
    return "\n".join(out) + "\n"


def _token_cell(value: int | bool | None, yes: str, no: str, unknown: str) -> str:
    if value is None:
        return unknown
    if isinstance(value, bool):
        return yes if value else no
    return str(value)


def _token_total(column: Sequence[int | bool | None]) -> str:
    """The table's total of a `TOKEN_FIELDS` column: the known counts summed; "-" when
    no line knows one; nothing for the marker."""
    if any(isinstance(v, bool) for v in column):
        return ""
    known = [v for v in column if v is not None]
    return str(sum(known)) if known or not column else "-"


def _line_dict(q: UsageQuery, u: UsageLine) -> dict[str, Any]:
    d: dict[str, Any] = dict(zip(q.by, u.groups, strict=True))
    d.update(sessions=u.sessions, duration_ms=u.duration_ms, billable_minutes=u.billable_minutes)
    if q.states:
        d.update(zip(STATE_FIELDS, u.states, strict=True))
    if q.tokens:
        d.update(zip(TOKEN_FIELDS, u.tokens, strict=True))
    if q.prices is not None:
        d.update(zip(COST_FIELDS, (None if c is None else str(c) for c in u.costs), strict=True))
    return d
