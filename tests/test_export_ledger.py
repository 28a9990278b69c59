"""The `exports` ledger (migration 0020) through the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import inspect, text

from observer.db import migrate
from observer.db.exports import Answer
from observer.db.store import Store
from observer.export.planner import MINUTES, Usage, plan

pytestmark = pytest.mark.unit

D1 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 5, tzinfo=UTC)


def usage(*pairs: tuple[str, int]) -> list[Usage]:
    return [Usage(c, "bot", D1, D1 + timedelta(days=1), MINUTES, Decimal(m)) for c, m in pairs]


def test_migration_up_and_down(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0019")
    store = Store(empty_db_url)
    try:
        assert "exports" not in inspect(store.engine).get_table_names()
        migrate.upgrade(empty_db_url)
        migrate.check(empty_db_url)  # the model and the migration agree
        store.engine.dispose()  # SQLite: a connection opened before reads the old schema
        insp = inspect(store.engine)
        uniques = [u["column_names"] for u in insp.get_unique_constraints("exports")]
        assert ["target", "identifier"] in uniques
        migrate.downgrade(empty_db_url, "0019")
        assert "exports" not in inspect(store.engine).get_table_names()
        migrate.upgrade(empty_db_url)
        assert store.schema_is_current()
    finally:
        store.close()


def plan_and_record(store: Store, target: str, pairs: list[tuple[str, int]]) -> int:
    with store.export_transaction() as tx:
        assert tx.try_lock()
        ledger = tx.ledger(target, D1, D1 + timedelta(days=31))
        p = plan(target, usage(*pairs), ledger, mapping=None, now=NOW)
        return tx.record(p.events, NOW)


def test_record_answer_and_replan(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert plan_and_record(store, "http", [("acme", 5), ("beta", 3)]) == 2
        # pending counts as sent: planning again records nothing
        assert plan_and_record(store, "http", [("acme", 5), ("beta", 3)]) == 0
        # another target has its own ledger
        assert plan_and_record(store, "stripe", [("acme", 5)]) == 1
        pending = store.export_pending("http")
        assert [(r.key.customer, r.quantity, r.seq) for r in pending] == [
            ("acme", 5, 0),
            ("beta", 3, 0),
        ]
        assert store.export_pending("http", after=pending[0].id) == pending[1:]
        acme, beta = pending
        store.export_answers(
            [Answer(acme.id, "acknowledged", "200", 2), Answer(beta.id, "refused", "400 no", 1)],
            NOW,
        )
        # a late answer never takes an acknowledged event back
        store.export_answers([Answer(acme.id, "pending", "timeout", 1)], NOW)
        rows = {r.key.customer: r for r in store.export_rows("http")}
        assert (rows["acme"].state, rows["acme"].attempts, rows["acme"].answer) == (
            "acknowledged",
            2,
            "200",
        )
        assert (rows["beta"].state, rows["beta"].answer) == ("refused", "400 no")
        assert store.export_counts() == {
            ("http", "acknowledged"): 1,
            ("http", "refused"): 1,
            ("stripe", "pending"): 1,
        }
        assert [r.key.customer for r in store.export_refused("http")] == ["beta"]
        # late data for acme: the difference; beta was refused: held, not planned again
        assert plan_and_record(store, "http", [("acme", 7), ("beta", 3)]) == 1
        again = [(r.key.customer, r.quantity, r.seq) for r in store.export_pending("http")]
        assert again == [("acme", 2, 1)]
        (http,) = [t for t in store.export_summaries() if t.target == "http"]
        assert (http.acknowledged, http.pending, http.refused, http.refused_outstanding) == (
            1,
            1,
            1,
            1,
        )
        assert http.retries == 1 and http.last_answered_at == NOW
        # retried: beta as seq 1, and its refusal is no longer outstanding
        with store.export_transaction() as tx:
            ledger = tx.ledger("http", D1, D1 + timedelta(days=31))
            p = plan(
                "http",
                usage(("acme", 7), ("beta", 3)),
                ledger,
                mapping=None,
                now=NOW,
                retry_refused=True,
            )
            assert tx.record(p.events, NOW) == 1
        again = [(r.key.customer, r.quantity, r.seq) for r in store.export_pending("http")]
        assert again == [("acme", 2, 1), ("beta", 3, 1)]
        assert store.export_refused("http") == []
        periods = store.period_exports([(D1, D1 + timedelta(days=31))])
        (per,) = periods[(D1, D1 + timedelta(days=31))][:1]
        assert (per.target, per.recorded, per.acknowledged, per.acknowledged_minutes) == (
            "http",
            4,
            1,
            5,
        )
        assert (per.pending, per.pending_corrections, per.refused_outstanding) == (2, 2, 0)
    finally:
        store.close()


def test_identifier_is_unique_per_target_and_state_is_checked(db_url: str) -> None:
    store = Store(db_url)
    try:
        plan_and_record(store, "http", [("acme", 5)])
        with store.export_transaction() as tx:  # the same events again: left as they are
            p = plan("http", usage(("acme", 5)), [], mapping=None, now=NOW)
            tx.record(p.events, NOW)
        assert len(store.export_rows()) == 1
        with pytest.raises(Exception, match=r"(?i)check"), store.engine.begin() as conn:
            conn.execute(text("UPDATE exports SET state = 'lost'"))
    finally:
        store.close()


def test_the_daemon_shows_the_ledger_on_its_metrics(db_url: str) -> None:
    import asyncio

    from observer.daemon.export_ledger import ExportLedger
    from observer.daemon.telemetry import Metrics

    metrics = Metrics()
    ledger = ExportLedger(metrics.registry)
    store = Store(db_url)
    try:
        assert (
            metrics.registry.get_sample_value("observer_export_events_pending", {"target": "http"})
            is None
        )  # nothing read yet: no series, not a 0 that means "all sent"
        assert plan_and_record(store, "http", [("acme", 5), ("beta", 3)]) == 2
        (first, second) = store.export_pending("http")
        store.export_answers([Answer(first.id, "acknowledged", "200", 2)], NOW)
        asyncio.run(ledger.read(store))
        http = {"target": "http"}
        assert metrics.value("observer_export_events_pending", http) == 1
        assert metrics.value("observer_export_events_sent_total", http) == 1
        assert metrics.value("observer_export_events_retried_total", http) == 1
        assert metrics.value("observer_export_last_answer_timestamp_seconds", http) == (
            NOW.timestamp()
        )
        # a scrape never reads the database: the counts change with the next read
        store.export_answers([Answer(second.id, "refused", "400 no such customer", 1)], NOW)
        assert metrics.value("observer_export_events_pending", http) == 1
        asyncio.run(ledger.read(store))
        assert metrics.value("observer_export_events_pending", http) == 0
        assert metrics.value("observer_export_events_refused_outstanding", http) == 1
    finally:
        store.close()
    # a read that fails keeps the last counts
    asyncio.run(ledger.read(store))
    assert metrics.value("observer_export_events_refused_outstanding", {"target": "http"}) == 1
