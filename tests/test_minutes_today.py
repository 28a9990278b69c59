"""The Minutes view is true at the visit: sessions recorded, closed or still open since the
page computed it are in the numbers; kept only while nothing it depends on changed and no
session is open."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db.store import Store
from observer.web import views
from observer.web.app import WebPage
from observer.web.guard import Access, guarded_app

pytestmark = pytest.mark.unit

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def at(hours: float) -> datetime:
    return TODAY + timedelta(hours=hours)


def session(n: int, joined: datetime) -> TrackedSession:
    return TrackedSession(
        "room", "RM_1", f"PA_{n}", f"agent-{n}", "", "agent", "bot", {}, joined, joined
    )


def close(s: TrackedSession, left: datetime) -> Close:
    return Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)


@pytest.fixture
async def page(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TestClient[Any, Any], Store, list[datetime], list[str]]]:
    """The page over a database with one session this morning, its clock at noon today,
    started (its first computation of the view done); and the view's computations."""
    store = Store(db_url)
    first = session(0, at(8))
    store.apply([Open(first), close(first, at(8) + timedelta(minutes=10))], "obs")
    computed: list[str] = []
    minutes_view = views.minutes_view

    def counted(store: Store, now: datetime, by: str = "agent") -> Any:
        computed.append(by)
        return minutes_view(store, now, by)

    monkeypatch.setattr(views, "minutes_view", counted)
    clock = [at(12)]
    web_page = WebPage(store, stuck_after_s=300, dead_after_s=10, access=Access())
    web_page._clock = lambda: clock[0]  # the page's clock, moved by the test
    app = guarded_app(Access())
    web_page.add_routes(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert web_page.warmed is not None
        await web_page.warmed
        assert computed and computed[0] == "agent"
        yield client, store, clock, computed
    finally:
        await client.close()
        store.close()


async def shown(http: TestClient[Any, Any]) -> tuple[int, int, int]:
    """The month's total duration (ms) and billable minutes, and the chart's minutes of
    the agent (all of them today's)."""
    r = await http.get("/minutes?by=agent")
    assert r.status == 200
    html = await r.text()
    total = re.search(r'id="this-total-minutes" data-ms="(\d+)">(\d+)<', html)
    chart = re.search(r"bot <small>(\d+) min</small>", html)
    assert total is not None and chart is not None
    return int(total[1]), int(total[2]), int(chart[1])


async def test_sessions_since_the_computation_are_in_the_view_at_the_visit(
    page: tuple[TestClient[Any, Any], Store, list[datetime], list[str]],
) -> None:
    http, store, clock, computed = page
    assert await shown(http) == (600_000, 10, 10)
    assert await shown(http) == (600_000, 10, 10)
    n = len(computed)
    assert await shown(http) == (600_000, 10, 10)
    assert len(computed) == n  # nothing changed, nothing open: kept

    # after the first computation: a session opened and closed, one opened and still open
    closed = session(1, at(9))
    live = session(2, at(11))
    store.apply([Open(closed), close(closed, at(9.5)), Open(live)], "obs")
    assert await shown(http) == (600_000 + 1_800_000 + 3_600_000, 10 + 30 + 60, 100)

    # the open one counts up to the visit
    clock[0] = at(12) + timedelta(minutes=5)
    assert await shown(http) == (600_000 + 1_800_000 + 3_900_000, 10 + 30 + 65, 105)

    # closed since: its end, not the visit's time
    store.apply([close(live, at(12) + timedelta(minutes=6))], "obs")
    clock[0] = at(13)
    assert await shown(http) == (600_000 + 1_800_000 + 3_960_000, 10 + 30 + 66, 106)
    n = len(computed)
    assert await shown(http) == (600_000 + 1_800_000 + 3_960_000, 10 + 30 + 66, 106)
    assert len(computed) == n  # all closed again, nothing changed: kept
