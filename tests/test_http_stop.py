"""The daemon's HTTP server stops in bounded time, whatever a request in progress waits on."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import time

import aiohttp
import pytest
from livekit import api

from observer.daemon import http, telemetry

pytestmark = pytest.mark.unit

KEY, SECRET = "test-key", "a-test-secret-long-enough-for-hs256-0123456789"


def signed(body: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_stop_does_not_wait_on_a_webhook_that_never_finishes() -> None:
    entered = asyncio.Event()

    async def never(_ev: api.WebhookEvent, _body: str) -> str:
        entered.set()
        await asyncio.Event().wait()  # as a write nothing will ever answer
        return "accepted"

    async def ready() -> list[str]:
        return []

    server = http.WebServer(
        receiver=api.WebhookReceiver(api.TokenVerifier(KEY, SECRET)),
        metrics=telemetry.Metrics(),
        max_body_bytes=1 << 20,
        on_webhook=never,
        readiness=ready,
    )
    port = free_port()
    await server.start("127.0.0.1", port)
    body = json.dumps({"event": "room_started", "id": "EV_1", "room": {"sid": "RM_1"}})

    async def post() -> int:
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"http://127.0.0.1:{port}/webhook",
                data=body,
                headers={"Authorization": signed(body), "Content-Type": "application/webhook+json"},
            ) as resp:
                return resp.status

    posting = asyncio.create_task(post())
    await asyncio.wait_for(entered.wait(), 10)
    started = time.monotonic()
    await server.stop()
    took = time.monotonic() - started
    # aiohttp waits for the request, then for its handler's task: each at most STOP_WAIT_S
    assert took < 2 * http.STOP_WAIT_S + 2, took
    with pytest.raises(aiohttp.ClientError):  # never acknowledged: LiveKit may send it again
        await asyncio.wait_for(posting, 10)
