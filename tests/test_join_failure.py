"""An agent whose connection never completes: LiveKit keeps it in the room, never active,
for a minute, then removes it with JOIN_FAILURE (and, since 1.9.1, sends
`participant_connection_aborted`). The row says so, and how long the server kept it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from daemon_helpers import Clients, create_room
from livekit.protocol import models, rtc
from livekit_server import LiveKitServer, free_tcp_port

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


async def signal_only_stay(server: LiveKitServer, room: str, identity: str) -> tuple[float, float]:
    """Join by the signal connection alone, answer nothing of the media offer, and wait for
    the server's leave. Returns when the join was asked for and when the leave came."""
    token = server.token(identity, room, kind="agent")
    url = f"{server.ws_url}/rtc?access_token={token}&auto_subscribe=1&sdk=python&protocol=15"
    asked = time.time()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        while True:
            msg = await asyncio.wait_for(ws.receive(), 90)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            response = rtc.SignalResponse.FromString(msg.data)
            if response.WhichOneof("message") == "leave":
                assert response.leave.reason == models.DisconnectReason.JOIN_FAILURE
                return asked, time.time()


async def test_an_agent_that_never_connects_stands_until_the_server_removes_it(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    server = livekit_server_factory(webhook_urls=[f"http://127.0.0.1:{port}/webhook"])
    c = Clients(server)
    try:
        await create_room(server, "half")
        await c.join("half", "user-1")
        obs = await start_observer(server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
        await obs.wait_watching("half")
        asked, removed = await signal_only_stay(server, "half", "agent-half")
        (row,) = await obs.wait_rows(lambda rows: len(rows) == 1 and rows[0].left_at, timeout=20)
    finally:
        await c.close()
    assert row.participant_identity == "agent-half" and row.participant_kind == "agent"
    assert row.disconnect_reason == "JOIN_FAILURE"
    assert row.left_at is not None and row.duration_ms is not None
    assert asked - 0.3 < row.joined_at.timestamp() < asked + 1.0
    # LiveKit's own timer: a minute after the join (less up to a second where the leave
    # is the webhook's, stamped to the second)
    assert 58_800 < row.duration_ms < 62_500, row.duration_ms
    # the leave reaches the observer on the server's 3 s update ticker; the webhook, stamped
    # to the second, stands in for news that late
    late_s = row.left_at.timestamp() - removed
    assert -1.3 < late_s < 1.5, (late_s, row.end_source)
