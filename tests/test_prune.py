"""`observer prune`: details past their retention deleted in batches, never a session, never
anything of a period that is not finalized; beside the daemon's writes; on SQLite and
PostgreSQL."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from retention_data import count, finalize, record, tracked
from sqlalchemy import event, text

from observer.cli import main
from observer.core.retention import Coverage, parse_age
from observer.db import retention
from observer.db.store import Store

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)
MAR = datetime(NOW.year - 1, 3, 1, tzinfo=UTC)
APR = datetime(NOW.year - 1, 4, 1, tzinfo=UTC)
MAY = datetime(NOW.year - 1, 5, 1, tzinfo=UTC)


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    for name in ("OBSERVER_RETAIN_WEBHOOK_EVENTS_DAYS", "OBSERVER_RETAIN_SPANS_DAYS"):
        monkeypatch.delenv(name, raising=False)
    return db_url


def prune(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["prune", *args])
    out, err = capsys.readouterr()
    return code, out, err


def fill(store: Store) -> None:
    """March finalized, April provisional, February never reconciled, and recent data."""
    finalize(store, MAR, APR)
    finalize(store, APR, MAY, final=False)
    at = MAR + timedelta(days=3)
    record(store, tracked("MAR", at), at + timedelta(minutes=5), observers=("a", "b"))
    # a session from March into April: it belongs to April too, which is not final
    edge = APR - timedelta(minutes=1)
    record(store, tracked("EDGE", edge), edge + timedelta(minutes=5))
    at = APR + timedelta(days=3)
    record(store, tracked("APR", at), at + timedelta(minutes=5))
    at = datetime(NOW.year - 1, 2, 10, tzinfo=UTC)
    record(store, tracked("FEB", at), at + timedelta(minutes=5))
    # open since March: its witness stays while it is open
    record(store, tracked("OPEN", MAR + timedelta(days=20)), None)
    at = NOW - timedelta(days=1)
    record(store, tracked("NEW", at), at + timedelta(minutes=5))


def details(store: Store, sid: str) -> tuple[int, int, int]:
    where = "participant_sid = :p"
    return (
        count(store, "webhook_events", where, p=sid),
        count(store, "session_spans", where, p=sid),
        count(store, "session_witnesses", where, p=sid),
    )


def test_prune_keeps_sessions_and_what_periods_not_finalized_hold(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(env)
    try:
        fill(store)
        sessions = count(store, "sessions")
        code, out, err = prune(capsys, "--older-than", "90d")
        assert code == 0, err
        assert count(store, "sessions") == sessions == 6
        assert details(store, "MAR") == (0, 0, 0)
        # a webhook event goes by its own time: EDGE's join (March 31st) and OPEN's join
        assert details(store, "EDGE") == (1, 4, 1)
        assert details(store, "APR") == (2, 4, 1)
        assert details(store, "FEB") == (2, 4, 1)
        assert details(store, "OPEN") == (0, 0, 1)
        assert details(store, "NEW") == (2, 4, 1)
        lines = out.splitlines()
        assert any(line.startswith("deleted: 4 webhook events older than") for line in lines)
        assert any(line.startswith("deleted: 4 session spans older than") for line in lines)
        assert any(line.startswith("deleted: 2 session witnesses older than") for line in lines)
        kept = [line for line in lines if line.startswith("kept: ")]
        assert len(kept) == 3, out
        assert "kept: 12 session spans older than the cut-off" in out
        assert "not finalized" in kept[0] and "kept: 5 webhook events" in kept[0]
        # a second run finds nothing more to delete, and holds the same back
        code, out2, _ = prune(capsys, "--older-than", "90d")
        assert code == 0
        assert "deleted: 0 session spans" in out2 and "kept: 12 session spans" in out2
        # once April is finalized too, its sessions' details go; February's stay
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE period_rollups SET finalized_at = computed_at"))
        code, _, _ = prune(capsys, "--older-than", "90d")
        assert code == 0
        assert details(store, "APR") == (0, 0, 0) and details(store, "EDGE") == (0, 0, 0)
        assert details(store, "FEB") == (2, 4, 1) and details(store, "NEW") == (2, 4, 1)
        assert details(store, "OPEN") == (0, 0, 1)
        assert count(store, "sessions") == 6
    finally:
        store.close()


def test_edge_webhooks_follow_their_own_time(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A webhook event belongs to the period of its own time; a span or witness to every
    period its session touches."""
    store = Store(env)
    try:
        fill(store)
        prune(capsys, "--older-than", "90d")
        assert count(store, "webhook_events", "id = 'EV_EDGE_0'") == 0  # March 31st
        assert count(store, "webhook_events", "id = 'EV_EDGE_1'") == 1  # April 1st
    finally:
        store.close()


def test_settings_give_each_kind_its_age(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(env)
    try:
        fill(store)
        monkeypatch.setenv("OBSERVER_RETAIN_SPANS_DAYS", "100000")  # spans kept for ages
        code, out, err = prune(capsys)
        assert code == 0, err
        assert details(store, "MAR") == (0, 4, 0)
        assert "deleted: 0 session spans" in out
    finally:
        store.close()


def test_deletes_in_batches_of_the_size_asked(env: str) -> None:
    store = Store(env)
    try:
        finalize(store, MAR, APR)
        for i in range(5):
            at = MAR + timedelta(days=1, hours=i)
            record(store, tracked(f"S{i}", at), at + timedelta(minutes=1), spans=7)
        deletes: list[int] = []
        commits: list[int] = []

        def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE"):
                deletes.append(len(params) if isinstance(params, (list, tuple, dict)) else 0)

        event.listen(store.engine, "before_cursor_execute", seen)
        event.listen(store.engine, "commit", lambda conn: commits.append(1))
        batches: list[int] = []
        result = store.prune(
            "session_spans",
            cutoff=NOW - timedelta(days=90),
            cov=store.prune_coverage(),
            batch_size=10,
            on_batch=lambda r: batches.append(r.deleted),
        )
        assert result.deleted == 35 and result.error is None
        # 35 spans, 10 keys a batch: four batches that delete, and one that finds the end
        assert len(deletes) == 4
        assert max(deletes) <= 10
        # the fourth batch reads 5 keys, fewer than asked: the end of the table
        assert batches == [10, 20, 30, 35] and result.batches == 4
        assert len(commits) >= len(deletes)
        assert result.longest_batch_s > 0
        assert count(store, "session_spans") == 0 and count(store, "sessions") == 5
    finally:
        store.close()


def old_and_young(store: Store) -> datetime:
    """March finalized: three March sessions, one from March still open, one from March
    that left yesterday, one of February (never reconciled: held), and thirty of the last
    days; the cut-off between them."""
    finalize(store, MAR, APR)
    feb = MAR - timedelta(days=10)
    record(store, tracked("FEB", feb), feb + timedelta(minutes=3), spans=2)
    for i in range(3):
        at = MAR + timedelta(days=2, hours=i)
        record(store, tracked(f"OLD{i}", at), at + timedelta(minutes=3), spans=5)
    record(store, tracked("OPEN", MAR + timedelta(days=9)), None)
    record(store, tracked("LONG", MAR + timedelta(days=9)), NOW - timedelta(days=1))
    for i in range(30):
        at = NOW - timedelta(days=30 - i)
        record(store, tracked(f"NEW{i}", at), at + timedelta(minutes=2), spans=3)
    return NOW - timedelta(days=90)


def test_prune_reads_only_what_is_older_than_the_cut_off(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune weighs webhook events older than the cut-off and sessions that ended before
    it, and nothing else: the rows it keeps cost it nothing, however many there are."""
    store = Store(env)
    try:
        cutoff = old_and_young(store)
        judged: list[tuple[datetime | None, datetime | None]] = []
        real = retention.judge

        def judge(start: Any, end: Any, cut: datetime, cov: Coverage) -> Any:
            judged.append((start, end))
            return real(start, end, cut, cov)

        monkeypatch.setattr(retention, "judge", judge)
        deleted = {
            kind: store.prune(kind, cutoff=cutoff, cov=store.prune_coverage(), batch_size=2).deleted
            for kind in retention.KINDS
        }
        assert deleted == {"webhook_events": 8, "session_spans": 15, "session_witnesses": 3}
        # six old events (a join and a leave of each March session), the joins of OPEN and
        # LONG, FEB's two (held); the March sessions and FEB once for spans, once for witnesses
        assert len(judged) == 10 + 4 + 4
        assert all(end is not None and end < cutoff for _, end in judged)
        # the recent ones', LONG's (it left lately) and FEB's (held)
        assert count(store, "session_spans") == 30 * 3 + 4 + 2
        assert count(store, "session_witnesses") == 33
    finally:
        store.close()


def test_what_prune_reads_is_found_by_index(env: str) -> None:
    """Every statement prune sends (reads and deletes) finds its rows through an index: no
    table is scanned whole and nothing is sorted, so each statement's cost is its batch's,
    not the table's."""
    store = Store(env)
    try:
        cutoff = old_and_young(store)
        sent: list[tuple[str, Any]] = []

        def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if (
                statement.lstrip().upper().startswith(("SELECT", "DELETE"))
                and "period_rollups" not in statement
            ):
                sent.append((statement, params))

        event.listen(store.engine, "before_cursor_execute", seen)
        cov = store.prune_coverage()
        held = {
            kind: store.prune(kind, cutoff=cutoff, cov=cov, batch_size=2).held
            for kind in retention.KINDS
        }
        assert held == {"webhook_events": 2, "session_spans": 2, "session_witnesses": 1}
        event.remove(store.engine, "before_cursor_execute", seen)
        assert len(sent) > 10
        sqlite = store.engine.dialect.name == "sqlite"
        with store.engine.connect() as conn:
            if not sqlite:
                # tiny tables: a scan would be cheapest; ask for the plan large ones get
                conn.exec_driver_sql("SET enable_seqscan = off")
            for statement, params in sent:
                explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
                plan = " | ".join(
                    str(row[-1]) for row in conn.exec_driver_sql(explain + statement, params)
                )
                if sqlite:
                    scans = re.sub(r"SCAN \d* ?CONSTANT ROWS?", "", plan)  # a list of keys
                    assert "SCAN" not in scans, (statement, plan)
                    assert "TEMP B-TREE" not in plan, (statement, plan)
                else:
                    assert "Seq Scan" not in plan, (statement, plan)
                    # a sort of a page's own rows (held rows counted by session) is bounded
                    if "GROUP BY" not in statement:
                        assert "Sort" not in plan, (statement, plan)
    finally:
        store.close()


def test_rows_of_one_instant_are_walked_past_a_batch(env: str) -> None:
    """Sessions and webhook events sharing one instant, more of them than a batch: all
    go (the walk's order is (time, id), not the time alone)."""
    store = Store(env)
    try:
        finalize(store, MAR, APR)
        at = MAR + timedelta(days=4)
        for i in range(11):
            record(store, tracked(f"T{i:02}", at), at + timedelta(minutes=1), spans=3)
        cov = store.prune_coverage()
        cutoff = NOW - timedelta(days=90)
        deleted = {
            kind: store.prune(kind, cutoff=cutoff, cov=cov, batch_size=4).deleted
            for kind in retention.KINDS
        }
        assert deleted == {"webhook_events": 22, "session_spans": 33, "session_witnesses": 11}
        assert count(store, "sessions") == 11
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_prune_runs_beside_the_daemons_writes(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Another store writes sessions with their details, as the daemon does, while prune
    deletes in small batches: neither fails, and nothing new is deleted."""
    store = Store(env)
    writer = Store(env)
    try:
        finalize(store, MAR, APR)
        for i in range(60):
            at = MAR + timedelta(days=1, minutes=i)
            record(store, tracked(f"OLD{i}", at), at + timedelta(seconds=30), spans=5)
        stop = threading.Event()
        errors: list[BaseException] = []
        written: list[str] = []

        def write() -> None:
            i = 0
            try:
                while not stop.is_set() or i < 20:
                    at = NOW - timedelta(minutes=10) + timedelta(seconds=i)
                    sid = f"LIVE{i}"
                    record(writer, tracked(sid, at), at + timedelta(seconds=1), spans=3)
                    written.append(sid)
                    i += 1
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            code, out, err = prune(capsys, "--older-than", "48h", "--batch-size", "7")
        finally:
            stop.set()
            thread.join(60)
        assert not errors, errors
        assert code == 0, err
        assert "deleted: 300 session spans" in out
        assert "deleted: 120 webhook events" in out
        assert count(store, "sessions") == 60 + len(written)
        assert count(store, "session_spans") == 3 * len(written)
        assert count(store, "webhook_events") == 2 * len(written)
    finally:
        writer.close()
        store.close()


def test_a_kind_that_cannot_be_deleted_is_exit_1(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(env)
    try:
        fill(store)
        with store.engine.begin() as conn:
            if store.engine.dialect.name == "sqlite":
                conn.execute(
                    text(
                        "CREATE TRIGGER no_delete BEFORE DELETE ON session_spans"
                        " BEGIN SELECT RAISE(ABORT, 'spans are kept here'); END"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS"
                        " $$ BEGIN RAISE EXCEPTION 'spans are kept here'; END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER no_delete BEFORE DELETE ON session_spans"
                        " FOR EACH ROW EXECUTE FUNCTION no_delete()"
                    )
                )
        code, out, err = prune(capsys, "--older-than", "90d")
        assert code == 1
        assert err.count("\n") == 1 and "could not delete session spans" in err
        assert "spans are kept here" in err
        # the other kinds were pruned all the same
        assert details(store, "MAR") == (0, 4, 0)
        assert "deleted: 4 webhook events" in out
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--older-than", "90"], "--older-than"),
        (["--older-than", "3m"], "--older-than"),
        (["--older-than", "0d"], "--older-than"),
        (["--older-than", "ninety days"], "--older-than"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "many"], "--batch-size"),
        (["--batch-size", "100001"], "--batch-size"),
    ],
)
@pytest.mark.databases("sqlite")
def test_bad_input_is_one_line_and_exit_2(
    env: str, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    store = Store(env)
    try:
        fill(store)
        before = count(store, "session_spans")
        code, out, err = prune(capsys, *args)
        assert code == 2
        assert out == "" and err.count("\n") == 1 and says in err
        assert count(store, "session_spans") == before
    finally:
        store.close()


@pytest.mark.databases("sqlite")
def test_bad_retention_setting_is_exit_2(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVER_RETAIN_SPANS_DAYS", "forever")
    code, out, err = prune(capsys)
    assert code == 2 and out == ""
    assert "OBSERVER_RETAIN_SPANS_DAYS must be an integer" in err and err.count("\n") == 1


@pytest.mark.databases("sqlite")
def test_no_database_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    code, out, err = prune(capsys, "--older-than", "12w")
    assert code == 2 and out == ""
    assert "run `observer migrate`" in err and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


def test_ages_and_coverage() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12w") == timedelta(weeks=12)
    assert parse_age("48h") == timedelta(hours=48)
    for bad in ("", "90", "d", "-1d", "1.5d", "90 d", "0h", "3m"):
        with pytest.raises(ValueError):
            parse_age(bad)
    cov = Coverage.of([(MAR, APR), (APR, MAY)], [(APR, APR + timedelta(days=1))])
    assert cov.intervals == ((MAR, APR), (APR + timedelta(days=1), MAY))
    assert cov.holds(MAR, APR)  # a session that ends at the period's end
    assert cov.holds(MAR, MAR)
    assert not cov.holds(APR, APR)  # the provisional day
    assert not cov.holds(APR - timedelta(hours=1), APR + timedelta(days=2))
    assert not cov.holds(MAY, MAY)
    assert Coverage.of([], []).intervals == ()
