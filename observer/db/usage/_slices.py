"""Parallel slices: a usage query's sessions split by when they joined into slices of
the window, each summed at the same time on a connection of its own, and the sums added
up. Each session is in one slice, so every sum is the same as in one query."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from observer.db.schema import Base
from observer.db.usage._dialect import set_usage_planner
from observer.db.usage._query import usage_query
from observer.db.usage.spec import Subset, UsageSpec, key_width


@dataclass(frozen=True)
class Fanout:
    """How to sum at once: in `parts` slices, each on a connection of its own that
    `connect` opens on a thread of `threads` (the store's, counted in its budget)."""

    parts: int
    threads: Executor
    connect: Callable[[], Connection]


def sum_rows(
    conn: Connection, spec: UsageSpec, since: datetime, fanout: Fanout | None, which: Subset
) -> Sequence[Any]:
    """The rows of `usage_query` (`which` of its sessions), in `fanout.parts` slices at
    once (see `usage_totals`), else in `conn`."""
    t = Base.metadata.tables["sessions"]
    dialect = conn.dialect.name
    start, end = spec.edges[0], spec.edges[-1]
    if fanout is None or fanout.parts <= 1:
        return conn.execute(usage_query(spec, dialect, since, end, start - since, which)).all()
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
    step = (last - first) / fanout.parts
    cuts = [first + step * i for i in range(1, fanout.parts)]
    if which == "whole":
        # each session counts in the day of its join: cut at midnights, no group and day
        # is in two slices, and their rows need no adding up
        cuts = sorted(
            {c.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) for c in cuts}
        )
        cuts = [c for c in cuts if since < c < end]
    bounds = [since, *cuts, end]

    def sum_slice(lo: datetime, hi: datetime) -> list[Any]:
        with fanout.connect() as own:
            set_usage_planner(own, parallel=False)  # the slices are the parallelism
            query = usage_query(spec, dialect, lo, hi, start - since, which)
            return list(own.execute(query).all())

    results = fanout.threads.map(sum_slice, bounds[:-1], bounds[1:])
    if which == "whole":
        return [row for rows in results for row in rows]
    return added_up(results, key_width(spec))


def added_up(results: Iterable[list[Any]], width: int) -> list[tuple[Any, ...]]:
    """Rows of (keys..., bucket, sums...) from several slices, summed per keys and
    bucket; a sum that is NULL in every slice stays NULL."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for rows in results:
        for row in rows:
            add_into(out, tuple(row[: width + 1]), row[width + 1 :])
    return [(*head, *sums) for head, sums in out.items()]


def add_into(out: dict[tuple[Any, ...], list[Any]], head: tuple[Any, ...], sums: Any) -> None:
    """Adds the sums to those of `head` in `out`; a NULL sum adds nothing."""
    had = out.get(head)
    if had is None:
        out[head] = list(sums)
        return
    for i, v in enumerate(sums):
        if v is not None:
            had[i] = v if had[i] is None else had[i] + v
