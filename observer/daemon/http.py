"""The daemon's HTTP server: /webhook, /usage, /metrics, /healthz, /readyz (aiohttp).

/webhook and /usage are authenticated by a signature as LiveKit signs webhooks, and
/healthz says only that the process lives; every other path requires the bearer token when
one is set (OBSERVER_HTTP_TOKEN). The rules: `observer.web.guard`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from livekit import api
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observer.core.agent_usage import UsageReport
from observer.core.times import utcnow
from observer.daemon.telemetry import Metrics
from observer.daemon.webhooks import Rejected, authenticate, usage_report, verify
from observer.web.guard import Access, guarded_app

log = logging.getLogger(__name__)

STOP_WAIT_S = 3.0
OPEN_PATHS = frozenset({"/webhook", "/usage", "/healthz"})  # signed; says only "alive"


class WebServer:
    def __init__(
        self,
        *,
        receiver: api.WebhookReceiver,
        metrics: Metrics,
        max_body_bytes: int,
        on_webhook: Callable[[api.WebhookEvent, str], Awaitable[str]],
        on_usage: Callable[[UsageReport], None] = lambda _r: None,
        readiness: Callable[[], Awaitable[list[str]]],
        access: Access | None = None,
        page: Callable[[web.Application], None] | None = None,
    ) -> None:
        self._receiver = receiver
        self._metrics = metrics
        self._max = max_body_bytes
        self._on_webhook = on_webhook
        self._on_usage = on_usage
        self._readiness = readiness
        self._access = access or Access(open_paths=OPEN_PATHS)
        self._page = page
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = guarded_app(self._access, client_max_size=self._max)
        app.router.add_post("/webhook", self._webhook)
        app.router.add_post("/usage", self._usage)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/readyz", self._readyz)
        if self._page is not None:
            self._page(app)
        return app

    async def start(self, host: str, port: int) -> None:
        # a stop waits this long (twice: the request, then its handler) for requests in
        # progress (a webhook being stored, an export streamed), then ends them: the
        # daemon's stop never waits on a client or on a write that will not come
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=STOP_WAIT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        log.info("http server listening", extra={"host": host, "port": port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max:
            raise Rejected(413, "too_large", "body too large")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Rejected(413, "too_large", "body too large") from None

    async def _usage(self, request: web.Request) -> web.Response:
        """Usage totals posted by an agent that does not send them into its room."""
        try:
            body = await self._body(request)
            text = authenticate(self._receiver, body, request.headers.get("Authorization"))
            report = usage_report(text, utcnow())
        except Rejected as exc:
            outcome = "rejected" if exc.outcome == "malformed" else exc.outcome
            self._metrics.usage_reports.labels(source="http", outcome=outcome).inc()
            log.warning(
                "usage report rejected",
                extra={"status": exc.status, "why": str(exc), "remote": request.remote},
            )
            return web.Response(status=exc.status, text=str(exc) + "\n")
        self._on_usage(report)
        self._metrics.usage_reports.labels(source="http", outcome="accepted").inc()
        return web.Response(text="accepted\n")

    async def _webhook(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            event = verify(self._receiver, body, request.headers.get("Authorization"))
        except Rejected as exc:
            self._metrics.webhooks.labels(outcome=exc.outcome).inc()
            log.warning(
                "webhook rejected",
                extra={"status": exc.status, "why": str(exc), "remote": request.remote},
            )
            return web.Response(status=exc.status, text=str(exc) + "\n")
        outcome = await self._on_webhook(event, body.decode())
        self._metrics.webhooks.labels(outcome=outcome).inc()
        return web.Response(text=outcome + "\n")

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _readyz(self, _request: web.Request) -> web.Response:
        problems = await self._readiness()
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ready\n")
