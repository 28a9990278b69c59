"""The Reconcile view's billing table in headless chromium: per finalized period and
target, what `observer export` sent, what was acknowledged, refused and is pending, equal to
the ledger. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from billing_fake import billing_fake
from livekit_server import free_tcp_port
from test_export import MAR, add, session
from test_web import browser, serve_page, shoot

from observer.cli import main
from observer.db.store import Store

pytestmark = [pytest.mark.unit, pytest.mark.browser]

SECRET = "whsec-page-0123456789abcdef"
FINAL = "2026-04-01T02:00:00Z"
__all__ = ["browser"]  # the fixture, used by name


def export(monkeypatch: pytest.MonkeyPatch, url: str, **more: str) -> int:
    monkeypatch.setenv("OBSERVER_EXPORT_TARGET", "http")
    monkeypatch.setenv("OBSERVER_EXPORT_URL", url)
    monkeypatch.setenv("OBSERVER_EXPORT_SECRET", SECRET)
    monkeypatch.setenv("OBSERVER_EXPORT_CUSTOMER_KEY", "attribute:customer")
    monkeypatch.setenv("OBSERVER_EXPORT_RATE_PER_S", "1000")
    monkeypatch.setenv("OBSERVER_EXPORT_ATTEMPTS", more.get("attempts", "5"))
    return main(["export"])


@pytest.fixture
def exported(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """March finalized and exported: one event refused, then late data whose correction is
    left pending (the billing system down)."""
    add(
        db_url,
        session("a1", MAR + timedelta(hours=9), 150, customer="acme"),  # 3 minutes
        session("a2", MAR + timedelta(days=1, hours=9), 600, customer="acme", agent="sales"),
        session("b1", MAR + timedelta(days=2, hours=9), 61, customer="beta"),  # 2
        session("c1", MAR + timedelta(days=4, hours=9), 30, customer="gamma"),  # 1
    )
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(("OBSERVER_", "LIVEKIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    assert main(["reconcile", "--period", "2026-03", "--no-settle", "--now", FINAL]) == 0
    with billing_fake(SECRET) as fake:
        fake.faults.append("400")  # the first event (acme, the 1st) is refused
        assert export(monkeypatch, fake.url + "/events") == 1
    # late data on a day sent: its correction cannot reach the billing system
    add(db_url, session("late", MAR + timedelta(days=2, hours=15), 90, customer="beta"))
    assert export(monkeypatch, f"http://127.0.0.1:{free_tcp_port()}/events", attempts="1") == 1
    return db_url


@pytest.fixture
async def billed(exported: str) -> AsyncIterator[str]:
    """The page served over the exported month, as `observer web` serves it."""
    async with serve_page(exported) as url:
        yield url


def ledger_numbers(db_url: str) -> dict[str, str]:
    store = Store(db_url)
    try:
        rows = store.export_rows("http")
    finally:
        store.close()
    held = {r.identifier for r in rows if r.state == "refused"}
    acknowledged = [r for r in rows if r.state == "acknowledged"]
    pending = [r for r in rows if r.state == "pending"]
    return {
        "recorded": str(len(rows)),
        "acknowledged": str(len(acknowledged)),
        "acknowledged-minutes": str(sum((r.quantity for r in acknowledged), Decimal(0))),
        "refused": str(len(held)),
        "pending": str(len(pending)),
        "pending-corrections": str(sum(r.seq > 0 for r in pending)),
    }


@pytest.mark.databases("sqlite")
async def test_the_reconcile_view_shows_what_each_target_was_sent(
    db_url: str, billed: str, browser: Any
) -> None:
    expected = ledger_numbers(db_url)
    # what the scenario made: 4 first events (1 refused) and a pending correction of 2
    assert {k: v for k, v in expected.items() if k != "acknowledged-minutes"} == {
        "recorded": "5",
        "acknowledged": "3",
        "refused": "1",
        "pending": "1",
        "pending-corrections": "1",
    }
    assert int(expected["acknowledged-minutes"]) in (6, 13, 14, 15)  # 16 less the refused
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"{billed}/reconcile")
    march = page.locator('section.period[data-start="2026-03-01T00:00:00Z"]')
    row = march.locator('tr.export[data-target="http"]')
    assert await row.count() == 1
    shown = {k: (await row.locator(f"td.{k}").inner_text()).strip() for k in expected}
    assert shown == expected
    assert await row.locator("td.refused .badge.stuck").count() == 1
    assert "--retry-refused" in await march.inner_text()
    await row.scroll_into_view_if_needed()
    await shoot(page, "reconcile-exports-desktop")
    await page.set_viewport_size({"width": 390, "height": 844})
    await row.scroll_into_view_if_needed()
    await shoot(page, "reconcile-exports-phone")
