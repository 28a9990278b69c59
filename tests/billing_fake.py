"""A small billing system for the export's tests: it takes events the way each target sends
them, deduplicates them by identifier as the real ones do, and can be put into a fault
state for its next requests. It runs on its own thread and event loop, so that a test can
call `observer export` (which runs its own loop) beside it.

- `POST /events`: the http target's JSON, signature checked; dedup by `id`
- `POST /v1/billing/meter_events`: Stripe's form body; dedup by `identifier`
- `POST /openmeter/api/v1/events`: a CloudEvent (structured JSON); dedup by source and id
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from aiohttp import web
from livekit_server import free_tcp_port

from observer.export.http_target import verify

# What a fault makes the next request get: "500", "429" (Retry-After: 0), "400" (refused),
# "slow" (the event is kept, and the answer comes after the client gave up waiting)
SLOW_S = 1.5


class BillingFake:
    def __init__(self, secret: str = "", *, port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_tcp_port()
        self.events: dict[str, dict[str, Any]] = {}  # dedup key -> event as received
        self.requests = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.faults: collections.deque[str] = collections.deque()
        self.stall_after: int | None = None  # requests after this many never get answered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- what the tests read -------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str, str, str], Decimal]:
        """Quantity per (customer, agent, day, kind), as the events say."""
        out: dict[tuple[str, str, str, str], Decimal] = collections.defaultdict(Decimal)
        for e in self.events.values():
            k = (e["customer"], e["agent"], e["day"], e["kind"])
            out[k] += Decimal(e["quantity"])
        return dict(out)

    # ---- the server ----------------------------------------------------------------------

    async def _fault(self) -> web.StreamResponse | None:
        self.requests += 1
        if self.stall_after is not None and self.requests > self.stall_after:
            await asyncio.get_running_loop().run_in_executor(None, self._release.wait)
            return web.Response(status=503, text="stalled")
        fault = self.faults.popleft() if self.faults else None
        if fault == "500":
            return web.Response(status=500, text="internal error")
        if fault == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
        if fault == "400":
            return web.Response(status=400, text="customer unknown")
        if fault == "slow":
            return None  # kept below, answered late
        return web.Response(status=200)

    async def _keep(
        self, key: str, event: dict[str, Any], answer: web.StreamResponse | None
    ) -> web.StreamResponse:
        if key in self.events:
            self.duplicates += 1
        else:
            self.events[key] = event
        if answer is None:
            await asyncio.sleep(SLOW_S)
            return web.json_response({"ok": True})
        return web.json_response({"ok": True, "duplicate": self.duplicates > 0})

    async def _http(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("X-Observer-Signature", "")
        if not verify(self.secret, header, body, now=time.time()):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        answer = await self._fault()
        if answer is not None and answer.status != 200:
            return answer
        e = json.loads(body)
        event = {
            "customer": e["customer"],
            "agent": e["agent"],
            "day": e["period_start"][:10],
            "kind": e["kind"],
            "quantity": e["quantity"],
            "raw": e,
        }
        return await self._keep(e["id"], event, answer)

    async def _stripe(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        answer = await self._fault()
        if answer is not None and answer.status != 200:
            return answer
        ident = str(form["identifier"])
        day = time.strftime("%Y-%m-%d", time.gmtime(int(str(form["timestamp"]))))
        event = {
            "customer": str(form["payload[stripe_customer_id]"]),
            "agent": "",
            "day": day,
            "kind": str(form["event_name"]),
            "quantity": str(form["payload[value]"]),
            "raw": dict(form),
        }
        await self._keep(ident, event, answer)
        return web.json_response(
            {"object": "billing.meter_event", "identifier": ident, "event_name": event["kind"]}
        )

    async def _openmeter(self, request: web.Request) -> web.StreamResponse:
        e = json.loads(await request.read())
        answer = await self._fault()
        if answer is not None and answer.status != 200:
            return answer
        data = e["data"]
        event = {
            "customer": e["subject"],
            "agent": data["agent"],
            "day": data["period_start"][:10],
            "kind": data["kind"],
            "quantity": data["quantity"],
            "raw": e,
        }
        await self._keep(f"{e['source']}\x1f{e['id']}", event, answer)
        return web.Response(status=204)

    def start(self) -> None:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/events", self._http)
            app.router.add_post("/v1/billing/meter_events", self._stripe)
            app.router.add_post("/openmeter/api/v1/events", self._openmeter)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._release.clear()
        self._thread = threading.Thread(target=serve, name="billing-fake", daemon=True)
        self._thread.start()
        assert started.wait(10), "the billing fake did not start"

    def stop(self) -> None:
        self._release.set()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None


@contextmanager
def billing_fake(secret: str = "", *, port: int | None = None) -> Iterator[BillingFake]:
    fake = BillingFake(secret, port=port)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
