"""What each view of the page shows, read through the same functions as the command line
(`observer usage`, `observer sessions`), so the numbers cannot drift apart."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from observer.core.times import next_month
from observer.db import fleet as fleet_db
from observer.db.export_summary import PeriodExport
from observer.db.reads import PeriodSummary, SessionFilter
from observer.db.schema import SessionRow
from observer.db.store import Store
from observer.reports import usage

log = logging.getLogger(__name__)

DAYS = 30
KIND = "agent"  # the participants the Minutes view counts (`usage.UsageQuery`'s default)
TOP_SERIES = 8  # the chart shows this many groups, the rest as "other"
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)


# ---- now ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NowAgent:
    identity: str
    agent_name: str
    joined_at: datetime
    standing_s: float
    alone_s: float | None  # None: not alone (or not known)
    alone_since: datetime | None
    stuck: bool


@dataclass(frozen=True)
class NowRoom:
    name: str
    sid: str
    agents: list[NowAgent]
    company: int | None
    alone_s: float | None
    stuck: bool


def now_version(rooms: list[NowRoom]) -> str:
    """Changes when what the live view shows changes, other than the clock: who is where,
    who is alone since when, who is stuck."""
    h = hashlib.sha256()
    for r in rooms:
        h.update(repr((r.sid, r.company, r.stuck)).encode())
        for a in r.agents:
            h.update(repr((a.identity, a.agent_name, a.joined_at, a.alone_since, a.stuck)).encode())
    return h.hexdigest()[:32]


def now_view(store: Store, now: datetime, stuck_after_s: float) -> list[NowRoom]:
    """Live rooms with their agents; agents alone past `stuck_after_s` are stuck."""
    rooms: dict[str, NowRoom] = {}
    for a in store.live_agents():
        alone_s = None if a.alone_since is None else (now - a.alone_since).total_seconds()
        stuck = alone_s is not None and alone_s >= stuck_after_s
        room = rooms.get(a.room_sid)
        if room is None:
            room = rooms[a.room_sid] = NowRoom(
                a.room_name, a.room_sid, [], a.company_now, alone_s, stuck
            )
        room.agents.append(
            NowAgent(
                a.identity,
                a.agent_name or "",
                a.joined_at,
                max(0.0, (now - a.joined_at).total_seconds()),
                alone_s,
                a.alone_since,
                stuck,
            )
        )
    # stuck rooms first, then by name
    return sorted(rooms.values(), key=lambda r: (not r.stuck, r.name))


# ---- minutes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    minutes: int


@dataclass
class MinutesChart:
    by: str
    days: list[str]
    keys: list[str]  # the series shown, "other" last when there is one
    colors: dict[str, str]
    minutes: dict[str, list[int]]  # series -> billable minutes per day
    day_totals: list[int]
    bars: list[Bar] = field(default_factory=list)
    max_total: int = 0
    scale: list[Tick] = field(default_factory=list)  # the y axis's lines, highest first


def minutes_view(store: Store, now: datetime, by: str = "agent") -> tuple[MinutesChart, MonthTable]:
    """The chart and the month table, as `observer usage` gives them for their windows
    (both up to `now`), the sessions read once for the two."""
    days, months = usage.compute_together(store, [chart_query(now, by), month_query(now, by)])
    return minutes_chart(days, now, by), month_table(months, now)


def grouping_choices(store: Store) -> list[str]:
    """The groupings the page offers: by agent, by each attribute and room-metadata key of
    the latest agent sessions, and the groupings with a value per room or participant."""
    keys = store.grouping_keys()
    keyed = [f"attribute:{k}" for k in keys.attributes]
    keyed += [f"room-metadata:{k}" for k in keys.room_metadata]
    offered = ["agent", *keyed, "room", "identity", "room-metadata"]
    return [g for g in offered if usage.is_grouping(g)]


def worth_warming(choices: list[str]) -> list[str]:
    """Of the offered groupings, those computed ahead of a visit: by agent and by key. (A
    value per room or participant makes a long table that few ask for, and many rows to
    keep; those are computed when asked.)"""
    return [g for g in choices if g == "agent" or g.startswith(("attribute:", "room-metadata:"))]


def chart_query(now: datetime, by: str) -> usage.UsageQuery:
    """The chart's: the last `DAYS` UTC days up to `now`, by day and `by`."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return usage.UsageQuery(today - timedelta(days=DAYS - 1), now, now, by=("day", by), kind=KIND)


def minutes_chart(
    lines: list[usage.UsageLine],
    now: datetime,
    by: str = "agent",
    width: float = 900,
    height: float = 260,
) -> MinutesChart:
    """Billable agent minutes per UTC day, the last `DAYS` days up to today, per `by`, from
    the lines of `chart_query`."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=DAYS - 1)
    days = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)]
    index = {day: i for i, day in enumerate(days)}
    per: dict[str, list[int]] = {}
    for line in lines:
        day, key = line.groups[0] or "", line.groups[1] or ""
        per.setdefault(key, [0] * DAYS)[index[day]] += line.billable_minutes
    ranked = sorted(per, key=lambda k: (-sum(per[k]), k))
    shown = ranked[:TOP_SERIES]
    minutes = {k: per[k] for k in shown}
    rest = ranked[TOP_SERIES:]
    if rest:
        minutes["other"] = [sum(per[k][i] for k in rest) for i in range(DAYS)]
    keys = list(minutes)
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    if rest:
        colors["other"] = "#bab0ac"
    day_totals = [sum(m[i] for m in minutes.values()) for i in range(DAYS)]
    chart = MinutesChart(by, days, keys, colors, minutes, day_totals)
    chart.max_total = max(day_totals, default=0)
    scale = (height - 20) / chart.max_total if chart.max_total else 0
    for n in sorted({chart.max_total, chart.max_total // 2} - {0}, reverse=True):
        chart.scale.append(Tick(height - n * scale, n))
    step = width / DAYS
    for i, day in enumerate(days):
        y = height
        for k in keys:
            n = minutes[k][i]
            if not n:
                continue
            h = n * scale
            y -= h
            label = k or "(none)"
            chart.bars.append(
                Bar(i * step + 2, y, step - 4, h, colors[k], f"{day} {label}: {n} min")
            )
    return chart


@dataclass(frozen=True)
class MonthRow:
    key: str
    this_month: usage.UsageLine | None
    last_month: usage.UsageLine | None


@dataclass
class MonthTable:
    this_start: datetime
    last_start: datetime
    now: datetime
    rows: list[MonthRow]
    this_total: tuple[int, int, int]  # sessions, duration_ms, billable minutes
    last_total: tuple[int, int, int]


def month_query(now: datetime, by: str) -> usage.UsageQuery:
    """The month table's: the last month and this one up to `now`, by month and `by`. (One
    query cut at the first of this month gives the numbers of a query for each month.)"""
    this_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_start = (this_start - timedelta(days=1)).replace(day=1)
    return usage.UsageQuery(last_start, now, now, by=("month", by), kind=KIND)


def month_table(both: list[usage.UsageLine], now: datetime) -> MonthTable:
    """The current month (to now) and the last one per group, from the lines of
    `month_query`."""
    this_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_start = (this_start - timedelta(days=1)).replace(day=1)
    this_label = this_start.strftime("%Y-%m")
    this = [line for line in both if line.groups[0] == this_label]
    last = [line for line in both if line.groups[0] != this_label]
    this_by = {line.groups[1] or "": line for line in this}
    last_by = {line.groups[1] or "": line for line in last}
    rows = [MonthRow(k, this_by.get(k), last_by.get(k)) for k in sorted(this_by | last_by)]

    def total(lines: list[usage.UsageLine]) -> tuple[int, int, int]:
        return (
            sum(x.sessions for x in lines),
            sum(x.duration_ms for x in lines),
            sum(x.billable_minutes for x in lines),
        )

    assert next_month(last_start) == this_start
    return MonthTable(this_start, last_start, now, rows, total(this), total(last))


# ---- sessions -------------------------------------------------------------------------------

SESSIONS_SHOWN = 100


def sessions_view(store: Store, f: SessionFilter) -> list[SessionRow]:
    """Recent sessions matching the filter, as `observer sessions` lists them."""
    return store.sessions(f)


# ---- reconcile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileView:
    periods: list[PeriodSummary]
    # per (start, end) of a period: what each billing target holds for its buckets
    exports: dict[tuple[datetime, datetime], list[PeriodExport]]


def reconcile_view(store: Store) -> ReconcileView:
    """The latest periods as `observer reconcile` rolled them up: totals and per agent, and
    per billing target what `observer export` sent for them and what came back."""
    periods = store.periods()
    return ReconcileView(periods, store.period_exports([(p.start, p.end) for p in periods]))


# ---- health ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    readiness: list[str] | None  # problems /readyz reports; None when not a daemon
    database: str  # "ok" or the error
    livekit: str  # "ok", the error, or "not checked"
    livekit_url: str | None  # LIVEKIT_URL (None: not a daemon)
    observers: list[fleet_db.Member]


def health_view(
    store: Store,
    now: datetime,
    dead_after_s: float,
    readiness: list[str] | None,
    livekit_url: str | None = None,
) -> Health:
    try:
        store.ping()
        database = "ok"
        observers = store.observers(now, dead_after_s)
    except Exception as exc:  # the page says what failed, whatever it was
        database = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        observers = []
    if readiness is None:
        livekit = "not checked (this process does not connect to LiveKit)"
    else:
        lk = [p for p in readiness if "livekit" in p.lower()]
        livekit = "; ".join(lk) if lk else "ok"
    return Health(readiness, database, livekit, livekit_url, observers)


# ---- a small cache for the expensive views ---------------------------------------------------


class TtlCache:
    """Values of the heavy views, answered at once, kept by age (`get`) or by the version
    of the data they were computed from (`current`). By age, a value older than `ttl_s` is
    still answered while a thread computes the next one. By version, a value is answered
    only while the data's version is the one it was computed at. A value to compute while
    the caller waits is computed once: callers asking while it is computed (the start-up's
    warm-up, say) wait for that computation. Thread-safe."""

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        spawn: Callable[[Callable[[], None]], None],
    ) -> None:
        """`spawn` runs a refresh in the background (the store's `submit`: one of its
        threads, on one of its connections)."""
        self._ttl = ttl_s
        self._clock = clock
        self._spawn = spawn
        self._values: dict[Any, tuple[float, Any, Any]] = {}  # key -> (at, value, version)
        self._refreshing: set[Any] = set()
        self._first: dict[Any, Future[Any]] = {}  # keys being computed while callers wait
        self._lock = threading.Lock()

    def current(self, key: Any, make: Callable[[], Any], version: Any) -> Any:
        """The value computed at this `version` of the data, else (or when `version` is
        None: the value changes with the clock) one computed now."""
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and version is not None and hit[2] == version:
                return hit[1]
            first = self._first.get(key)
            computing = first is not None
            if first is None:
                first = self._first[key] = Future()
        return first.result() if computing else self._compute(first, key, make, version)

    def _compute(self, first: Future[Any], key: Any, make: Callable[[], Any], version: Any) -> Any:
        try:
            value = self._store(key, make, version)
        except BaseException as exc:
            first.set_exception(exc)
            raise
        else:
            first.set_result(value)
            return value
        finally:
            with self._lock:
                del self._first[key]

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._values.get(key)
            stale = hit is not None and self._clock() - hit[0] >= self._ttl
            refresh = stale and key not in self._refreshing
            if refresh:
                self._refreshing.add(key)
            first, computing = None, False
            if hit is None:
                first = self._first.get(key)
                computing = first is not None
                if first is None:
                    first = self._first[key] = Future()
        if first is not None:
            return first.result() if computing else self._compute(first, key, make, None)
        assert hit is not None
        if refresh:
            self._spawn(lambda: self._refresh(key, make))
        return hit[1]

    def _refresh(self, key: Any, make: Callable[[], Any]) -> None:
        try:
            self._store(key, make)
        except Exception:  # the old value stays; the next request tries again
            log.warning("refreshing a view failed", exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _store(self, key: Any, make: Callable[[], Any], version: Any = None) -> Any:
        at = self._clock()
        value = make()
        with self._lock:
            self._values[key] = (at, value, version)
            if len(self._values) > 64:
                oldest = min(self._values, key=lambda k: self._values[k][0])
                del self._values[oldest]
        return value
