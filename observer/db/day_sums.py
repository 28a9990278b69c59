"""The reports' sums of whole UTC days that are over, kept so that they are read rather than
summed again (`usage_day_sums`).

Only the sessions that lie whole in one day are kept this way: closed, holding no midnight.
Such a session changes once its day is over only when it is closed late (at an observer's
start, by `observer reconcile`), gets attributes, or its room gets new metadata; each
counts the day's version up (`usage_day_versions`, in the transaction that writes it).
Sums computed at an older version of their day are summed again. A day counts as over
`SETTLED` after its end, so that a write in flight while it ended is in the sums.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from observer.db.schema import Base, dialect_insert

log = logging.getLogger(__name__)

SETTLED = timedelta(hours=1)
# Keeping a grouping's days lets go of its days this much older (the page reads two months)
KEPT_FOR = timedelta(days=100)
# One day's sums of one group: (key, sessions, duration_ms, billable_minutes)
DaySum = tuple[str | None, int, int, int]

_warned_unwritable = False
# Keeping is written behind the answer, one batch at a time, in the order asked
_keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="day-sums")


def changed_day(joined_at: datetime, crosses_day: bool, now: datetime) -> date | None:
    """The day whose kept sums a closed session changed at `now` changes: its day, when it
    lies whole in one (`crosses_day` as the database has it) that is over by `now`'s clock;
    else None."""
    if crosses_day:
        return None
    day = joined_at.astimezone(UTC).date()
    return day if day < now.astimezone(UTC).date() else None


def room_days(conn: Connection, room_sid: str, now: datetime) -> set[date]:
    """The days over by `now` holding closed sessions of this room that lie whole in one:
    when its metadata changes, so do their sums by room metadata."""
    t = Base.metadata.tables["sessions"]
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = conn.execute(
        select(t.c.joined_at).where(
            t.c.room_sid == room_sid,
            t.c.left_at.is_not(None),
            t.c.crosses_day.is_(False),
            t.c.joined_at < today,
        )
    )
    return {joined.astimezone(UTC).date() for (joined,) in rows}


def count_changes(conn: Connection, days: Iterable[date]) -> None:
    """Count the versions of `days` up. Last in a transaction that wrote sessions: then the
    version row is the last lock it takes, and writers cannot deadlock on it."""
    t = Base.metadata.tables["usage_day_versions"]
    for day in sorted(set(days)):
        stmt = dialect_insert(conn.dialect.name, t).values(day=day, version=1)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=[t.c.day], set_={"version": t.c.version + 1})
        )


def rollup_name(group_by: Sequence[str], kind: str | None, round_to_ms: int) -> str:
    return f"{'|'.join(group_by)};{kind or '*'};{round_to_ms}"


def versions(conn: Connection, first: date, last: date) -> dict[date, int]:
    """The version of each day in [first, last] that changed at all (others are 0)."""
    t = Base.metadata.tables["usage_day_versions"]
    rows = conn.execute(select(t.c.day, t.c.version).where(t.c.day >= first, t.c.day <= last))
    return {day: version for day, version in rows}


def kept(
    conn: Connection, rollup: str, first: date, last: date, current: dict[date, int]
) -> dict[date, list[DaySum]]:
    """The kept sums of the days in [first, last] computed at their `current` version.
    Marks and sums are read in one statement, so both come from the same keeping."""
    m = Base.metadata.tables["usage_day_marks"]
    s = Base.metadata.tables["usage_day_sums"]
    rows = conn.execute(
        select(m.c.day, m.c.version, s.c.key, s.c.sessions, s.c.duration_ms, s.c.billable_minutes)
        .select_from(m.outerjoin(s, and_(s.c.rollup == m.c.rollup, s.c.day == m.c.day)))
        .where(m.c.rollup == rollup, m.c.day >= first, m.c.day <= last)
    )
    valid: dict[date, list[DaySum]] = {}
    for day, version, key, n, ms, minutes in rows:
        if version != current.get(day, 0):
            continue
        sums = valid.setdefault(day, [])
        if n is not None:  # (a day kept with no sessions has no sums)
            sums.append((key, n, ms, minutes))
    return valid


def keep_later(
    engine: Engine,
    rollup: str,
    sums: dict[date, list[DaySum]],
    at_versions: dict[date, int],
    now: datetime,
) -> None:
    """`keep`, in a thread of its own: the caller has its answer already."""
    _keeper.submit(keep, engine, rollup, sums, at_versions, now)


def kept_all() -> None:
    """Wait until what `keep_later` was given is kept (or failed)."""
    _keeper.submit(lambda: None).result()


def keep(
    engine: Engine,
    rollup: str,
    sums: dict[date, list[DaySum]],
    at_versions: dict[date, int],
    now: datetime,
) -> None:
    """Keep the sums of these days, computed at `at_versions` (read before they were
    summed: a change since makes them outdated, not wrong). A database that cannot be
    written (a read-only role for `observer web`) or another process keeping the same days
    at once leaves them unkept."""
    global _warned_unwritable
    if not sums:
        return
    s = Base.metadata.tables["usage_day_sums"]
    m = Base.metadata.tables["usage_day_marks"]
    days = sorted(sums)
    try:
        with engine.begin() as conn:
            # a keeping from a later version of a day (another process, in the meantime)
            # stays
            newer = {
                day
                for day, version in conn.execute(
                    select(m.c.day, m.c.version).where(
                        m.c.rollup == rollup, m.c.day >= days[0], m.c.day <= days[-1]
                    )
                )
                if day in sums and version > at_versions.get(day, 0)
            }
            days = [d for d in days if d not in newer]
            if not days:
                return
            old = days[0] - KEPT_FOR
            conn.execute(delete(m).where(m.c.rollup == rollup, m.c.day < old))
            conn.execute(delete(s).where(s.c.rollup == rollup, s.c.day < old))
            for chunk in _chunks(days, 500):
                conn.execute(delete(m).where(m.c.rollup == rollup, m.c.day.in_(chunk)))
                conn.execute(delete(s).where(s.c.rollup == rollup, s.c.day.in_(chunk)))
            # straight to the driver: through SQLAlchemy's per-row handling, 30,000 rows
            # (a month by agent) took 0.4 s, in a thread beside the page's own work
            columns = "rollup, day, key, sessions, duration_ms, billable_minutes"
            if conn.dialect.name == "postgresql":
                raw: Any = conn.connection.driver_connection
                with (
                    raw.cursor() as cur,
                    cur.copy(f"COPY usage_day_sums ({columns}) FROM STDIN") as cp,
                ):
                    for day in days:
                        for k, n, ms, mi in sums[day]:
                            cp.write_row((rollup, day, k, n, ms, mi))
            else:
                rows = [
                    (rollup, day.isoformat(), *sums_row) for day in days for sums_row in sums[day]
                ]
                if rows:
                    conn.exec_driver_sql(
                        f"INSERT INTO usage_day_sums ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows
                    )
            conn.execute(
                insert(m),
                [
                    dict(rollup=rollup, day=day, version=at_versions.get(day, 0), computed_at=now)
                    for day in days
                ],
            )
    except IntegrityError:
        log.debug("another process kept the same days' sums at once")
    except Exception as exc:  # a cache: the sums were answered anyway
        if not _warned_unwritable:
            _warned_unwritable = True
            log.warning(
                "cannot keep the reports' day sums (%s); they are summed again each time",
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )


def _chunks(items: list[date], n: int) -> Iterable[list[date]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
