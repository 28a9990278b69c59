"""Standing time per group and bucket inside a window, summed in SQL: one window
(`usage_totals`), or several that share their sessions (`usage_totals_together`)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from observer.db.schema import Base
from observer.db.usage._dialect import allow_sorting_again, set_usage_planner
from observer.db.usage._slices import Fanout, add_into, sum_rows
from observer.db.usage._states import with_states
from observer.db.usage.spec import UsageSpec, UsageTotal, at_midnights, epoch_ms


def usage_totals(
    conn: Connection, spec: UsageSpec, fanout: Fanout | None = None
) -> list[UsageTotal]:
    """Standing time (and states) per group and bucket.

    With a `fanout` the sessions are split by when they joined into `fanout.parts`
    slices of the window, each summed at the same time on a connection of its own, and
    the sums added up: each session is in one slice, so every sum is the same as in one
    query, and a machine with several cores uses them. Without, all is read in `conn`'s
    transaction (reconcile relies on that)."""
    set_usage_planner(conn)
    since = reach_back(conn, spec)[0]
    rows = sum_rows(conn, spec, since, fanout, "all")
    allow_sorting_again(conn)
    return with_states(conn, spec, since, rows)


def usage_totals_together(
    conn: Connection, specs: Sequence[UsageSpec], fanout: Fanout | None = None
) -> list[list[UsageTotal]]:
    """`usage_totals` of each spec, reading the bulk of the sessions once when the specs
    differ only in their edges, each starts at a UTC midnight, all end together and cut
    their buckets at midnights (the days of a chart and the months of a table, say).

    The sessions that lie whole in one day, inside every window, are summed once per group
    and day (`whole_pieces`), and each day's sums go to the bucket holding that day in each
    window that holds it; the few others are clipped and cut for each spec alone."""
    if not can_share(specs):
        return [usage_totals(conn, spec, fanout) for spec in specs]
    set_usage_planner(conn)
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
        without_usage=specs[0].without_usage,
    )
    _, back = reach_back(conn, days)
    starts = [back(spec.edges[0]) for spec in specs]

    if fanout is None or fanout.parts <= 1:
        cut_rows = [
            sum_rows(conn, s, since, None, "cut") for s, since in zip(specs, starts, strict=True)
        ]
        whole = sum_rows(conn, days, start, None, "whole")
    else:  # the few to cut at the same time as the bulk, on the same threads
        connect = fanout.connect

        def cut(spec: UsageSpec, since: datetime) -> Sequence[Any]:
            with connect() as own:
                set_usage_planner(own, parallel=False)
                return sum_rows(own, spec, since, None, "cut")

        pairs = zip(specs, starts, strict=True)
        cuts = [fanout.threads.submit(cut, s, since) for s, since in pairs]
        whole = sum_rows(conn, days, start, fanout, "whole")
        cut_rows = [c.result() for c in cuts]
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
        for row in whole:
            b = bucket[row[width]]
            if b is not None:
                add_into(sums, (*row[:width], b), row[width + 1 :])
        for row in rows:
            add_into(sums, tuple(row[: width + 1]), row[width + 1 :])
        out.append((spec, since, [(*head, *values) for head, values in sums.items()]))
    allow_sorting_again(conn)
    return [with_states(conn, spec, since, rows) for spec, since, rows in out]


def can_share(specs: Sequence[UsageSpec]) -> bool:
    """Whether `usage_totals_together` can read the specs' sessions once."""
    if len(specs) < 2 or any(s.price_cuts for s in specs):
        return False
    first = specs[0]
    same = {
        (s.group_by, s.open_until, s.round_to_ms, s.kind, s.states, s.without_usage, s.edges[-1])
        for s in specs
    }
    return (
        len(same) == 1
        and all(
            at_midnights(s) and s.edges[0].astimezone(UTC).time() == datetime.min.time()
            for s in specs
        )
        and first.edges[-1] - min(s.edges[0] for s in specs) > timedelta(days=1)
    )


def reach_back(
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
