"""`observer reconcile`: settling against a real livekit-server, period rollups and statements,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from daemon_helpers import Clients, list_rooms
from livekit_server import LiveKitServer, free_tcp_port
from sqlalchemy import inspect, text

from observer.cli import main
from observer.core.changes import Close, Open, RefreshLastSeen
from observer.core.events import TrackedSession
from observer.core.vocab import END_RECONCILED, END_RTC
from observer.db import migrate
from observer.db.reads import SessionFilter
from observer.db.rollups import Rollup
from observer.db.schema import Base, SessionRow
from observer.db.store import Store

pytestmark = pytest.mark.unit

MAR = datetime(2026, 3, 1, tzinfo=UTC)
APR = datetime(2026, 4, 1, tzinfo=UTC)
REVISION, BEFORE = "0003", "0002"  # the rollups' migration and the one before it
USAGE_INDEXES = {"ix_sessions_duration_ms", "ix_sessions_open_joined_at"}


def tracked(
    sid: str,
    joined: datetime,
    *,
    agent: str | None = "alpha",
    room: str = "r1",
    room_sid: str | None = None,
    kind: str = "agent",
    last_seen: datetime | None = None,
) -> TrackedSession:
    return TrackedSession(
        room_name=room,
        room_sid=room_sid or f"RM_{room}",
        participant_sid=sid,
        identity=f"id-{sid}",
        name="",
        kind=kind,
        agent_name=agent,
        attributes={},
        joined_at=joined,
        last_seen_at=last_seen or joined,
    )


def add(db_url: str, s: TrackedSession, left: datetime | None = None) -> None:
    store = Store(db_url)
    try:
        ops: list[Any] = [Open(s)]
        if left is not None:
            ops.append(Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s))
        store.apply(ops, "obs")
    finally:
        store.close()


def rollups(db_url: str, start: datetime = MAR, end: datetime = APR) -> list[Rollup]:
    store = Store(db_url)
    try:
        with store.rollup_transaction() as tx:
            return tx.rollups(start, end)
    finally:
        store.close()


def numbers(rows: list[Rollup]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        (r.group_kind, r.group_key): (r.sessions, r.duration_ms, r.billable_minutes) for r in rows
    }


def reconcile(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["reconcile", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def march_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Agent sessions in March 2026; `main` reads this database, without LiveKit settings."""
    for i in range(3):
        joined = MAR + timedelta(days=4, minutes=i)
        add(db_url, tracked(f"A{i}", joined), joined + timedelta(seconds=20))
    beta = MAR + timedelta(days=9, hours=10)
    add(db_url, tracked("B", beta, agent="beta", room="r2"), beta + timedelta(seconds=90))
    nameless = MAR + timedelta(days=11)
    add(db_url, tracked("N", nameless, agent=None), nameless + timedelta(seconds=30))
    # open since 31 March 23:00: counts up to the end of March
    add(db_url, tracked("G", APR - timedelta(hours=1), agent="gamma", room="r3"))
    # not counted: April, and a participant that is not an agent
    add(db_url, tracked("L", APR + timedelta(hours=1)), APR + timedelta(hours=2))
    user = MAR + timedelta(days=2)
    add(db_url, tracked("U", user, kind="standard"), user + timedelta(minutes=5))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return db_url


MARCH = {
    ("agent", ""): (1, 30_000, 1),
    ("agent", "alpha"): (3, 60_000, 3),
    ("agent", "beta"): (1, 90_000, 2),
    ("agent", "gamma"): (1, 3_600_000, 60),
    ("room", "r1"): (4, 90_000, 4),
    ("room", "r2"): (1, 90_000, 2),
    ("room", "r3"): (1, 3_600_000, 60),
    ("total", ""): (6, 3_780_000, 66),
}
FINAL = "2026-04-01T02:00:00Z"  # more than the default hour after the end of March


def test_migration_up_and_down_keeps_sessions(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, BEFORE)
    s = tracked("PA_keep", MAR)
    # (today's store writing the schema of revision 0002: an open row, whose write touches
    # only `sessions`; closing a row of a past day also counts that day's version up)
    add(empty_db_url, s)
    store = Store(empty_db_url)
    try:
        assert "period_rollups" not in inspect(store.engine).get_table_names()
        migrate.upgrade(empty_db_url, REVISION)
        insp = inspect(store.engine)
        assert "period_rollups" in insp.get_table_names()
        uniques = [u["column_names"] for u in insp.get_unique_constraints("period_rollups")]
        assert ["period_start", "period_end", "group_kind", "group_key"] in uniques
        assert USAGE_INDEXES <= {i["name"] for i in insp.get_indexes("sessions")}
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [
                d
                for d in compare_metadata(ctx, Base.metadata)
                if ("period_rollups" in str(d) or any(i in str(d) for i in USAGE_INDEXES))
                and "Column('cost'" not in str(d)  # added by a later revision
            ]
            assert diffs == []
        migrate.upgrade(empty_db_url)
        migrate.check(empty_db_url)

        migrate.downgrade(empty_db_url, BEFORE)
        insp = inspect(store.engine)
        assert "period_rollups" not in insp.get_table_names()
        assert not USAGE_INDEXES & {i["name"] for i in insp.get_indexes("sessions")}
        with store.engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM sessions")).scalar_one()
        assert n == 1
        migrate.upgrade(empty_db_url)
        assert store.schema_is_current()
    finally:
        store.close()


def test_check_constraint_refuses_unknown_group_kind(db_url: str) -> None:
    store = Store(db_url)
    try:
        with pytest.raises(Exception, match=r"(?i)check"), store.rollup_transaction() as tx:
            tx.write_rollups(MAR, APR, [Rollup("planet", "x", 1, 1, 1, None, MAR)])
    finally:
        store.close()


def test_rollups_are_idempotent_and_finalized_after_the_delay(
    march_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # before the period's end plus the delay: provisional, recomputed each run
    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", "2026-04-01T00:30:00Z")
    assert code == 0
    assert "rollup: provisional until 2026-04-01T01:00:00Z" in out
    assert "settle: skipped (LIVEKIT_URL" in out
    first = rollups(march_db)
    assert numbers(first) == MARCH
    assert all(r.finalized_at is None for r in first)
    assert {r.computed_at for r in first} == {datetime(2026, 4, 1, 0, 30, tzinfo=UTC)}

    assert reconcile(capsys, "--period", "2026-03", "--now", "2026-04-01T00:40:00Z")[0] == 0
    assert rollups(march_db) == first  # nothing changed, nothing rewritten

    # a late session arrives while the period is provisional: only its groups change
    late = MAR + timedelta(days=20)
    add(march_db, tracked("A9", late), late + timedelta(seconds=61))
    assert reconcile(capsys, "--period", "2026-03", "--now", "2026-04-01T00:50:00Z")[0] == 0
    second = {(r.group_kind, r.group_key): r for r in rollups(march_db)}
    assert numbers(list(second.values()))[("agent", "alpha")] == (4, 121_000, 5)
    assert second["agent", "alpha"].computed_at == datetime(2026, 4, 1, 0, 50, tzinfo=UTC)
    assert second["agent", "beta"].computed_at == datetime(2026, 4, 1, 0, 30, tzinfo=UTC)

    # after the delay: finalized
    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", FINAL)
    assert code == 0 and "rollup: finalized" in out
    final = rollups(march_db)
    assert {r.finalized_at for r in final} == {datetime(2026, 4, 1, 2, tzinfo=UTC)}
    assert reconcile(capsys, "--period", "2026-03", "--now", "2026-04-02")[0] == 0
    assert rollups(march_db) == final


def test_finalized_period_changes_only_with_force(
    march_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert reconcile(capsys, "--period", "2026-03", "--now", FINAL)[0] == 0
    final = rollups(march_db)
    late = MAR + timedelta(days=20)
    add(march_db, tracked("A9", late), late + timedelta(seconds=61))
    add(march_db, tracked("Z", late, agent="zeta", room="r9"), late + timedelta(seconds=1))

    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", "2026-04-03")
    assert code == 1  # the sessions no longer match the finalized numbers
    assert "final since 2026-04-01T02:00:00Z" in out and "--force" in out
    assert "agent 'alpha': billable minutes 3 -> 5, sessions 3 -> 4" in out
    assert rollups(march_db) == final

    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", "2026-04-03", "--force")
    assert code == 0
    assert "rewritten (--force), 5 group(s) changed" in out
    assert "total: billable minutes 66 -> 69, sessions 6 -> 8" in out
    assert "agent 'alpha': billable minutes 3 -> 5, sessions 3 -> 4, ms 60000 -> 121000" in out
    assert "agent 'zeta': billable minutes - -> 1, sessions - -> 1, ms - -> 1000" in out
    forced = rollups(march_db)
    got = numbers(forced)
    assert got[("agent", "zeta")] == (1, 1000, 1) and got[("room", "r9")] == (1, 1000, 1)
    assert got[("total", "")] == (8, 3_780_000 + 61_000 + 1000, 66 + 2 + 1)
    assert {r.finalized_at for r in forced} == {datetime(2026, 4, 3, tzinfo=UTC)}

    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", "2026-04-04", "--force")
    assert code == 0 and "unchanged" in out
    assert rollups(march_db) == forced


def test_finalize_delay_is_a_setting(
    march_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVER_FINALIZE_DELAY_S", "60")
    code, out, _ = reconcile(capsys, "--period", "2026-03", "--now", "2026-04-01T00:02:00Z")
    assert code == 0 and "rollup: finalized" in out
    monkeypatch.setenv("OBSERVER_FINALIZE_DELAY_S", "soon")
    code, _, err = reconcile(capsys, "--period", "2026-03")
    assert code == 2 and "OBSERVER_FINALIZE_DELAY_S" in err


def test_day_periods_and_from_to(march_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert reconcile(capsys, "--period", "2026-03-05", "--now", FINAL)[0] == 0
    day = numbers(rollups(march_db, MAR + timedelta(days=4), MAR + timedelta(days=5)))
    assert day == {
        ("agent", "alpha"): (3, 60_000, 3),
        ("room", "r1"): (3, 60_000, 3),
        ("total", ""): (3, 60_000, 3),
    }
    # an empty period still gets its total row, which marks it finalized
    assert reconcile(capsys, "--period", "2026-03-06", "--now", FINAL)[0] == 0
    start = MAR + timedelta(days=5)
    (empty,) = rollups(march_db, start, start + timedelta(days=1))
    assert (empty.group_kind, empty.sessions, empty.finalized_at is not None) == ("total", 0, True)
    args = ["--from", "2026-03-31T23:30:00Z", "--to", "2026-04-01T00:30:00Z", "--now", FINAL]
    assert reconcile(capsys, *args)[0] == 0
    half = APR - timedelta(minutes=30)
    got = numbers(rollups(march_db, half, APR + timedelta(minutes=30)))
    assert got[("agent", "gamma")] == (1, 3_600_000, 60)  # the whole hour, open till now
    # each period has its own rows: none for the whole of March yet
    assert rollups(march_db) == []


def write(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_statement_clean_and_different(
    march_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = write(
        tmp_path / "clean.csv",
        "group_kind,group_key,minutes\nagent,alpha,3\nagent,beta,2\nagent,gamma,60\nagent,,1\n",
    )
    args = ["--period", "2026-03", "--now", FINAL, "--statement", str(clean)]
    code, out, _ = reconcile(capsys, *args, "--report", str(tmp_path / "clean-report.csv"))
    assert code == 0
    assert "statement: 4 group(s) compared, 0 difference(s)" in out
    assert (tmp_path / "clean-report.csv").read_text().splitlines() == [
        "group_kind,group_key,observer_minutes,statement_minutes,difference_minutes,status"
    ]

    # no header, columns in order; rooms compared as well; a group on each side only
    differs = write(
        tmp_path / "differs.csv",
        "agent,alpha,4\nagent,beta,2.5\nagent,ghost,7\nagent,gamma,60\nagent,,1\nroom,r1,4\n",
    )
    args = ["--period", "2026-03", "--now", FINAL, "--statement", str(differs)]
    report = tmp_path / "out.json"
    code, out, _ = reconcile(capsys, *args, "--report", str(report))
    assert code == 1
    assert "statement: 8 group(s) compared, 5 difference(s) beyond 0 minute(s)" in out
    assert "agent 'ghost': observer -, statement 7 (missing_in_observer)" in out
    body = json.loads(report.read_text())
    assert body["period_start"] == "2026-03-01T00:00:00Z" and body["tolerance_minutes"] == 0
    got = {(d["group_kind"], d["group_key"]): d for d in body["differences"]}
    assert got["agent", "alpha"] == {
        "group_kind": "agent",
        "group_key": "alpha",
        "observer_minutes": 3,
        "statement_minutes": 4,
        "difference_minutes": -1,
        "status": "minutes_differ",
    }
    assert got["agent", "beta"]["difference_minutes"] == -0.5
    assert got["agent", "ghost"]["status"] == "missing_in_observer"
    assert got["room", "r2"]["status"] == "missing_in_statement"
    assert got["room", "r3"]["observer_minutes"] == 60
    assert ("room", "r1") not in got
    # the comparison is kept with the period, for the page
    (kept,) = last_comparisons(march_db)
    assert (kept.statement, kept.groups_compared, len(kept.differences)) == ("differs.csv", 8, 5)
    assert {
        "group_kind": "agent",
        "group_key": "ghost",
        "observer_minutes": None,
        "statement_minutes": "7",
        "status": "missing_in_observer",
    } in kept.differences

    # within the tolerance: clean; CSV report chosen by --report-format
    report = tmp_path / "report.txt"
    args += ["--tolerance-minutes", "60", "--report", str(report), "--report-format", "csv"]
    code, out, _ = reconcile(capsys, *args)
    assert code == 0 and "0 difference(s) beyond 60 minute(s)" in out
    assert len(list(csv.reader(io.StringIO(report.read_text())))) == 1
    (kept,) = last_comparisons(march_db)  # replaced by the latest comparison
    assert (kept.tolerance_minutes, kept.differences) == ("60", [])


def last_comparisons(db_url: str) -> list[Any]:
    from sqlalchemy.orm import Session

    from observer.db.schema import ReconcileComparisonRow

    store = Store(db_url)
    try:
        with Session(store.engine) as db:
            return list(db.query(ReconcileComparisonRow))
    finally:
        store.close()


BAD_STATEMENTS = [
    ("group_kind,group_key\nagent,alpha\n", ":1: header has no column minutes"),
    ("group_kind,group_key,minutes\nagent,alpha,3\nagent,beta,three\n", ":3: minutes must be"),
    ("group_kind,group_key,minutes\nagent,alpha,-1\n", ":2: minutes must be"),
    ("agent,alpha,3\n\nagent,beta\n", ":3: expected the columns"),
    ("agent,alpha,3\nplanet,mars,1\n", ":2: group_kind must be agent, room, total, attribute:KEY"),
    (
        "agent,alpha,3\nagent,alpha,4\n",
        ":2: a second row for agent 'alpha' (the first is on line 1)",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_STATEMENTS)
def test_bad_statement_is_exit_2_with_file_and_line_and_nothing_written(
    march_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    bad = write(tmp_path / "bad.csv", body)
    report = tmp_path / "report.csv"
    args = ["--period", "2026-03", "--now", FINAL, "--statement", str(bad), "--report", str(report)]
    code, out, err = reconcile(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"{bad}{message}" in err, err
    assert rollups(march_db) == [] and not report.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--period", "2026-13"], "--period must be YYYY-MM or YYYY-MM-DD"),
        (["--period", "March"], "--period must be YYYY-MM or YYYY-MM-DD"),
        (["--period", "2026-02-30"], "--period must be YYYY-MM or YYYY-MM-DD"),
        (["--from", "2026-03-02", "--to", "2026-03-01"], "is not before --to"),
        (["--from", "2026-03-02"], "give --period"),
        (["--period", "2026-03", "--from", "2026-03-01"], "not both"),
        (["--period", "2026-03", "--tolerance-minutes", "-1"], "--tolerance-minutes"),
        (["--period", "2026-03", "--statement", "missing.csv"], "cannot read statement"),
        (["--period", "2026-03", "--report", "out.xml", "--statement", "s.csv"], "report format"),
        (["--period", "2026-03", "--report", "no/such/dir/r.csv"], "does not exist"),
    ],
)
def test_bad_arguments_are_exit_2_and_nothing_written(
    march_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    write(tmp_path / "s.csv", "agent,alpha,3\n")
    code, out, err = reconcile(capsys, *args, "--now", FINAL)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert rollups(march_db) == []


def test_unreachable_database_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://u:pw@127.0.0.1:{free_tcp_port()}/x"
    monkeypatch.setenv("OBSERVER_DATABASE_URL", url)
    code, out, err = reconcile(capsys, "--period", "2026-03", "--no-settle")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "database error" in err and "pw@" not in err


def test_unmigrated_database_is_exit_2(
    empty_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", empty_db_url)
    code, _, err = reconcile(capsys, "--period", "2026-03", "--no-settle")
    assert code == 2 and "observer migrate" in err


# ---- settling against a real livekit-server ---------------------------------------------------


def lk_env(monkeypatch: pytest.MonkeyPatch, server: LiveKitServer, url: str | None = None) -> None:
    monkeypatch.setenv("LIVEKIT_URL", url or server.ws_url)
    monkeypatch.setenv("LIVEKIT_API_KEY", server.api_key)
    monkeypatch.setenv("LIVEKIT_API_SECRET", server.api_secret)


def sessions_by_sid(db_url: str) -> dict[str, SessionRow]:
    store = Store(db_url)
    try:
        return {r.participant_sid: r for r in store.sessions(SessionFilter(limit=1000))}
    finally:
        store.close()


@pytest.mark.live
async def test_settle_closes_only_stale_sessions_whose_participant_is_gone(
    livekit_server: LiveKitServer,
    clients: Clients,
    march_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    room = f"settle-{uuid.uuid4().hex[:8]}"
    agent = await clients.agent(room, "agent-present")
    (live,) = await list_rooms(livekit_server, room)
    now = datetime.now(UTC)
    stale, joined = now - timedelta(minutes=10), now - timedelta(minutes=20)
    same_room: dict[str, Any] = dict(room=room, room_sid=live.sid, last_seen=stale)
    rows = {
        # present in the room, though no observer has confirmed it for 10 minutes: stays open
        "present": tracked(agent.local_participant.sid, joined, **same_room),
        # not in the room any more: closed
        "gone": tracked("PA_gone", joined, **same_room),
        # its room has ended: closed
        "no-room": tracked("PA_noroom", joined, room=f"{room}-ended", last_seen=stale),
        # a room of that name exists, but it is a newer one: closed
        "old-room": tracked("PA_old", joined, room=room, room_sid="RM_older", last_seen=stale),
        # not in the room, but seen just now, perhaps by a daemon about to close it: stays open
        "fresh": tracked("PA_fresh", joined, room=room, room_sid=live.sid, last_seen=now),
    }
    for s in rows.values():
        add(march_db, s)
    lk_env(monkeypatch, livekit_server)
    window = [(now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat()]
    code = await asyncio.to_thread(main, ["reconcile", "--from", window[0], "--to", window[1]])
    assert code == 0

    by_sid = sessions_by_sid(march_db)
    for key in ("present", "fresh"):
        assert by_sid[rows[key].participant_sid].left_at is None, key
    for key in ("gone", "no-room", "old-room"):
        r = by_sid[rows[key].participant_sid]
        assert r.left_at == stale and r.last_seen_at == stale, key
        assert r.end_source == END_RECONCILED and r.disconnect_reason is None, key
        assert r.duration_ms == 600_000, key
        assert r.end_uncertainty_ms is not None
        assert 600_000 <= r.end_uncertainty_ms < 660_000, (key, r.end_uncertainty_ms)
    # the rollup, written in the same run, counts a settled session up to its last sighting
    got = numbers(rollups(march_db, *(datetime.fromisoformat(w) for w in window)))
    assert got[("room", f"{room}-ended")] == (1, 600_000, 10)


def test_concurrent_close_or_sighting_by_the_daemon_wins(db_url: str) -> None:
    store = Store(db_url)
    try:
        t = datetime.now(UTC) - timedelta(minutes=10)
        closed, seen, settled = tracked("PA_c", t), tracked("PA_s", t), tracked("PA_x", t)
        store.apply([Open(closed), Open(seen), Open(settled)], "obs")
        stale = store.stale_open_sessions(datetime.now(UTC) - timedelta(seconds=60))
        assert {s.participant_sid for s in stale} == {"PA_c", "PA_s", "PA_x"}
        # the daemon closes one and confirms another before the reconcile job writes
        left = t + timedelta(minutes=1)
        store.apply(
            [
                Close(closed.key, left, "CLIENT_INITIATED", END_RTC, None, left, closed),
                RefreshLastSeen((seen.key,), datetime.now(UTC)),
            ],
            "obs",
        )
        with store.rollup_transaction() as tx:
            assert tx.settle(stale, datetime.now(UTC)) == 1
        rows = {r.participant_sid: r for r in store.sessions(SessionFilter())}
        assert rows["PA_c"].end_source == END_RTC and rows["PA_c"].left_at == left
        assert rows["PA_s"].left_at is None
        assert rows["PA_x"].end_source == END_RECONCILED and rows["PA_x"].left_at == t
    finally:
        store.close()


@pytest.mark.live
async def test_unreachable_livekit_is_exit_2_and_nothing_written(
    livekit_server: LiveKitServer,
    march_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lk_env(monkeypatch, livekit_server, f"ws://127.0.0.1:{free_tcp_port()}")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["reconcile", "--period", "2026-03", "--now", FINAL])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "livekit unreachable" in err
    assert rollups(march_db) == []
    assert sessions_by_sid(march_db)["G"].left_at is None  # stale, but not settled
    # --no-settle runs without LiveKit
    code = await asyncio.to_thread(
        main, ["reconcile", "--period", "2026-03", "--now", FINAL, "--no-settle"]
    )
    assert code == 0 and numbers(rollups(march_db)) == MARCH
