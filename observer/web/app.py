"""The read-only page: live agents, minutes, sessions, reconcile and health (aiohttp and
Jinja2). Served by the daemon on its HTTP port, or alone by `observer web`.

No visitor writes: every route is a GET except the login form, which only sets a cookie.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import markupsafe
from aiohttp import web

from observer.core.protocol_values import kind_setting
from observer.core.times import OutOfRange, iso, parse_iso, utcnow
from observer.core.vocab import KINDS
from observer.db.reads import SessionFilter
from observer.db.store import Busy, Store
from observer.db.usage.spec import has_control, usable_key
from observer.reports.sessions import human_duration
from observer.reports.usage import is_grouping
from observer.web import export, views
from observer.web.guard import COOKIE, Access, cookie_value, retry_after, same

HERE = Path(__file__).parent
PAGES = ("now", "minutes", "sessions", "reconcile", "health")
Readiness = Callable[[], Awaitable[list[str]]]


def _fmt_time(v: datetime | None) -> str:
    return iso(v, "seconds") if v else ""


def _fmt_age(seconds: float | None) -> str:
    return "" if seconds is None else human_duration(round(seconds * 1000))


class WebPage:
    """The page's routes, on an app of the daemon's or of its own."""

    def __init__(
        self,
        store: Store,
        *,
        stuck_after_s: float,
        dead_after_s: float,
        access: Access,
        readiness: Readiness | None = None,
        livekit_url: str | None = None,
        refresh_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._stuck_after_s = stuck_after_s
        self._dead_after_s = dead_after_s
        self._access = access
        self._readiness = readiness
        self._livekit_url = livekit_url
        self._refresh_s = refresh_s
        self._clock = clock
        self._cache = views.TtlCache(60.0, spawn=store.submit)
        self.warmed: asyncio.Future[None] | None = None  # the start-up's computation
        self._stopping = False
        self._rows: dict[tuple[Any, ...], str] = {}
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._env.filters["time"] = _fmt_time
        self._env.filters["age"] = _fmt_age
        self._env.filters["duration"] = human_duration

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        for name in PAGES:
            app.router.add_get(f"/{name}", getattr(self, f"_{name}"))
        app.router.add_get("/now/live", self._now_live)
        app.router.add_get("/sessions.csv", self._sessions_export)
        app.router.add_get("/sessions.json", self._sessions_export)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/favicon.ico", self._favicon)
        app.router.add_static("/static/", HERE / "static", name="static", append_version=True)
        app.on_startup.append(self._warm)
        app.on_cleanup.append(self._stop_warming)
        app.middlewares.append(busy_middleware)

    # ---- helpers ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A database read, on one of the page's own threads (Busy: all stayed busy)."""
        return await self._store.run(fn, *args)

    def _page(self, template: str, request: web.Request, **values: Any) -> web.Response:
        html = self._env.get_template(template).render(
            page=template.removesuffix(".html"),
            pages=PAGES,
            now=self._clock(),
            static=lambda name: str(request.app.router["static"].url_for(filename=name)),
            logout=self._access.token is not None,
            **values,
        )
        return web.Response(text=html, content_type="text/html")

    # ---- views ------------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/now")

    async def _now(self, request: web.Request) -> web.Response:
        now = self._clock()
        rooms = await self._run(views.now_view, self._store, now, self._stuck_after_s)
        return self._page(
            "now.html",
            request,
            rooms=rooms,
            stuck_after_s=self._stuck_after_s,
            refresh_ms=round(self._refresh_s * 1000),
        )

    async def _now_live(self, request: web.Request) -> web.Response:
        """The live rooms alone, for the page to swap in every few seconds; 304 when only
        the clock moved (the page counts the seconds itself)."""
        now = self._clock()
        rooms = await self._run(views.now_view, self._store, now, self._stuck_after_s)
        version = f'"{views.now_version(rooms)}"'
        headers = {"ETag": version}
        if request.headers.get("If-None-Match") == version:
            return web.Response(status=304, headers=headers)
        html = self._env.get_template("now_rooms.html").render(
            rooms=rooms,
            now=now,
            stuck_after_s=self._stuck_after_s,
            rows=markupsafe.Markup("".join(self._live_rows(rooms))),
        )
        return web.Response(text=html, content_type="text/html", headers=headers)

    def _live_rows(self, rooms: list[views.NowRoom]) -> list[str]:
        """Each agent's row, rendered once for as long as it looks the same (the page fills
        in the seconds): a refresh after a few joins and leaves renders only those."""
        row = self._env.get_template("now_row.html")
        rendered: dict[tuple[Any, ...], str] = {}
        out = []
        for room in rooms:
            for a in room.agents:
                key = (
                    room.sid,
                    room.name,
                    room.company,
                    a.identity,
                    a.agent_name,
                    a.joined_at,
                    a.alone_since,
                    a.stuck,
                )
                html = self._rows.get(key)
                if html is None:
                    html = row.render(
                        room=room,
                        a=replace(a, standing_s=0.0, alone_s=None if a.alone_s is None else 0.0),
                        ages=False,
                    )
                rendered[key] = html
                out.append(html)
        self._rows = rendered
        return out

    async def _minutes(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "agent").strip() or "agent"
        if by in ("day", "month") or not is_grouping(by):
            _name, colon, key = by.partition(":")
            if colon and not usable_key(key):
                raise web.HTTPBadRequest(text=f"by: a KEY holds no control characters: {by!r}\n")
            raise web.HTTPBadRequest(text=f"unknown grouping {by!r}\n")
        now = self._clock()
        chart, table = await self._run(self._minutes_data, by, now)
        choices = await self._run(self._grouping_choices)
        return self._page("minutes.html", request, chart=chart, table=table, by=by, choices=choices)

    def _minutes_data(self, by: str, now: datetime) -> tuple[Any, Any]:
        """The chart and the month table, true now: kept while the data they were computed
        from stays the same (and no agent session is open), else computed again."""
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        version = self._store.usage_version(kind=views.KIND, rooms=by.startswith("room-metadata"))
        data: tuple[Any, Any] = self._cache.current(
            ("minutes", by, today.date()),
            lambda: views.minutes_view(self._store, self._clock(), by),
            version,
        )
        return data

    def _grouping_choices(self) -> list[str]:
        choices: list[str] = self._cache.get(
            ("groupings",), lambda: views.grouping_choices(self._store)
        )
        return choices

    async def _warm_all(self) -> None:
        """The minutes views by agent, then by every key the page offers, one at a time
        (until the app stops), each on a page thread when one is free: visits come between."""
        await self._store.run_queued(self._minutes_data, "agent", self._clock())
        for by in views.worth_warming(await self._store.run_queued(self._grouping_choices)):
            if self._stopping:
                return
            await self._store.run_queued(self._minutes_data, by, self._clock())

    async def _warm(self, _app: web.Application) -> None:
        """Start computing the minutes views the page offers, so that a visit finds them
        (each takes about a second over a million sessions)."""
        self.warmed = asyncio.ensure_future(self._warm_all())
        self.warmed.add_done_callback(lambda t: t.exception())  # a failure shows at the visit

    async def _stop_warming(self, _app: web.Application) -> None:
        """The store is closed after the app: let the computation under way end first."""
        self._stopping = True
        if self.warmed is not None:
            await asyncio.wait([self.warmed])

    def _session_filter(self, request: web.Request, limit: int | None) -> SessionFilter:
        q = request.query
        given = q.get("kind", "").strip() or None
        kind = None if given is None else kind_setting(given)
        if given is not None and kind is None:
            raise web.HTTPBadRequest(text=f"unknown kind {given!r}\n")
        state = q.get("state", "").strip() or None
        if state not in (None, "open", "closed"):
            raise web.HTTPBadRequest(text=f"unknown state {state!r}\n")

        def when(name: str) -> datetime | None:
            raw = q.get(name, "").strip()
            if not raw:
                return None
            try:
                return parse_iso(raw)
            except OutOfRange as exc:
                raise web.HTTPBadRequest(text=f"{name}: {raw!r} is {exc}\n") from None
            except ValueError:
                raise web.HTTPBadRequest(text=f"{name}: not an ISO 8601 time: {raw!r}\n") from None

        for name, raw in q.items():
            if has_control(raw):
                raise web.HTTPBadRequest(text=f"{name}: control characters are not allowed\n")

        return SessionFilter(
            room=q.get("room", "").strip() or None,
            identity=q.get("identity", "").strip() or None,
            agent_name=q.get("agent", "").strip() or None,
            kind=kind,
            since=when("since"),
            until=when("until"),
            state=state,  # type: ignore[arg-type]
            limit=limit,
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        f = self._session_filter(request, views.SESSIONS_SHOWN)
        rows = await self._run(views.sessions_view, self._store, f)
        query = {k: v for k, v in request.query.items() if v}
        return self._page(
            "sessions.html",
            request,
            rows=rows,
            f=request.query,
            kinds=KINDS,
            shown=views.SESSIONS_SHOWN,
            export=urlencode(query),
            export_limit=export.LIMIT,
            export_limit_max=export.LIMIT_MAX,
        )

    async def _sessions_export(self, request: web.Request) -> web.StreamResponse:
        fmt = "csv" if request.path.endswith(".csv") else "json"
        f = self._session_filter(request, None)
        return await export.sessions_export(request, self._store, f, fmt)

    async def _reconcile(self, request: web.Request) -> web.Response:
        view = await self._run(views.reconcile_view, self._store)
        return self._page("reconcile.html", request, periods=view.periods, exports=view.exports)

    async def _health(self, request: web.Request) -> web.Response:
        readiness = await self._readiness() if self._readiness is not None else None
        health = await self._run(
            views.health_view,
            self._store,
            self._clock(),
            self._dead_after_s,
            readiness,
            self._livekit_url,
        )
        return self._page("health.html", request, health=health)

    async def _favicon(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            HERE / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"}
        )

    # ---- login ------------------------------------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request)

    def _login_page(
        self, request: web.Request, *, status: int = 200, failed: str = ""
    ) -> web.Response:
        response = self._page(
            "login.html", request, failed=failed, needed=self._access.token is not None
        )
        response.set_status(status)
        return response

    async def _login(self, request: web.Request) -> web.Response:
        token = self._access.token
        if token is None:
            raise web.HTTPSeeOther("/now")
        wait_s = self._access.too_soon(request)
        if wait_s:
            response = self._login_page(
                request,
                status=429,
                failed=f"Too many wrong tokens from here: try again in {retry_after(wait_s)} s.",
            )
            response.headers["Retry-After"] = retry_after(wait_s)
            return response
        form = await request.post()
        if not same(str(form.get("token", "")), token):
            self._access.wrong_guess(request, "login")
            return self._login_page(request, status=401, failed="That is not the token.")
        self._access.limiter.succeeded(self._access.client(request))
        response = web.HTTPSeeOther("/now")
        response.set_cookie(
            COOKIE,
            cookie_value(token),
            httponly=True,
            samesite="Strict",
            secure=request.secure or self._access.trust_proxy,
            max_age=7 * 86400,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        """Forget the login cookie (the token stays valid: change it to lock others out)."""
        response = web.HTTPSeeOther("/login")
        response.del_cookie(
            COOKIE, samesite="Strict", secure=request.secure or self._access.trust_proxy
        )
        raise response


@web.middleware
async def busy_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """A page request that found every page thread busy for as long as it may wait: 503,
    to be asked again (recording never waits for these threads)."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except Busy:
        return web.Response(
            status=503,
            text="the page is busy; try again in a few seconds\n",
            headers={"Retry-After": "5"},
        )
