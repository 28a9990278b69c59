"""`observer forget`: an identity replaced by its keyed hash in every table that holds it,
totals unchanged, idempotent; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from retention_data import record, tracked
from sqlalchemy import inspect, text

from observer.cli import main
from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import RecordUsage, RoomSeen
from observer.core.retention import forget_hash, rewrite_text
from observer.db.rollups import Rollup
from observer.db.store import Store
from observer.db.usage import UsageSpec

pytestmark = pytest.mark.unit

KEY = "k" * 32
WHO = "alice@example.com"
HASH = forget_hash(KEY, WHO)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
APR = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    monkeypatch.setenv("OBSERVER_FORGET_KEY", KEY)
    return db_url


def forget(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["forget", *args])
    out, err = capsys.readouterr()
    return code, out, err


def fill(store: Store) -> None:
    """Alice as a caller (a standard participant), as the value of the agent's `customer`
    attribute and of the room's metadata; her rows in rollups, comparisons and the ledger."""
    at = MAR + timedelta(days=2)
    meta = json.dumps({"customer": WHO, "plan": "pro", "note": f"call with {WHO}"})
    store.apply([RoomSeen("RM1", "room", meta, None, at, 1, 2)], "obs")
    caller = tracked("PU1", at, identity=WHO, kind="standard", name="Alice A.", agent_name=None)
    agent = tracked("PA1", at, identity="agent-7", attributes={"customer": WHO})
    other = tracked(
        "PA2", at + timedelta(hours=1), identity="agent-8", attributes={"customer": "bob"}
    )
    record(store, caller, at + timedelta(minutes=3))
    record(store, agent, at + timedelta(minutes=4, seconds=1))
    record(store, other, at + timedelta(hours=1, minutes=2))
    store.apply(
        [
            RecordUsage(
                UsageReport(
                    "RM1",
                    "PU1",
                    WHO,
                    at,
                    at,
                    "http",
                    (ModelUsage("llm", "openai", "gpt-4o", input_tokens=10, output_tokens=5),),
                )
            )
        ],
        "obs",
    )
    with store.rollup_transaction() as tx:
        tx.write_rollups(
            MAR,
            APR,
            [
                Rollup("total", "", 2, 366_000, 8, MAR, MAR),
                Rollup("attribute:customer", WHO, 1, 241_000, 5, MAR, MAR, "0.05"),
                Rollup("attribute:customer", "bob", 1, 120_000, 2, MAR, MAR),
            ],
        )
        tx.write_comparison(
            MAR,
            APR,
            compared_at=MAR,
            statement="march.csv",
            tolerance_minutes="0",
            groups_compared=2,
            differences=[{"group_kind": "attribute:customer", "group_key": WHO, "status": "x"}],
        )
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO exports (target, identifier, customer, customer_value, agent,"
                " period_start, period_end, kind, seq, quantity, event_time, state, attempts,"
                " created_at) VALUES ('http', 'obs_1', :c, :c, 'bob', :s, :e, 'minutes', 0,"
                " '5', :s, 'acknowledged', 1, :s)"
            ),
            {"c": WHO, "s": MAR.replace(tzinfo=None), "e": APR.replace(tzinfo=None)},
        )


def dump(store: Store) -> dict[str, list[Any]]:
    """Every row of every table, as text."""
    out = {}
    with store.engine.connect() as conn:
        for table in sorted(inspect(store.engine).get_table_names()):
            if table == "alembic_version":
                continue
            rows = conn.execute(text(f"SELECT * FROM {table}")).all()
            out[table] = sorted(str(tuple(r)) for r in rows)
    return out


def totals(store: Store) -> Any:
    spec = UsageSpec((MAR, APR), group_by=("attribute:customer",), kind=None)
    with store.engine.connect() as conn:
        minutes = conn.execute(text("SELECT count(*), sum(duration_ms) FROM sessions")).one()
    usage = sorted((t.sessions, t.duration_ms, t.billable_minutes) for t in store.usage(spec))
    with store.rollup_transaction() as tx:
        rollups = sorted(
            (r.group_kind, r.sessions, r.duration_ms, r.billable_minutes, r.cost)
            for r in tx.rollups(MAR, APR)
        )
    return minutes, usage, rollups


def test_forget_rewrites_every_table_and_keeps_the_totals(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(env)
    try:
        fill(store)
        before = totals(store)
        tables = dump(store)
        holding = {t for t, rows in tables.items() for row in rows if WHO in row}
        assert holding == {
            "sessions",
            "webhook_events",
            "agent_usage",
            "rooms",
            "period_rollups",
            "reconcile_comparisons",
            "exports",
        }
        code, out, err = forget(capsys, "--identity", WHO)
        assert code == 0, err
        assert out.startswith(f"forgotten: {HASH} (") and out.count("\n") == 1
        assert KEY not in out + err and WHO not in out + err
        assert "sessions 2" in out and "webhook_events 2" in out and "agent_usage 1" in out
        assert "rooms 1" in out and "period_rollups 1" in out and "exports 2" in out
        after = dump(store)
        left = [(t, row) for t, rows in after.items() for row in rows if WHO in row]
        # the only trace: the room's note, where the identity is part of a longer text
        assert [t for t, _ in left] == ["rooms"], left
        assert all(f"call with {WHO}" in row for _, row in left)
        assert {t for t, rows in after.items() for row in rows if HASH in row} == holding
        assert totals(store) == before
        # spans and witnesses hold sids only: untouched
        assert after["session_spans"] == tables["session_spans"]
        assert after["session_witnesses"] == tables["session_witnesses"]
        with store.engine.connect() as conn:
            name, ident = conn.execute(
                text(
                    "SELECT participant_name, participant_identity FROM sessions"
                    " WHERE participant_sid = 'PU1'"
                )
            ).one()
            body = conn.execute(
                text("SELECT body FROM webhook_events WHERE id = 'EV_PU1_0'")
            ).scalar_one()
            meta = conn.execute(text("SELECT metadata FROM rooms")).scalar_one()
        assert name == HASH and ident == HASH
        assert json.loads(body)["participant"] == {"sid": "PU1", "identity": HASH, "name": HASH}
        assert json.loads(meta)["customer"] == HASH and json.loads(meta)["plan"] == "pro"

        # again: nothing holds the identity, its hash is stored: exit 0, nothing changed
        code, out, err = forget(capsys, "--identity", WHO)
        assert code == 0, err
        assert out == f"forgotten: {HASH} (forgotten before: nothing changed)\n"
        assert dump(store) == after
    finally:
        store.close()


def test_a_rollup_of_the_hash_already_there_is_added_up(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Forgotten before, rolled up again, then the identity came back (a new session): the
    two groups of one period become one, holding both."""
    store = Store(env)
    try:
        fill(store)
        with store.rollup_transaction() as tx:
            tx.write_rollups(
                MAR, APR, [Rollup("attribute:customer", HASH, 3, 10_000, 3, MAR, MAR, "0.01")]
            )
        code, _, err = forget(capsys, "--identity", WHO)
        assert code == 0, err
        with store.rollup_transaction() as tx:
            rows = {(r.group_kind, r.group_key): r for r in tx.rollups(MAR, APR)}
        merged = rows["attribute:customer", HASH]
        assert (merged.sessions, merged.duration_ms, merged.billable_minutes) == (4, 251_000, 8)
        assert merged.cost == "0.06"
        assert ("attribute:customer", WHO) not in rows
    finally:
        store.close()


@pytest.mark.databases("sqlite")
def test_unknown_identity_is_exit_1_and_changes_nothing(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(env)
    try:
        fill(store)
        before = dump(store)
        code, out, err = forget(capsys, "--identity", "nobody")
        assert code == 1 and out == ""
        assert err == "observer: identity not found: no stored row holds it\n"
        assert dump(store) == before
    finally:
        store.close()


@pytest.mark.databases("sqlite")
@pytest.mark.parametrize(
    ("key", "args", "says"),
    [
        (None, ["--identity", WHO], "OBSERVER_FORGET_KEY is missing"),
        ("short", ["--identity", WHO], "OBSERVER_FORGET_KEY must be at least 16 characters"),
        (KEY, ["--identity", "  "], "--identity must not be empty"),
        (KEY, [], "--identity"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key: str | None,
    args: list[str],
    says: str,
) -> None:
    if key is None:
        monkeypatch.delenv("OBSERVER_FORGET_KEY")
    else:
        monkeypatch.setenv("OBSERVER_FORGET_KEY", key)
    store = Store(env)
    try:
        fill(store)
        before = dump(store)
        code, out, err = forget(capsys, *args)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and says in err
        assert KEY not in err
        assert dump(store) == before
    finally:
        store.close()


def test_rewriting_text() -> None:
    h = "H"
    assert rewrite_text("alice", "alice", h) == h
    assert rewrite_text("not json alice", "alice", h) == "not json alice"
    assert rewrite_text('{"a": "alice", "alice": 1}', "alice", h) == '{"a":"H","H":1}'
    # room metadata as a JSON string inside a webhook body
    inner = json.dumps({"customer": "alice"})
    body = json.dumps({"room": {"metadata": inner}})
    assert json.loads(json.loads(rewrite_text(body, "alice", h))["room"]["metadata"]) == {
        "customer": "H"
    }
    # an identity that is part of a longer value stays: cutting it out would change others
    assert rewrite_text('{"a": "alice2"}', "alice", h) == '{"a": "alice2"}'
    assert rewrite_text('{"a": "ü"}', "ü", h) == '{"a":"H"}'
    assert rewrite_text('{"a": "\\u00fc"}', "ü", h) == '{"a":"H"}'
    assert forget_hash(KEY, WHO) == HASH and len(HASH) == 64
    assert forget_hash("another key of 16+", WHO) != HASH
