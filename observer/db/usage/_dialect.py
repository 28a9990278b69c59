"""What the usage SQL writes differently for SQLite and PostgreSQL, and the hints it gives
their planners: all in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Text,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from observer.db.usage.spec import UsageSpec, at_midnights

# `sessions.crosses_day` written as the predicate of its partial index: both planners use
# the index only for these very words (SQLAlchemy writes `= 1` or `IS true`)
CROSSING: ColumnElement[bool] = literal_column("sessions.crosses_day")


def set_usage_planner(conn: Connection, parallel: bool = True) -> None:
    """Set the planner up for a usage query, for this transaction. `parallel`: PostgreSQL
    may run it as a parallel aggregate (False: the caller sums slices at once instead)."""
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


def allow_sorting_again(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("RESET enable_sort")  # for the rest of the caller's transaction


def greatest(dialect: str, a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
    fn = func.max if dialect == "sqlite" else func.greatest
    return fn(a, b, type_=BigInteger)


def least(dialect: str, a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
    fn = func.min if dialect == "sqlite" else func.least
    return fn(a, b, type_=BigInteger)


def unflattened(query: Any, dialect: str) -> Any:
    """The query (a SELECT or a UNION), to be used as a subquery its users read rather than
    inline."""
    if dialect == "sqlite":
        # Keeps SQLite from flattening this subquery into its users, which would compute
        # its columns again for every place they are used.
        return query.limit(-1)
    return query


def not_by_index(keys: list[ColumnElement[Any]], dialect: str) -> list[ColumnElement[Any]]:
    """Group keys that do not lead the planner to read the sessions in their order."""
    if dialect == "sqlite":
        # With statistics, SQLite reads a month by agent through (agent_name, joined_at)
        # to have the rows in the grouping's order, jumping all over the table: 1.5-2 times
        # slower than through joined_at. Its unary + (a no-op) keeps it from doing that.
        return [UnaryExpression(k, operator=custom_op("+"), type_=Text()) for k in keys]
    return keys


def json_member(column: Any, key: str, dialect: str) -> ColumnElement[Any]:
    """The value of member `key` of a JSON object column, as text (NULL when absent), as
    PostgreSQL's `->>` gives it."""
    if dialect == "sqlite" and not _key_as_stored(key):
        # SQLite (before 3.45) finds a path's key by comparing it with the key's text as
        # stored, escapes and all, and the stored JSON is ASCII with escapes: such a key is
        # found only among the object's members, whose keys json_each() gives unescaped.
        # (About twice as slow as a path: plain keys keep the path.)
        members = func.json_each(column).table_valued("key", "value")
        found = select(members.c.value).where(members.c.key == key).scalar_subquery()
        return cast(found, Text)
    return cast(column[key].as_string(), Text)


def _key_as_stored(key: str) -> bool:
    """Whether JSON text holds `key` as it is: printable ASCII without `"` or `\\` (which
    JSON escapes; control characters are not grouped by)."""
    return key.isascii() and key.isprintable() and '"' not in key and "\\" not in key


def columns_unless_crossing(spec: UsageSpec, dialect: str) -> bool:
    """Whether `usage_query` takes a session's state columns when it holds no midnight
    (rather than when its times fall in one bucket). PostgreSQL would compute those times
    again for each column; SQLite has them at hand."""
    return dialect == "postgresql" and at_midnights(spec)


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
