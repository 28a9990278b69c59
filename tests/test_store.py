"""The store and the schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import operator
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from sqlalchemy import Join, Select, Table, inspect, text, update
from sqlalchemy.sql.elements import BinaryExpression
from sqlalchemy.sql.visitors import iterate

from observer.core.changes import Close, Open, RefreshLastSeen, UpdateAttributes
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db import migrate
from observer.db.reads import SessionFilter
from observer.db.store import Store

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 23, 59, 30, 123000, tzinfo=UTC)


def session(sid: str = "PA1", room_sid: str = "RM1", **kw: object) -> TrackedSession:
    base: dict[str, object] = dict(
        room_name="room",
        room_sid=room_sid,
        participant_sid=sid,
        identity=f"id-{sid}",
        name="Agent",
        kind="agent",
        agent_name="bob",
        attributes={"lk.agent_name": "bob"},
        joined_at=T0,
        last_seen_at=T0,
    )
    base.update(kw)
    return TrackedSession(**base)  # type: ignore[arg-type]


def close(s: TrackedSession, left: datetime, reason: str = "CLIENT_INITIATED") -> Close:
    return Close(s.key, left, reason, END_RTC, None, left, s)


def test_upgrade_downgrade_and_models_match_migrations(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.upgrade(empty_db_url)  # safe to run twice
    migrate.check(empty_db_url)  # raises if models and migrations differ
    store = Store(empty_db_url)
    try:
        insp = inspect(store.engine)
        cols = {c["name"] for c in insp.get_columns("sessions")}
        assert {
            "room_name",
            "room_sid",
            "participant_sid",
            "joined_at",
            "left_at",
            "duration_ms",
            "end_source",
            "end_uncertainty_ms",
        } <= cols
        names = {i["name"] for i in insp.get_indexes("sessions")}
        assert {"ix_sessions_open", "ix_sessions_agent_name_joined_at"} <= names
        assert store.schema_is_current()
        migrate.downgrade(empty_db_url, "base")
        assert "sessions" not in inspect(store.engine).get_table_names()
        assert not store.schema_is_current()
    finally:
        store.close()


def test_open_close_roundtrip_in_utc(db_url: str) -> None:
    store = Store(db_url)
    try:
        s = session()
        store.apply([Open(s)], "obs-1")
        store.apply([close(s, T0 + timedelta(seconds=75, milliseconds=250))], "obs-1")
        (row,) = store.sessions(SessionFilter())
        assert row.joined_at == T0 and row.joined_at.tzinfo is not None
        assert row.left_at == T0 + timedelta(seconds=75, milliseconds=250)
        assert row.duration_ms == 75250
        assert row.disconnect_reason == "CLIENT_INITIATED"
        assert row.end_source == END_RTC
        assert row.observer_id == "obs-1"
        assert row.attributes == {"lk.agent_name": "bob"}
    finally:
        store.close()


def test_replayed_batches_change_nothing(db_url: str) -> None:
    store = Store(db_url)
    try:
        a, b = session("PA1"), session("PA2")
        batch = [Open(a), Open(b), close(a, T0 + timedelta(seconds=10))]
        store.apply(batch, "obs")
        store.apply(batch, "obs")  # a retry after an unknown commit outcome
        store.apply([close(a, T0 + timedelta(seconds=99))], "obs")  # a late duplicate close
        rows = {r.participant_sid: r for r in store.sessions(SessionFilter())}
        assert len(rows) == 2
        assert rows["PA1"].duration_ms == 10000
        assert rows["PA2"].left_at is None
    finally:
        store.close()


def test_touch_attributes_and_open_sessions(db_url: str) -> None:
    store = Store(db_url)
    try:
        a, b, c = session("PA1"), session("PA2"), session("PA3")
        store.apply([Open(a), Open(b), Open(c), close(c, T0 + timedelta(seconds=1))], "obs")
        store.apply([Open(session("PZ", room_sid="RM9"))], "other-observer")
        later = T0 + timedelta(minutes=5)
        store.apply(
            [
                RefreshLastSeen((a.key, c.key), later),
                UpdateAttributes(b.key, {"lk.agent.name": "eve"}, "eve"),
            ],
            "obs",
        )
        open_ = {s.participant_sid: s for s in store.open_sessions("obs")}
        assert set(open_) == {"PA1", "PA2"}
        assert open_["PA1"].last_seen_at == later
        assert open_["PA2"].last_seen_at == T0
        assert open_["PA2"].agent_name == "eve"
        closed = store.sessions(SessionFilter(state="closed"))
        assert [r.participant_sid for r in closed] == ["PA3"]
        assert closed[0].last_seen_at == T0 + timedelta(seconds=1)  # a touch never reopens
    finally:
        store.close()


def test_unique_per_room_and_participant(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.apply(
            [Open(session("PA1", room_sid="RM1")), Open(session("PA1", room_sid="RM2"))], "obs"
        )
        assert len(store.sessions(SessionFilter())) == 2
        with store.engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM sessions")).scalar_one()
        assert n == 2
    finally:
        store.close()


def test_filters(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.apply(
            [
                Open(session("PA1", room_name="a", agent_name="x")),
                Open(
                    session("PA2", room_name="b", agent_name="y", joined_at=T0 + timedelta(days=2))
                ),
            ],
            "obs",
        )
        assert [r.participant_sid for r in store.sessions(SessionFilter(room="a"))] == ["PA1"]
        assert [r.participant_sid for r in store.sessions(SessionFilter(agent_name="y"))] == ["PA2"]
        got = store.sessions(SessionFilter(until=T0 + timedelta(days=1)))
        assert [r.participant_sid for r in got] == ["PA1"]
        assert len(store.sessions(SessionFilter(limit=1))) == 1
    finally:
        store.close()


def test_naive_datetimes_are_refused(db_url: str) -> None:
    store = Store(db_url)
    try:
        with pytest.raises(Exception, match="naive"):
            store.apply([Open(session(joined_at=datetime(2026, 1, 1)))], "obs")
    finally:
        store.close()


def test_a_stuck_alert_is_claimed_once_per_occurrence(db_url: str) -> None:
    from observer.core.changes import RoomEnded, RoomPresence, RoomSeen
    from observer.db import fleet as fleet_db

    store = Store(db_url)

    def claim(observer: str, since: datetime, room_sid: str = "RM1") -> bool:
        return fleet_db.claim_stuck_alert(
            store.engine,
            room_sid=room_sid,
            room_name="room",
            alone_since=since,
            observer_id=observer,
            now=since + timedelta(seconds=30),
        )

    try:
        store.apply([RoomSeen("RM1", "room", None, T0, T0, 1, 1)], "obs-a")
        assert claim("obs-a", T0)
        assert not claim("obs-b", T0 + timedelta(seconds=2))  # the same spell, seen later
        assert not claim("obs-a", T0)
        assert claim("obs-b", T0, room_sid="RM2")  # another room
        # alone again after company: a new occurrence
        store.apply([RoomPresence("RM1", "room", 1, 1, None, T0 + timedelta(minutes=1))], "obs-b")
        assert claim("obs-b", T0 + timedelta(minutes=2))
        store.apply([RoomPresence("RM1", "room", 1, 0, T0, T0 + timedelta(minutes=3))], "obs-a")
        assert not claim("obs-a", T0 + timedelta(minutes=3))  # still alone: no new occurrence
        store.apply([RoomEnded("RM1", "room", T0 + timedelta(minutes=4), "ROOM_DELETED")], "obs-a")
        with store.engine.connect() as conn:
            left = conn.execute(text("SELECT room_sid, observer_id FROM stuck_alerts")).all()
        assert [tuple(r) for r in left] == [("RM2", "obs-b")]
    finally:
        store.close()


def test_upgrading_keeps_attributes_and_room_metadata(empty_db_url: str) -> None:
    """Migration 0012 turns both into jsonb on PostgreSQL: every value reads back alike, and
    the reports group by a key of each."""
    from observer.db.reads import RoomFilter
    from observer.db.usage import UsageSpec

    migrate.upgrade(empty_db_url, "0011")
    attributes = {"lk.agent_name": "bob", "customer": "acme", "note": 'ünï \\ "quoted"'}
    metadata = '{"customer": "zeta", "plan": {"tier": 2, "seats": [1, 2]}}'
    store = Store(empty_db_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO rooms (sid, name, metadata, metadata_json, first_seen_at,"
                    " max_agents, max_participants, updated_at)"
                    " VALUES ('RM1', 'room', :m, :j, :t, 1, 1, :t)"
                ),
                {"m": metadata, "j": metadata, "t": T0},
            )
        s = session(attributes=attributes)
        store.apply([Open(s)], "obs-1")  # (closing it writes what later revisions add)
        migrate.upgrade(empty_db_url)
        store.apply([close(s, T0 + timedelta(seconds=90))], "obs-1")
        (row,) = store.sessions(SessionFilter())
        assert row.attributes == attributes
        (room,) = store.rooms(RoomFilter())
        assert room.metadata_json == {"customer": "zeta", "plan": {"tier": 2, "seats": [1, 2]}}
        spec = UsageSpec(
            edges=(T0, T0 + timedelta(hours=1)),
            group_by=("attribute:customer", "room-metadata:customer", "attribute:note"),
        )
        (total,) = store.usage(spec)
        assert total.keys == ("acme", "zeta", attributes["note"])
        assert (total.sessions, total.duration_ms) == (1, 90_000)
    finally:
        store.close()


# keys that JSON text holds escaped (SQLite's stored JSON is ASCII), and a plain one
ESCAPED_KEYS = ("kunde_ü", 'a"b', "a\\b", "emoji_😀", 'ü"\\', "plain")


def test_grouping_by_a_key_that_json_escapes(db_url: str) -> None:
    """An attribute or room-metadata key with non-ASCII characters, `"` or `\\` groups the
    sessions by its values (escaped too) on both databases, as a plain key does; sessions
    without the key under ""."""
    import json

    from observer.core.changes import RoomSeen
    from observer.db.usage import UsageSpec

    store = Store(db_url)
    try:
        ops: list[Any] = []
        for i in range(5):
            members = {k: f'wert-{i % 2}-äß€😀"\\-{k}' for k in ESCAPED_KEYS} if i < 4 else {}
            room = f"room-{i}"
            ops.append(RoomSeen(f"RM{i}", room, json.dumps(members), None, T0, 1, 1))
            s = session(sid=f"PA{i}", room_sid=f"RM{i}", room_name=room, attributes=members)
            ops += [Open(s), close(s, T0 + timedelta(seconds=10 * (i + 1)))]
        store.apply(ops, "obs-1")
        for k in ESCAPED_KEYS:
            want = {
                f'wert-0-äß€😀"\\-{k}': (2, 40_000),  # 10 s and 30 s
                f'wert-1-äß€😀"\\-{k}': (2, 60_000),
                "": (1, 50_000),
            }
            for g in (f"attribute:{k}", f"room-metadata:{k}"):
                for states in (False, True):  # (time in states is read through other SQL)
                    spec = UsageSpec(
                        edges=(T0, T0 + timedelta(hours=1)), group_by=(g,), states=states
                    )
                    got = {t.keys[0]: (t.sessions, t.duration_ms) for t in store.usage(spec)}
                    assert got == want, (g, states)
    finally:
        store.close()


def test_epoch_milliseconds_are_kept_by_the_database(empty_db_url: str) -> None:
    """Migration 0013 adds `joined_ms` and `left_ms`, generated from the times: filled for
    the rows already there, kept as rows open and close, truncated to the millisecond
    exactly as `epoch_ms` (the reports measure with them)."""
    from observer.db.schema import Base
    from observer.db.usage import epoch_ms

    migrate.upgrade(empty_db_url, "0012")
    times = [T0 + timedelta(microseconds=us) for us in (0, 1, 499, 500, 999, 877_001, 999_999)] + [
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    ]
    store = Store(empty_db_url)
    try:
        before = [session(sid=f"PA{i}", joined_at=at) for i, at in enumerate(times)]
        store.apply([Open(s) for s in before], "obs-1")
        t = Base.metadata.tables["sessions"]
        with store.engine.begin() as conn:  # closed as that revision's writer closed them
            for s in before:
                left = s.joined_at + timedelta(minutes=3, microseconds=777)
                conn.execute(
                    update(t).where(t.c.participant_sid == s.participant_sid).values(left_at=left)
                )
        migrate.upgrade(empty_db_url)
        still_open = session(sid="PA-open", joined_at=times[-2])
        store.apply([Open(still_open)], "obs-1")

        def stored() -> dict[str, tuple[int, int | None]]:
            with store.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT participant_sid, joined_ms, left_ms FROM sessions")
                ).all()
            return {sid: (joined, left) for sid, joined, left in rows}

        want = {
            s.participant_sid: (
                epoch_ms(s.joined_at),
                epoch_ms(s.joined_at + timedelta(minutes=3, microseconds=777)),
            )
            for s in before
        }
        assert stored() == {**want, "PA-open": (epoch_ms(times[-2]), None)}
        left = times[-2] + timedelta(seconds=1, microseconds=999_999)
        store.apply([close(still_open, left)], "obs-1")
        assert stored()["PA-open"] == (epoch_ms(times[-2]), epoch_ms(left))
    finally:
        store.close()


def test_the_few_sessions_to_cut_are_found_through_their_indexes(db_url: str) -> None:
    """The usage SQL finds the sessions holding a midnight through the partial index on
    `crosses_day`; both planners use such an index only when the query repeats its
    predicate word for word (not `crosses_day = 1` nor `crosses_day IS true`)."""
    from observer.db.usage._dialect import CROSSING

    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            predicate = str(CROSSING.compile(conn))
            query = f"SELECT id FROM sessions WHERE {predicate} AND joined_at >= '2026-03-01'"
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # the table is tiny here
                plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {query}"))
            else:
                plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        store.close()
    assert "ix_sessions_crosses_day_joined_at" in plan, plan


@pytest.mark.parametrize("states", [False, True], ids=["standing", "states"])
def test_each_part_of_the_usage_sql_reads_one_range_of_join_times(states: bool) -> None:
    """Each SELECT over `sessions` in the usage SQL bounds `joined_at` once from below and
    once from above. Given two bounds on one side, SQLite searches its index by either one,
    maybe the wider: a window's edge arm then read the whole window (0.2 s of 1M sessions)."""
    from sqlalchemy.dialects import postgresql, sqlite

    from observer.db.usage import UsageSpec
    from observer.db.usage._query import usage_query
    from observer.db.usage._states import cut_states_query
    from observer.db.usage.spec import Subset
    from observer.reports.usage import bucket_edges

    start, now = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 31, 2, tzinfo=UTC)
    since = start - timedelta(hours=9)
    for edges in (bucket_edges(start, now, "day"), bucket_edges(start, now, "month"), (start, now)):
        spec = UsageSpec(edges=edges, group_by=("agent",), open_until=now, states=states)
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            queries = [
                usage_query(spec, dialect.name, since, now, start - since, which)
                for which in get_args(Subset)
            ]
            if states:
                queries.append(cut_states_query(spec, dialect.name, since))
            for query in queries:
                reads = [
                    sel for sel in iterate(query) if isinstance(sel, Select) and reads_sessions(sel)
                ]
                assert reads
                for sel in reads:
                    assert bounds(sel, operator.ge) == 1, sel.compile(dialect=dialect)
                    assert bounds(sel, operator.lt) == 1, sel.compile(dialect=dialect)


def reads_sessions(sel: Any) -> bool:
    """Whether the SELECT reads the sessions table itself (not through a subquery)."""

    def tables(f: Any) -> list[Any]:
        if isinstance(f, Table):
            return [f]
        return tables(f.left) + tables(f.right) if isinstance(f, Join) else []

    return any(t.name == "sessions" for f in sel.get_final_froms() for t in tables(f))


def bounds(sel: Any, op: Any) -> int:
    """How many conditions of the WHERE clause compare sessions.joined_at with `op`."""
    terms = (
        list(sel.whereclause.clauses) if hasattr(sel.whereclause, "clauses") else [sel.whereclause]
    )
    return sum(
        1
        for term in terms
        if isinstance(term, BinaryExpression)
        and term.operator is op
        and getattr(term.left, "name", None) == "joined_at"
        and getattr(term.left, "table", None) is not None
        and term.left.table.name == "sessions"
    )
