"""`observer export` to Stripe Billing meter events through the `stripe` package: against
stripe-mock (which checks each request against Stripe's API but keeps nothing), and for
idempotency against the deduplicating fake (tests/billing_fake.py)."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from billing_fake import billing_fake
from sqlalchemy import text
from stripe_mock import stripe_mock
from test_export import add, run, session

from observer.cli import main
from observer.db.store import Store

pytestmark = pytest.mark.live

KEY = "sk_test_0123456789abcdefghijklmn"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
START = TODAY - timedelta(days=5)


@pytest.fixture
def recent(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sessions of two customers on two recent days, and one 40 days ago; all finalized."""
    old = TODAY - timedelta(days=40)
    add(
        db_url,
        session("a1", START + timedelta(hours=9), 150, customer="cus_A"),  # 3 minutes
        session("a2", START + timedelta(days=1, hours=9), 20, customer="cus_A"),  # 1
        session("b1", START + timedelta(hours=11), 61, customer="cus_B"),  # 2
        session("o1", old + timedelta(hours=9), 60, customer="cus_A"),
    )
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(("OBSERVER_", "LIVEKIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    monkeypatch.setenv("OBSERVER_FINALIZE_DELAY_S", "0")
    for day in (old, START, START + timedelta(days=1)):
        assert main(["reconcile", "--period", f"{day:%Y-%m-%d}", "--no-settle"]) == 0
    monkeypatch.setenv("OBSERVER_EXPORT_TARGET", "stripe")
    monkeypatch.setenv("OBSERVER_EXPORT_SECRET", KEY)
    monkeypatch.setenv("OBSERVER_EXPORT_CUSTOMER_KEY", "attribute:customer")
    monkeypatch.setenv("OBSERVER_EXPORT_RATE_PER_S", "1000")
    return db_url


def ledger(db_url: str) -> dict[tuple[str, str], tuple[Decimal, str]]:
    store = Store(db_url)
    try:
        out: dict[tuple[str, str], tuple[Decimal, str]] = {}
        for r in store.export_rows("stripe"):
            out[(r.key.customer, f"{r.key.start:%Y-%m-%d}")] = (r.quantity, r.state)
        return out
    finally:
        store.close()


def test_meter_events_against_stripe_mock(
    recent: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with stripe_mock() as url:
        monkeypatch.setenv("OBSERVER_EXPORT_URL", url)
        code, out, err = run(capsys, "export")
    # the day 40 days ago is refused with a line of its own, never sent with a wrong time
    assert code == 1, out + err
    assert "3 acknowledged, 0 refused, 0 still pending" in out, out + err
    assert "older than the 35 days the target accepts" in out
    d0, d1 = f"{START:%Y-%m-%d}", f"{START + timedelta(days=1):%Y-%m-%d}"
    assert ledger(recent) == {
        ("cus_A", d0): (Decimal(3), "acknowledged"),
        ("cus_A", d1): (Decimal(1), "acknowledged"),
        ("cus_B", d0): (Decimal(2), "acknowledged"),
    }
    assert KEY not in out + err


def test_stripe_idempotency_against_the_deduplicating_fake(
    recent: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake() as fake:
        monkeypatch.setenv("OBSERVER_EXPORT_URL", fake.url)
        monkeypatch.setenv("OBSERVER_EXPORT_TIMEOUT_S", "0.5")
        fake.faults.extend(["slow", "500", "429", "slow"])
        code, out, _ = run(capsys, "export", "--from", f"{START:%Y-%m-%d}")
        assert code == 0, out
        assert "3 acknowledged" in out and "4 retried" in out
        assert fake.duplicates == 2 and len(fake.events) == 3
        sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for e in fake.events.values():
            assert e["kind"] == "agent_minutes"
            assert len(e["raw"]["identifier"]) <= 100
            sums[(e["customer"], e["day"])] += Decimal(e["quantity"])
        assert sums == {k: q for k, (q, _s) in ledger(recent).items()}
        code, out, _ = run(capsys, "export", "--from", f"{START:%Y-%m-%d}")
        assert code == 0 and "0 new event(s)" in out and len(fake.events) == 3


def test_a_negative_correction_is_listed_never_sent_and_settled_by_hand(
    recent: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with billing_fake() as fake:
        monkeypatch.setenv("OBSERVER_EXPORT_URL", fake.url)
        assert run(capsys, "export", "--from", f"{START:%Y-%m-%d}")[0] == 0
        # the recorded usage shrinks after it was sent: cus_B's session (2 minutes) turns
        # out not to be billable and its rows are removed
        store = Store(recent)
        try:
            with store.engine.begin() as conn:
                for table in ("session_spans", "sessions"):
                    conn.execute(text(f"DELETE FROM {table} WHERE participant_sid = 'b1'"))
        finally:
            store.close()
        for _ in range(2):  # listed on every run until settled; never sent
            code, out, _ = run(capsys, "export", "--from", f"{START:%Y-%m-%d}")
            assert code == 1, out
            (line,) = [x for x in out.splitlines() if x.startswith("settle by hand: ")]
            assert "'cus_B'" in line and "went down by 2" in line and "credit note" in line
        ident = line.split()[3].rstrip(":")
        assert all(Decimal(e["quantity"]) >= 0 for e in fake.events.values())
        assert len(fake.events) == 3  # the first events; nothing since
        # a typo is one line and exit 2, and records nothing
        code, out, err = run(capsys, "export", "--settled", "obs_nothing_0")
        assert code == 2 and "obs_nothing_0" in err and len(err.strip().splitlines()) == 1
        # the operator issued the credit note in Stripe and says so
        code, out, _ = run(capsys, "export", "--from", f"{START:%Y-%m-%d}", "--settled", ident)
        assert code == 0, out
        assert "recorded 1 negative correction(s) as settled by hand" in out
        assert "settle by hand" not in out and len(fake.events) == 3
        code, out, _ = run(capsys, "export", "--from", f"{START:%Y-%m-%d}")
        assert code == 0 and "settle by hand" not in out and "0 new event(s)" in out
        store = Store(recent)
        try:
            (settled,) = [r for r in store.export_rows("stripe") if r.identifier == ident]
        finally:
            store.close()
        assert (settled.state, settled.attempts, settled.quantity) == ("acknowledged", 0, -2)
        assert settled.answer is not None and "settled by hand" in settled.answer
