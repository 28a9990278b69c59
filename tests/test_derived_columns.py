"""`sessions.duration_ms`, `crosses_day` and `state_unknown_ms` are derived by the database
from the times, whoever writes the row, truncated as `joined_ms` and `left_ms` are; README's
example SQL adds up to `observer usage`. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from observer.cli import main
from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db import migrate
from observer.db.schema import Base
from observer.db.store import Store

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
STATES = tuple(f"state_{s}_ms" for s in ("initializing", "idle", "listening", "thinking"))
STATES += ("state_speaking_ms", "state_other_ms")
DERIVED = ("duration_ms", "crosses_day", "state_unknown_ms")


def at(day: int, h: int = 0, m: int = 0, s: int = 0, us: int = 0) -> datetime:
    """A time on `day` of March 2026 (0 is 28 February, 32 is 1 April)."""
    return datetime(2026, 3, 1, tzinfo=UTC) + timedelta(
        days=day - 1, hours=h, minutes=m, seconds=s, microseconds=us
    )


def stamp(moment: datetime, dialect: str) -> str:
    """A SQL literal of the time, as a hand-written statement would give it."""
    written = moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"'{written}+00'" if dialect == "postgresql" else f"'{written}'"


def insert_sql(dialect: str, sid: str, joined: datetime, left: datetime | None, **more: Any) -> str:
    values: dict[str, Any] = dict(
        room_name="'r'",
        room_sid="'RM_r'",
        participant_sid=f"'{sid}'",
        participant_identity=f"'id-{sid}'",
        participant_kind="'agent'",
        agent_name="'bob'",
        attributes="'{}'",
        joined_at=stamp(joined, dialect),
        left_at="NULL" if left is None else stamp(left, dialect),
        last_seen_at=stamp(joined, dialect),
        observer_id="'import'",
        created_at=stamp(joined, dialect),
        updated_at=stamp(joined, dialect),
        **more,
    )
    columns, literals = ", ".join(values), ", ".join(map(str, values.values()))
    return f"INSERT INTO sessions ({columns}) VALUES ({literals})"


def derived(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT participant_sid, {', '.join(DERIVED)} FROM sessions")
        ).all()
    return {sid: (ms, bool(crosses), unknown) for sid, ms, crosses, unknown in rows}


# participant sid: joined, left, its states in `STATES` order (None: no timeline), and what
# the database must derive: (duration_ms, crosses_day, state_unknown_ms)
ROWS: dict[str, tuple[datetime, datetime | None, tuple[int, ...] | None, tuple[Any, ...]]] = {
    # over midnight; 00:10:00.456001 - 23:50:00.123999 is 1,200,332.002 ms, which the
    # writers rounded to 1,200,332, while the reports measure 456 - 123: 1,200,333
    "over-midnight": (
        at(1, 23, 50, 0, 123_999),
        at(2, 0, 10, 0, 456_001),
        (100_000, 0, 500_000, 200_000, 300_000, 0),
        (1_200_333, True, 100_333),
    ),
    # holds a midnight by its microseconds only: truncated, it ends at midnight, and the
    # reports give its one millisecond to 1 March alone
    "sub-ms-midnight": (at(1, 23, 59, 59, 999_600), at(2, 0, 0, 0, 400), None, (1, False, None)),
    # ends at midnight exactly (to the millisecond); states more than its time, as an import
    # may bring: nothing is unknown, never less
    "to-midnight": (
        at(1, 10, 0, 0, 500),
        at(2, 0, 0, 0, 999),
        (50_400_001, 0, 0, 0, 0, 0),
        (50_400_000, False, 0),
    ),
    "three-days": (at(1, 12, 0, 0, 1), at(4, 12, 0, 0, 999), None, (259_200_000, True, None)),
    "open": (at(2, 9, 0, 0, 500_000), None, None, (None, False, None)),
}


def test_a_row_written_by_hand_gets_its_derived_values(db_url: str) -> None:
    store = Store(db_url)
    dialect = store.engine.dialect.name
    try:
        with store.engine.begin() as conn:
            for sid, (joined, left, states, _) in ROWS.items():
                more = {} if states is None else dict(zip(STATES, states, strict=True))
                conn.exec_driver_sql(insert_sql(dialect, sid, joined, left, **more))
        assert derived(store.engine) == {sid: row[3] for sid, row in ROWS.items()}

        # a repair closes the open one over midnight: its values follow
        with store.engine.begin() as conn:
            left = stamp(at(3, 0, 0, 1, 999), dialect)
            conn.exec_driver_sql(
                f"UPDATE sessions SET left_at = {left} WHERE participant_sid = 'open'"
            )
        assert derived(store.engine)["open"] == (15 * 3_600_000 + 500, True, None)
        with store.engine.connect() as conn:
            crossing = conn.execute(
                text("SELECT participant_sid FROM sessions WHERE crosses_day ORDER BY id")
            ).scalars()
            assert list(crossing) == ["over-midnight", "three-days", "open"]

        # ... and nobody can write them
        for name, value in (
            ("duration_ms", "5"),
            ("crosses_day", "true"),
            ("state_unknown_ms", "0"),
        ):
            with pytest.raises(DBAPIError), store.engine.begin() as conn:
                conn.exec_driver_sql(
                    insert_sql(dialect, f"x-{name}", at(1), at(2), **{name: value})
                )
            with pytest.raises(DBAPIError), store.engine.begin() as conn:
                conn.exec_driver_sql(f"UPDATE sessions SET {name} = {value}")
    finally:
        store.close()


def readme_usage_sql() -> str:
    """README's example query that adds up to `observer usage`."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sql\n(.*?)```", readme, re.S)
    assert block is not None
    (query,) = [q for q in re.split(r";$", block.group(1), flags=re.M) if "observer usage" in q]
    return "\n".join(line for line in query.splitlines() if not line.startswith("--"))


def test_readme_example_sql_adds_up_to_observer_usage(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # each session's times end in microseconds that the writers once rounded differently
    # from the reports' truncation
    closed = {
        "alpha": [
            (at(d, 9, m, s, 123_999), at(d, 9, m + 1, s + 7, 456_001))
            for d, m, s in ((2, 0, 1), (5, 10, 30), (9, 20, 59), (17, 3, 12))
        ]
        + [(at(0, 23, 59, 0, 999), at(1, 0, 1, 0, 500_001))],  # from 28 February
        "beta": [
            (at(3, 23, 59, 58, 700_999), at(4, 0, 0, 2, 300_001)),  # over a midnight
            (at(31, 23, 59, 0, 1), at(32, 0, 0, 30, 999_999)),  # into April
            (at(7, 8, 0, 0, 250_999), at(7, 8, 0, 0, 250_999)),  # no time at all
        ],
        "gamma": [(at(d, 14, 0, 0, 998_999), at(d, 14, 30, 0, 1)) for d in (4, 11, 30)],
    }
    store = Store(db_url)
    try:
        n = 0
        for agent, sessions in closed.items():
            for joined, left in sessions:
                n += 1
                s = tracked(f"PA_{n}", agent, joined)
                store.apply(
                    [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)], "obs"
                )
        store.apply([Open(tracked("PA_open", "alpha", at(20)))], "obs")
        with store.engine.connect() as conn:
            by_sql = {
                agent: (sessions, ms, minutes)
                for agent, sessions, ms, minutes in conn.execute(text(readme_usage_sql()))
            }
            whole = dict(
                conn.execute(
                    text(
                        "SELECT agent_name, sum(duration_ms) FROM sessions"
                        " WHERE agent_name = 'gamma' GROUP BY agent_name"
                    )
                ).all()
            )
    finally:
        store.close()
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    capsys.readouterr()
    args = ["--from", "2026-03-01", "--to", "2026-04-01", "--by", "agent", "--exclude-open"]
    assert main(["usage", *args, "--format", "json"]) == 0
    usage = {
        r["agent"]: (r["sessions"], r["duration_ms"], r["billable_minutes"])
        for r in json.loads(capsys.readouterr().out)
    }
    assert by_sql == usage
    assert usage["alpha"][0] == 5 and usage["beta"][0] == 2
    # gamma lies whole in March: its duration_ms add up to the report, which the times
    # rounded each to the millisecond (as the writers once kept them) do not
    rounded = sum(round((b - a) / timedelta(milliseconds=1)) for a, b in closed["gamma"])
    assert whole["gamma"] == usage["gamma"][1] == rounded + 3


def tracked(sid: str, agent: str, joined: datetime) -> TrackedSession:
    return TrackedSession(
        room_name="r",
        room_sid="RM_r",
        participant_sid=sid,
        identity=f"id-{sid}",
        name="",
        kind="agent",
        agent_name=agent,
        attributes={},
        joined_at=joined,
        last_seen_at=joined,
    )


def test_the_migration_derives_the_rows_already_there_and_downgrades(empty_db_url: str) -> None:
    """Rows the previous revision's writers kept (a rounded `duration_ms`, `crosses_day`
    false for a session over midnight that came by another path) get the derived values;
    the downgrade keeps them as plain columns again, with their indexes."""
    migrate.upgrade(empty_db_url, "0014")
    store = Store(empty_db_url)
    dialect = store.engine.dialect.name
    try:
        kept = {  # what the writers had put there
            "over-midnight": dict(
                duration_ms=1_200_332, crosses_day="true", state_unknown_ms=100_332
            ),
            "sub-ms-midnight": dict(duration_ms=1, crosses_day="true"),
            "to-midnight": dict(duration_ms=50_400_000, crosses_day="false", state_unknown_ms=0),
            "three-days": dict(duration_ms=259_200_001, crosses_day="false"),  # an import
            "open": {},
        }
        with store.engine.begin() as conn:
            for sid, (joined, left, states, _) in ROWS.items():
                more = {} if states is None else dict(zip(STATES, states, strict=True))
                conn.exec_driver_sql(insert_sql(dialect, sid, joined, left, **kept[sid], **more))
        migrate.upgrade(empty_db_url)
        want = {sid: row[3] for sid, row in ROWS.items()}
        assert derived(store.engine) == want
        assert generated(store.engine) == set(DERIVED)
        indexes = {"ix_sessions_duration_ms", "ix_sessions_crosses_day_joined_at"}
        assert indexes <= {i["name"] for i in inspect(store.engine).get_indexes("sessions")}

        migrate.downgrade(empty_db_url, "0014")
        assert generated(store.engine) == set()
        assert indexes <= {i["name"] for i in inspect(store.engine).get_indexes("sessions")}
        assert derived(store.engine) == want
        with store.engine.begin() as conn:  # written by hand again, as that revision's writers do
            conn.exec_driver_sql(
                "UPDATE sessions SET duration_ms = 7 WHERE participant_sid = 'open'"
            )
        migrate.upgrade(empty_db_url)
        assert derived(store.engine) == want
    finally:
        store.close()


def generated(engine: Engine) -> set[str]:
    """The sessions columns (of `DERIVED`) the database computes."""
    columns = inspect(engine).get_columns("sessions")
    return {c["name"] for c in columns if c["name"] in DERIVED and c.get("computed")}


def test_the_model_says_which_columns_the_database_derives() -> None:
    table = Base.metadata.tables["sessions"]
    assert {c.name for c in table.columns if c.computed is not None} == {
        *DERIVED,
        "joined_ms",
        "left_ms",
    }


def test_the_longest_session_is_read_from_the_index_on_duration_ms(db_url: str) -> None:
    """`observer usage` reads back no further than the longest closed session: through the
    index on the generated `duration_ms`, not the table."""
    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            query = "SELECT max(duration_ms) FROM sessions"
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # the table is tiny here
                plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {query}"))
            else:
                plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        store.close()
    assert "ix_sessions_duration_ms" in plan, plan
