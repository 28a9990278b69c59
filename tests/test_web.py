"""The read-only page in a real headless browser (Debian's chromium, driven by Playwright)
against a real daemon, with real agents in real rooms; its totals against `observer usage`;
who may read it. Screenshots of every view go to test-artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_helpers import Clients, create_room
from livekit_server import LiveKitServer, free_tcp_port
from polling import until

from observer.cli import main
from observer.core.changes import Close, Open, RoomPresence, RoomSeen
from observer.core.events import TrackedSession
from observer.core.times import iso
from observer.core.vocab import END_RTC
from observer.db.store import Store
from observer.web.app import PAGES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium as root on a machine without network: no sandbox, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TOKEN = "page-token-0123456789"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


async def wait_for(pred: Any, timeout: float, what: str) -> float:
    """Until `await pred()` holds; returns the seconds it took."""
    start = time.monotonic()
    await until(pred, timeout_s=timeout, what=what, interval_s=0.2)
    return time.monotonic() - start


@pytest.mark.browser
@pytest.mark.databases("sqlite")
async def test_live_agents_stuck_agents_and_ended_sessions_in_the_browser(
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer: Any,
    clients: Clients,
    browser: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_tcp_port()
    await create_room(livekit_server, "with-caller")
    await create_room(livekit_server, "alone-room", empty_timeout=300, departure_timeout=300)
    await clients.join("with-caller", "caller-1", audio=True)
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}",
        OBSERVER_STUCK_AGENT_S="3",
    )
    await obs.wait_watching("with-caller")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    base = f"http://127.0.0.1:{port}"
    await page.goto(f"{base}/now")
    assert await page.locator("#no-agents").count() == 1

    # a live agent appears without reloading (the page updates itself every 5 s)
    await clients.agent("with-caller", "helper-agent", agent_name="support-bot")
    row = page.locator('tr[data-identity="helper-agent"]')
    took = await wait_for(lambda: row.count(), 15, "the live agent did not appear")
    assert took < 12
    assert await row.get_attribute("data-stuck") == "0"
    assert "support-bot" in await row.inner_text()

    # an agent alone in its room is marked, then stuck after OBSERVER_STUCK_AGENT_S
    await clients.agent("alone-room", "lonely-agent", agent_name="night-shift")
    lonely = page.locator('tr[data-identity="lonely-agent"]')

    async def stuck() -> bool:
        return await lonely.count() == 1 and await lonely.get_attribute("data-stuck") == "1"

    await wait_for(stuck, 20, "the lonely agent was not marked stuck")
    assert "STUCK" in await lonely.inner_text()
    await shoot(page, "now-desktop")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shoot(page, "now-phone")
    await page.set_viewport_size({"width": 1280, "height": 800})

    # a session that ends appears in the sessions list within 5 s
    leaver = await clients.agent("with-caller", "leaving-agent")
    await obs.wait_rows(lambda rows: any(r.participant_identity == "leaving-agent" for r in rows))
    await leaver.disconnect()
    left = time.monotonic()
    ended = page.locator('tr[data-identity="leaving-agent"][data-open="0"]')

    async def listed() -> bool:
        await page.goto(f"{base}/sessions")
        return await ended.count() == 1

    await wait_for(listed, 5, "the ended session was not listed within 5 s")
    assert time.monotonic() - left < 5
    assert "CLIENT_INITIATED" in await ended.inner_text()
    # the exports of the same filter
    href = await page.locator("#export-csv").get_attribute("href")
    assert href is not None and href.startswith("/sessions.csv")

    # this month rolled up, so that the Reconcile view shows its rows per agent
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    month = datetime.now(UTC).strftime("%Y-%m")
    assert await asyncio.to_thread(main, ["reconcile", "--period", month, "--no-settle"]) == 0
    await page.goto(f"{base}/reconcile")
    assert "support-bot" in await page.locator('tr.agent[data-agent="support-bot"]').inner_text()

    for name in PAGES:
        for size, (w, h) in SIZES.items():
            await page.set_viewport_size({"width": w, "height": h})
            response = await page.goto(f"{base}/{name}")
            assert response is not None and response.status == 200, name
            await shoot(page, f"{name}-{size}")
    health = await page.goto(f"{base}/health")
    assert health is not None
    assert "ready" in await page.locator("#health").inner_text()


# ---- the numbers: the page against `observer usage` ------------------------------------------


def fill(db_url: str, now: datetime) -> None:
    """Sessions over this month and the last, some across midnight and month ends, some open;
    an agent alone in a live room."""
    store = Store(db_url)
    try:
        ops: list[Any] = []
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=40)
        for n in range(300):
            joined = start + timedelta(minutes=n * 211, seconds=n % 50, microseconds=n * 997)
            if joined >= now:
                break
            s = TrackedSession(
                f"room-{n % 7}",
                f"RM_{n % 7}",
                f"PA_{n}",
                f"id-{n}",
                "",
                "agent",
                f"agent-{n % 4}" if n % 9 else None,
                {"customer": f"c{n % 3}"},
                joined,
                joined,
            )
            ops.append(Open(s))
            left = joined + timedelta(seconds=37 + (n * 613) % 7200)
            if left < now and n % 17:
                ops.append(Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s))
        ops.append(RoomSeen("RM_live", "live", "", now, now, 1, 1))
        s = TrackedSession(
            "live", "RM_live", "PA_live", "id-live", "", "agent", "agent-9", {}, now, now
        )
        ops += [Open(s), RoomPresence("RM_live", "live", 1, 0, now - timedelta(minutes=9), now)]
        store.apply(ops, "obs")
    finally:
        store.close()


@pytest.fixture
async def page_server(db_url: str) -> AsyncIterator[str]:
    """The page alone on a port of its own, as `observer web` serves it, over `fill`'s
    sessions (there before it starts: it computes its heavy view at once, and keeps it for
    a minute)."""
    fill(db_url, datetime.now(UTC))
    async with serve_page(db_url) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_page(db_url: str) -> AsyncIterator[str]:
    """The page over `db_url` on a free port of its own, as `observer web` serves it."""
    from aiohttp import web

    from observer.web.app import WebPage
    from observer.web.guard import Access, guarded_app

    store = Store(db_url)
    app = guarded_app(Access())
    WebPage(store, stuck_after_s=300, dead_after_s=10, access=Access()).add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        store.close()


async def get(url: str, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kw) as r:
        return r.status, await r.text()


def usage_total(
    capsys: pytest.CaptureFixture[str], db_url: str, start: str, end: str, now: str, by: str
) -> tuple[int, int]:
    import os

    os.environ["OBSERVER_DATABASE_URL"] = db_url
    try:
        capsys.readouterr()
        args = ["usage", "--from", start, "--to", end, "--now", now, "--by", by, "--format", "json"]
        assert main(args) == 0
        lines = json.loads(capsys.readouterr().out)
    finally:
        del os.environ["OBSERVER_DATABASE_URL"]
    return sum(x["billable_minutes"] for x in lines), sum(x["duration_ms"] for x in lines)


@pytest.mark.parametrize("by", ["agent", "attribute:customer"])
async def test_the_month_totals_are_observer_usage(
    db_url: str, page_server: str, capsys: pytest.CaptureFixture[str], by: str
) -> None:
    status, html = await get(f"{page_server}/minutes?by={by}")
    assert status == 200
    window = re.search(
        r'id="month-window" data-this-from="([^"]+)" data-this-to="([^"]+)"'
        r' data-last-from="([^"]+)" data-last-to="([^"]+)"',
        html,
    )
    assert window is not None
    this_from, this_to, last_from, last_to = window.groups()
    this = re.search(r'id="this-total-minutes" data-ms="(\d+)">(\d+)<', html)
    last = re.search(r'id="last-total-minutes" data-ms="(\d+)">(\d+)<', html)
    assert this is not None and last is not None
    assert (int(this[2]), int(this[1])) == usage_total(
        capsys, db_url, this_from, this_to, this_to, by
    )
    assert (int(last[2]), int(last[1])) == usage_total(
        capsys, db_url, last_from, last_to, this_to, by
    )
    assert int(last[2]) > 0
    # each row too: the minutes per group add up to the total
    rows = re.findall(r'class="num this-minutes">(\d+)<', html)
    assert sum(int(n) for n in rows) == int(this[2])


async def test_the_reconcile_view_per_agent_is_observer_reconcile_and_usage(
    db_url: str,
    page_server: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Last month's rows per agent name on the page are those `observer reconcile` rolled
    up, equal to `observer usage --by agent` for the month, and add up to its total."""
    now = datetime.now(UTC)
    this_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_start = (this_start - timedelta(days=1)).replace(day=1)
    period, at = last_start.strftime("%Y-%m"), iso(now)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    assert main(["reconcile", "--period", period, "--now", at, "--no-settle"]) == 0
    capsys.readouterr()
    args = ["--from", iso(last_start), "--to", iso(this_start), "--now", at, "--format", "json"]
    assert main(["usage", *args, "--by", "agent"]) == 0
    usage = {
        line["agent"] or "": (line["sessions"], line["duration_ms"], line["billable_minutes"])
        for line in json.loads(capsys.readouterr().out)
    }

    status, html = await get(f"{page_server}/reconcile")
    assert status == 200
    section = re.search(
        rf'<section class="period" data-start="{re.escape(iso(last_start))}">(.*?)</section>',
        html,
        re.S,
    )
    assert section is not None
    numbers = r'class="num sessions">(\d+)<.*?data-ms="(\d+)".*?class="num minutes">(\d+)<'
    rows = {
        unescape(name): (int(n), int(ms), int(minutes))
        for name, n, ms, minutes in re.findall(
            rf'<tr class="agent" data-agent="([^"]*)">.*?{numbers}', section[1], re.S
        )
    }
    assert len(rows) >= 4 and "" in rows  # agent-0..3 and sessions without a name
    assert rows == usage
    total = re.search(rf'<tr class="total">.*?{numbers}', section[1], re.S)
    assert total is not None
    sums = tuple(sum(r[i] for r in rows.values()) for i in range(3))
    assert sums == (int(total[1]), int(total[2]), int(total[3]))
    assert sums[2] > 0


async def test_every_view_answers_and_bad_input_is_one_line(db_url: str, page_server: str) -> None:
    for name in PAGES:
        status, html = await get(f"{page_server}/{name}")
        assert status == 200, name
    status, html = await get(f"{page_server}/now")
    assert 'data-identity="id-live"' in html and 'data-stuck="1"' in html
    status, text = await get(f"{page_server}/sessions.csv?agent=agent-1")
    assert status == 200 and text.startswith("id,room_name")
    status, text = await get(f"{page_server}/sessions.json?state=open")
    assert status == 200 and all(r["left_at"] is None for r in json.loads(text))
    for bad in ("/minutes?by=planet", "/sessions?kind=robot", "/sessions?since=yesterday"):
        status, text = await get(page_server + bad)
        assert status == 400 and text.count("\n") == 1, bad


@pytest.mark.live
@pytest.mark.databases("sqlite")
async def test_with_a_token_the_page_needs_it_or_the_login_cookie(
    livekit_server: LiveKitServer, db_url: str, start_observer: Any
) -> None:
    port = free_tcp_port()
    await start_observer(
        livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}", OBSERVER_HTTP_TOKEN=TOKEN
    )
    base = f"http://127.0.0.1:{port}"
    await asyncio.sleep(0.5)
    # a cookie jar that keeps cookies from an IP address, as a browser does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/now", allow_redirects=False) as r:
            assert r.status == 401  # not a browser: no redirect
        html = {"Accept": "text/html"}
        async with http.get(f"{base}/now", headers=html, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with http.get(f"{base}/login") as r:
            assert r.status == 200 and 'name="token"' in await r.text()
        async with http.post(f"{base}/login", data={"token": "wrong"}) as r:
            assert r.status == 401
        async with http.get(f"{base}/now", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        async with http.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.cookies["observer_web"]
            assert cookie["httponly"] and cookie.value != TOKEN
        async with http.get(f"{base}/now") as r:  # the session's cookie jar has it now
            assert r.status == 200 and "Live agents" in await r.text()
        async with http.get(f"{base}/sessions.csv") as r:
            assert r.status == 200


async def test_observer_web_serves_the_page_from_the_database_alone(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`observer web` as a process, with no LiveKit settings; bad input is one line."""
    import os
    import subprocess
    import sys

    fill(db_url, datetime.now(UTC))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    env["OBSERVER_DATABASE_URL"] = db_url
    port = free_tcp_port()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "observer", "web", "--addr", f"127.0.0.1:{port}"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    web = await asyncio.to_thread(start)
    try:
        base = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                return (await get(f"{base}/healthz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, 20, "observer web did not start")
        status, html = await get(f"{base}/now")
        assert status == 200 and 'data-identity="id-live"' in html
        status, html = await get(f"{base}/health")
        assert status == 200 and "not a daemon" in html
    finally:
        web.terminate()
        assert await asyncio.to_thread(web.wait, 20) == 0

    os.environ["OBSERVER_DATABASE_URL"] = db_url
    try:
        for args, words in [
            (["web", "--addr", "nowhere"], "--addr"),
            (["web", "--addr", "127.0.0.1:0"], "--addr"),
        ]:
            capsys.readouterr()
            assert main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0], err
    finally:
        del os.environ["OBSERVER_DATABASE_URL"]


def test_observer_web_on_a_database_without_the_schema_is_one_line(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVER_DATABASE_URL", empty_db_url)
    capsys.readouterr()
    assert main(["web"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "observer migrate" in err[0], err


def test_a_view_asked_while_it_is_first_computed_is_computed_once() -> None:
    """The start-up computes the default view; a visit meanwhile waits for that rather
    than computing it again beside it (two of them on two cores take twice as long). A
    failure reaches every waiter, and the next visit tries again."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from observer.web.views import TtlCache

    cache = TtlCache(60.0, spawn=lambda fn: pytest.fail("nothing is stale here"))
    calls: list[int] = []
    release = threading.Event()

    def make() -> int:
        calls.append(1)
        release.wait(10)
        return len(calls)

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = [pool.submit(cache.get, "k", make) for _ in range(4)]
        time.sleep(0.2)
        release.set()
        assert [f.result(10) for f in got] == [1, 1, 1, 1]
    assert len(calls) == 1
    assert cache.get("k", make) == 1  # and kept

    def broken() -> int:
        release.wait(10)
        raise RuntimeError("database gone")

    release.clear()
    with ThreadPoolExecutor(max_workers=2) as pool:
        failing = [pool.submit(cache.get, "other", broken) for _ in range(2)]
        time.sleep(0.2)
        release.set()
        for f in failing:
            with pytest.raises(RuntimeError, match="database gone"):
                f.result(10)
    assert cache.get("other", lambda: 7) == 7


async def test_the_offered_groupings_come_from_the_data_and_are_computed_before_a_visit(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    from observer.web import views
    from observer.web.app import WebPage
    from observer.web.guard import Access, guarded_app

    now = datetime.now(UTC)
    ops: list[Any] = []
    for n in range(40):
        sid = f"RM_k{n % 4}"
        meta = json.dumps({"plan": f"p{n % 2}", "customer": f"c{n % 3}"}) if n % 4 else "{}"
        ops.append(RoomSeen(sid, f"keyed-{n % 4}", meta, None, now, 1, 1))
        attributes = {"customer": f"c{n % 3}", "lk.agent.state": "speaking"}
        if n % 2:
            attributes["region"] = "eu"
        joined = now - timedelta(days=n % 20, hours=2)
        s = TrackedSession(
            f"keyed-{n % 4}", sid, f"PA_k{n}", f"id-k{n}", "", "agent", "bot", attributes,
            joined, joined,
        )  # fmt: skip
        left = joined + timedelta(minutes=7)
        ops += [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]
    user = TrackedSession(
        "keyed-0", "RM_k0", "PA_user", "id-user", "", "standard", None, {"seat": "3"}, now, now
    )
    ops.append(Open(user))
    store = Store(db_url)
    store.apply(ops, "obs")

    computed: list[str] = []
    minutes_view = views.minutes_view

    def counted(store: Store, now: datetime, by: str = "agent") -> Any:
        computed.append(by)
        return minutes_view(store, now, by)

    monkeypatch.setattr(views, "minutes_view", counted)
    page = WebPage(store, stuck_after_s=300, dead_after_s=10, access=Access())
    app = guarded_app(Access())
    page.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert page.warmed is not None
        await asyncio.wait_for(page.warmed, 60)
        keyed = ["attribute:customer", "attribute:region", "room-metadata:customer"]
        keyed.append("room-metadata:plan")
        # the most seen first; LiveKit's own attributes and a user's are not offered
        assert computed == ["agent", *keyed]
        status, html = await get(f"http://127.0.0.1:{port}/minutes?by=attribute:region")
        assert status == 200
        offered = re.findall(r'<option value="([^"]+)">', html)
        assert offered == ["agent", *keyed, "room", "identity", "room-metadata"]
        assert computed == ["agent", *keyed]  # the visit found it computed
        status, html = await get(f"http://127.0.0.1:{port}/minutes?by=identity")
        assert status == 200 and computed[-1] == "identity"
    finally:
        await runner.cleanup()
        store.close()


async def test_a_page_stopped_while_it_computes_leaves_no_connection_open(db_url: str) -> None:
    """The store is closed after the page: its start-up computation ends first (a
    connection left open fails the test as a ResourceWarning once collected)."""
    import gc

    from aiohttp import web

    from observer.web.app import WebPage
    from observer.web.guard import Access, guarded_app

    fill(db_url, datetime.now(UTC))
    computations = []
    for _ in range(3):
        store = Store(db_url)
        app = guarded_app(Access())
        page = WebPage(store, stuck_after_s=300, dead_after_s=10, access=Access())
        page.add_routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", free_tcp_port()).start()
        await runner.cleanup()
        store.close()
        assert page.warmed is not None
        computations.append(page.warmed)
        del store, app, runner, page
    await asyncio.wait(computations)  # whatever was still under way is over
    gc.collect()
