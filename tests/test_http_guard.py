"""The HTTP surface as an attacker probes it: the headers on every response, the Host names
answered, wrong tokens slowed down and logged, the logout, and bad input answered 400 in one
line. The page's app in-process (aiohttp's test server) over a SQLite database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from observer.cli import main
from observer.config import ConfigError, Settings
from observer.db.store import Store
from observer.web.app import WebPage
from observer.web.guard import (
    COOKIE,
    CSP,
    Access,
    GuessLimiter,
    accepted_hosts,
    guarded_app,
    host_allowed,
)

pytestmark = pytest.mark.unit

TOKEN = "a-page-token-of-enough-length"
Serve = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def serve(sqlite_url: str) -> AsyncIterator[Serve]:
    """Starts the page with the given access rules (the guarded app brings /healthz)."""
    started: list[tuple[TestClient[Any, Any], Store]] = []

    async def start(access: Access) -> TestClient[Any, Any]:
        store = Store(sqlite_url)
        app = guarded_app(access)
        WebPage(store, stuck_after_s=300, dead_after_s=10, access=access).add_routes(app)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        started.append((client, store))
        return client

    yield start
    for client, store in started:
        await client.close()
        store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- headers --------------------------------------------------------------------------------


async def test_every_response_carries_the_page_rules_and_billing_data_is_not_cached(
    serve: Serve,
) -> None:
    http = await serve(Access(token=TOKEN, open_paths=frozenset({"/healthz"})))
    paths = [
        "/now",
        "/now/live",  # the fragment the page swaps in: the page's CSP and frame rules too
        "/minutes",
        "/sessions",
        "/sessions.csv",
        "/sessions.json",
        "/reconcile",
        "/health",
        "/login",
        "/healthz",
        "/no-such-path",
        "/sessions?since=not-a-time",
    ]
    for path in paths:
        r = await http.get(path, headers=bearer(TOKEN), allow_redirects=False)
        assert r.status in (200, 400, 404), path
        assert r.headers.get("X-Content-Type-Options") == "nosniff", path
        assert r.headers.get("Referrer-Policy") == "no-referrer", path
        assert r.headers.get("Content-Security-Policy") == CSP, path
        assert "frame-ancestors 'none'" in CSP
        assert r.headers.get("X-Frame-Options") == "DENY", path
        assert r.headers.get("Cache-Control") == "no-store", path
    # refused, too
    r = await http.get("/sessions.csv", headers=bearer("x" * 20))
    assert r.status == 401 and r.headers["X-Content-Type-Options"] == "nosniff"
    # the page's own static files may be cached (their URLs carry their version)
    html = await (await http.get("/now", headers=bearer(TOKEN))).text()
    css = html.split('href="', 2)[1].split('"')[0]
    assert css.startswith("/static/page.css?v=")
    r = await http.get(css)
    assert r.status == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in r.headers.get("Cache-Control", "")


@pytest.mark.parametrize("trust_proxy", [False, True])
async def test_the_login_cookie_is_secure_behind_a_trusted_tls_proxy(
    serve: Serve, trust_proxy: bool
) -> None:
    http = await serve(Access(token=TOKEN, trust_proxy=trust_proxy))
    r = await http.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303
    cookie = r.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert bool(cookie["secure"]) is trust_proxy


def test_the_proxy_setting_is_read_and_checked() -> None:
    assert Settings.from_mapping({}).http_trust_proxy is False
    assert Settings.from_mapping({"OBSERVER_HTTP_TRUST_PROXY": "true"}).http_trust_proxy
    with pytest.raises(ConfigError, match="OBSERVER_HTTP_TRUST_PROXY must be true or false"):
        Settings.from_mapping({"OBSERVER_HTTP_TRUST_PROXY": "maybe"})


# ---- wrong guesses --------------------------------------------------------------------------


def test_wrong_guesses_wait_longer_and_longer_then_are_forgotten() -> None:
    now = [1000.0]
    limiter = GuessLimiter(free=3, max_delay_s=8, forget_after_s=60, clock=lambda: now[0])
    assert [limiter.failed("a") for _ in range(2)] == [(1, False), (2, False)]
    assert limiter.wait_s("a") == 0
    assert limiter.failed("a") == (3, True)  # the burst's one log line
    assert limiter.wait_s("a") == 1 and limiter.wait_s("b") == 0
    waits = []
    for _ in range(5):
        now[0] += limiter.wait_s("a")
        limiter.failed("a")
        waits.append(limiter.wait_s("a"))
    assert waits == [2, 4, 8, 8, 8]
    assert limiter.failed("a")[1] is False  # still the same burst: no second line
    now[0] += 59
    assert limiter.wait_s("a") == 0  # waited out
    now[0] += 1
    assert limiter.failed("a") == (1, False)  # forgotten: a new burst
    for _ in range(5):
        limiter.failed("b")
    limiter.succeeded("b")
    assert limiter.wait_s("b") == 0


async def test_wrong_bearer_tokens_and_logins_are_slowed_down_and_logged_once(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="observer")
    http = await serve(Access(token=TOKEN, limiter=GuessLimiter(free=5)))
    for n in range(5):
        r = await http.get("/sessions.json", headers=bearer(f"guess-number-{n:02d}-xxxx"))
        assert r.status == 401, n
    r = await http.get("/sessions.json", headers=bearer("guess-number-99-xxxx"))
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert "too many wrong tokens" in await r.text()
    # the right token waits too, or guessing would go on
    r = await http.get("/sessions.json", headers=bearer(TOKEN))
    assert r.status == 429
    # and the login form, with a sentence saying so
    r = await http.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 429 and "Retry-After" in r.headers
    assert "Too many wrong tokens from here: try again in" in await r.text()
    lines = [r for r in caplog.records if "wrong tokens" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert line.levelno == logging.WARNING and line.remote == "127.0.0.1"  # type: ignore[attr-defined]
    assert "guess-number" not in caplog.text and TOKEN not in caplog.text


async def test_login_guesses_count_and_a_right_one_clears_them(serve: Serve) -> None:
    now = [0.0]
    http = await serve(Access(token=TOKEN, limiter=GuessLimiter(free=3, clock=lambda: now[0])))
    for _ in range(2):
        r = await http.post("/login", data={"token": "not-it"}, allow_redirects=False)
        assert r.status == 401 and "That is not the token." in await r.text()
    r = await http.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303
    for _ in range(2):  # counted from zero again
        r = await http.post("/login", data={"token": "not-it"}, allow_redirects=False)
        assert r.status == 401


def test_a_short_token_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("OBSERVER_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("OBSERVER_HTTP_TOKEN", "hunter2")
    for command in (["web"], ["run"]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "OBSERVER_HTTP_TOKEN must be at least 16 characters, got 7" in err[0]
        assert "hunter2" not in err[0]


async def test_the_logout_forgets_the_cookie(serve: Serve) -> None:
    http = await serve(Access(token=TOKEN))
    r = await http.post("/login", data={"token": TOKEN})
    assert r.status == 200 and 'id="logout"' in await r.text()  # followed to /now
    r = await http.post("/logout", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/login"
    assert r.cookies[COOKIE].value == "" and r.cookies[COOKIE]["max-age"] == "0"
    r = await http.get("/now", allow_redirects=False)
    assert r.status == 401
    # without a token there is nothing to log out of
    open_page = await serve(Access())
    assert 'id="logout"' not in await (await open_page.get("/now")).text()


# ---- host names -----------------------------------------------------------------------------


def test_the_host_names_answered() -> None:
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert accepted_hosts(None, "127.0.0.1") == loopback
    assert accepted_hosts(None, "10.1.2.3") == loopback | {"10.1.2.3"}
    assert accepted_hosts(("obs.example.com",), "127.0.0.1") == loopback | {"obs.example.com"}
    assert accepted_hosts(None, "0.0.0.0") is None  # every address: any name
    assert accepted_hosts(None, "::") is None
    assert accepted_hosts(("obs.example.com",), "0.0.0.0") == loopback | {"obs.example.com"}
    assert accepted_hosts(("*",), "127.0.0.1") is None
    hosts = accepted_hosts(("obs.example.com",), "127.0.0.1")
    for ok in ("localhost:9465", "LOCALHOST", "127.0.0.1:9465", "[::1]:9465", "obs.example.com."):
        assert host_allowed(ok, hosts), ok
    for bad in ("evil.example", "evil.example:9465", "127.0.0.2", "localhost.evil.example"):
        assert not host_allowed(bad, hosts), bad
    assert Settings.from_mapping({"OBSERVER_HTTP_HOSTS": "a.example, B.example."}).http_hosts == (
        "a.example",
        "b.example",
    )
    with pytest.raises(ConfigError, match="OBSERVER_HTTP_HOSTS takes host names"):
        Settings.from_mapping({"OBSERVER_HTTP_HOSTS": "https://a.example/"})


async def test_a_host_name_not_configured_is_refused(serve: Serve) -> None:
    http = await serve(Access(hosts=accepted_hosts(None, "127.0.0.1")))
    r = await http.get("/now", headers={"Host": "rebound.attacker.example:9465"})
    assert r.status == 421
    text = await r.text()
    assert text.count("\n") == 1 and "OBSERVER_HTTP_HOSTS" in text
    assert "'rebound.attacker.example'" in text
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await http.get("/now", headers={"Host": "localhost:9465"})
    assert r.status == 200
    r = await http.get("/now")  # the test client names 127.0.0.1:port
    assert r.status == 200


# ---- bad input ------------------------------------------------------------------------------


async def test_bad_input_is_400_in_one_line_never_500(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    http = await serve(Access())
    cases = {
        "/sessions?since=0001-01-01T00:00%2B01:00": "since: '0001-01-01T00:00+01:00' is out of",
        "/sessions?until=9999-12-31T23:59-01:00": "until: '9999-12-31T23:59-01:00' is out of range",
        "/sessions.csv?since=0001-01-01T00:00%2B01:00": "is out of range (1970-01-01 to before",
        "/sessions.json?until=9999-12-31T23:59-01:00": "is out of range",
        "/sessions?since=1969-12-31T23:59Z": "is out of range",
        "/minutes?by=attribute:%00": "by: a KEY holds no control characters: 'attribute:\\x00'",
        "/minutes?by=room-metadata:a%0Ab": "by: a KEY holds no control characters",
        "/sessions?room=a%00b": "room: control characters are not allowed",
        "/sessions.csv?identity=%1B[2J": "identity: control characters are not allowed",
    }
    for path, words in cases.items():
        r = await http.get(path)
        text = await r.text()
        assert r.status == 400, (path, r.status, text)
        assert text.count("\n") == 1 and words in text, (path, text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # in range, with a zone: fine
    r = await http.get("/sessions?since=1970-01-01T01:00%2B01:00&until=8999-12-31T22:00-01:00")
    assert r.status == 200
    r = await http.get("/minutes?by=attribute:caf%C3%A9")
    assert r.status == 200


def test_the_command_line_refuses_the_same_times_and_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("OBSERVER_DATABASE_URL", sqlite_url)
    for args, words in [
        (["sessions", "--since", "0001-01-01T00:00+01:00"], "--since: '0001-01-01T00:00+01:00'"),
        (["usage", "--from", "30d", "--to", "9999-12-31T23:59-01:00"], "is out of range"),
        (["usage", "--from", "7d", "--by", "attribute:\x00"], "unknown --by 'attribute:\\x00'"),
    ]:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (args, err)


# ---- page details ---------------------------------------------------------------------------


async def test_the_icon_is_served_and_the_views_name_their_units(
    serve: Serve, sqlite_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from observer.core.changes import Close, Open
    from observer.core.events import TrackedSession
    from observer.core.vocab import END_RTC

    # within one UTC day of the chart's, whatever the time of day the test runs at
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    joined = today - timedelta(days=1) + timedelta(hours=10)
    s = TrackedSession("r", "RM_1", "PA_1", "agent-1", "", "agent", "bot", {}, joined, joined)
    left = joined + timedelta(minutes=12)
    store = Store(sqlite_url)
    store.apply([Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)], "o")
    store.close()
    http = await serve(Access(token=TOKEN))
    r = await http.get("/favicon.ico")  # asked by browsers on every page, without a login
    assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
    assert (await r.text()).startswith("<svg")
    html = await (await http.get("/now", headers=bearer(TOKEN))).text()
    assert 'rel="icon"' in html
    html = await (await http.get("/minutes", headers=bearer(TOKEN))).text()
    assert "this month, duration" in html and "this month, billable min" in html
    assert 'class="scale" data-minutes="12">12 min<' in html  # the chart's highest day
    assert 'data-minutes="6">6 min<' in html
    html = await (await http.get("/sessions", headers=bearer(TOKEN))).text()
    assert "<th>left</th>" in html
    assert f'<td data-label="left">{left.isoformat(timespec="seconds")[:19]}' in html
    html = await (await http.get("/health", headers=bearer(TOKEN))).text()
    assert 'id="livekit"><span class="badge provisional">not checked</span>' in html
