"""`observer export` of the priced cost (`OBSERVER_EXPORT_QUANTITIES=minutes,cost`), on
SQLite and PostgreSQL: the cost per customer, agent and day is `observer usage --prices`'s,
in exact decimal, priced when each session joined; a price changed afterwards sends only
the difference; usage without a price is named and not sent."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
from billing_fake import billing_fake
from test_export import FINAL, MAR, SECRET, add, run, session, use

from observer.cli import main
from observer.db.store import Store

pytestmark = pytest.mark.unit

PRICES = """currency = "USD"

[[agent_minute]]
from = 2026-03-10
price = "0.0100"

[[agent_minute]]
from = 2026-03-15
price = "{later}"
"""
D = MAR.replace(day=14)


@pytest.fixture
def priced(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sessions around a price change on 15 March, and one before the first price; March
    finalized; the prices file, with the later price 0.0120."""
    add(
        db_url,
        session("a1", D.replace(hour=9), 150, customer="acme"),  # 3 min at 0.0100
        # joined at 0.0100 on the 14th: 30 s that day (1 min), 70 s on the 15th (2 min)
        session("a2", D.replace(hour=23, minute=59, second=30), 100, customer="acme"),
        session("b1", D.replace(day=16, hour=9), 61, customer="beta"),  # 2 min at 0.0120
        session("b2", D.replace(day=16, hour=10), 20, customer="beta", agent="sales"),  # 1
        session("g1", MAR.replace(day=5, hour=9), 60, customer="gamma"),  # before any price
    )
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(("OBSERVER_", "LIVEKIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    assert main(["reconcile", "--period", "2026-03", "--no-settle", "--now", FINAL]) == 0
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES.format(later="0.0120"))
    return prices


def usage_costs(
    capsys: pytest.CaptureFixture[str], prices: Path
) -> dict[tuple[str, str, str], Decimal]:
    code, out, _ = run(
        capsys,
        *("usage", "--from", "2026-03-01", "--to", "2026-04-01", "--now", FINAL),
        *("--by", "attribute:customer,agent,day", "--prices", str(prices), "--format", "json"),
    )
    assert code == 0
    return {
        (r["attribute:customer"], r["agent"], r["day"]): Decimal(r["cost"])
        for r in json.loads(out)
        if r["cost"] is not None and r["billable_minutes"]
    }


def ledger_costs(db_url: str) -> dict[tuple[str, str, str], Decimal]:
    store = Store(db_url)
    try:
        out: dict[tuple[str, str, str], Decimal] = {}
        for r in store.export_rows("http"):
            if r.key.kind == "cost" and r.state == "acknowledged":
                k = (r.key.customer, r.key.agent, f"{r.key.start:%Y-%m-%d}")
                out[k] = out.get(k, Decimal(0)) + r.quantity
        return out
    finally:
        store.close()


def fake_costs(
    totals: dict[tuple[str, str, str, str], Decimal],
) -> dict[tuple[str, str, str], Decimal]:
    return {(c, a, d): q for (c, a, d, kind), q in totals.items() if kind == "cost"}


def test_costs_are_usage_prices_exactly_and_a_new_price_sends_the_difference(
    db_url: str,
    priced: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = {
        ("acme", "bot", "2026-03-14"): Decimal("0.0400"),  # 3 + 1 minutes at 0.0100
        ("acme", "bot", "2026-03-15"): Decimal("0.0200"),  # 2 minutes, joined at 0.0100
        ("beta", "bot", "2026-03-16"): Decimal("0.0240"),
        ("beta", "sales", "2026-03-16"): Decimal("0.0120"),
    }
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events", quantities="minutes,cost", prices=str(priced))
        code, out, err = run(capsys, "export")
        # gamma's day has no price: named, not sent as 0, and the run says so (exit 0: the
        # warning is the usage report's own, and everything priced was acknowledged)
        assert "gamma" in err and "no cost" in err
        assert code == 0, out + err
        assert usage_costs(capsys, priced) == expected
        assert fake_costs(fake.totals()) == expected == ledger_costs(db_url)
        sent = {e["raw"]["quantity"] for e in fake.events.values() if e["kind"] == "cost"}
        assert sent == {"0.0400", "0.0200", "0.0240", "0.0120"}  # exact text, never a float
        requests = fake.requests
        assert run(capsys, "export")[0] == 0 and fake.requests == requests

        # the later price corrected to 0.0150: only the days priced by it change
        priced.write_text(PRICES.format(later="0.0150"))
        code, out, err = run(capsys, "export")
        assert code == 0, out + err
        assert "2 new event(s) (2 correction(s))" in out
        corrections = sorted(
            (e["raw"]["agent"], e["raw"]["quantity"])
            for e in fake.events.values()
            if e["kind"] == "cost" and e["raw"]["correction"]
        )
        assert corrections == [("bot", "0.0060"), ("sales", "0.0030")]
        again = usage_costs(capsys, priced)
        assert again[("acme", "bot", "2026-03-15")] == Decimal("0.0200")  # joined before
        assert fake_costs(fake.totals()) == again == ledger_costs(db_url)
