"""Webhooks as a second witness, metrics and health, against a real livekit-server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest
from daemon_helpers import Clients, create_room
from livekit import api
from livekit.protocol import models, rtc
from livekit_server import LiveKitServer, free_tcp_port
from postgres_server import PostgresServer

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


def webhook_server(factory, port: int) -> LiveKitServer:  # type: ignore[no-untyped-def]
    return factory(webhook_urls=[f"http://127.0.0.1:{port}/webhook"], departure_timeout=5)


def signed(server: LiveKitServer, body: str, secret: str | None = None) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    tok = api.AccessToken(server.api_key, secret or server.api_secret).with_sha256(digest)
    return tok.to_jwt()


def event_body(event: str = "participant_joined", room_sid: str = "RM_x") -> str:
    from google.protobuf.json_format import MessageToJson

    ev = api.WebhookEvent(
        event=event,
        id=f"EV_{uuid.uuid4().hex[:12]}",
        created_at=int(time.time()),
        room=api.Room(sid=room_sid, name="posted"),
        participant=api.ParticipantInfo(
            sid="PA_posted",
            identity="posted-agent",
            kind=api.ParticipantInfo.Kind.AGENT,
            joined_at_ms=int(time.time() * 1000),
        ),
    )
    return MessageToJson(ev)


async def post(port: int, body: str | bytes, auth: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/webhook+json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


@pytest.mark.compat("webhooks")
async def test_session_missed_while_observer_was_down_is_recorded_from_webhooks(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    server = webhook_server(livekit_server_factory, port)
    c = Clients(server)
    try:
        await create_room(server, "missed")
        await c.join("missed", "user-1")
        first = await start_observer(server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
        await first.wait_watching("missed")
        assert await first.stop() == 0

        connecting = time.time()
        agent = await c.agent("missed", "agent-unseen", agent_name="night-shift")
        joined = time.time()
        await asyncio.sleep(1.5)
        await agent.disconnect()
        left = time.time()

        # back within LiveKit's 30 s webhook retry window
        second = await start_observer(server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
        (row,) = await second.wait_rows(lambda rows: len(rows) == 1 and rows[0].left_at, timeout=40)
        assert row.participant_identity == "agent-unseen"
        assert row.end_source == "webhook"
        assert row.disconnect_reason == "CLIENT_INITIATED"
        assert row.agent_name == "night-shift"
        # the server's ms join time: inside the agent's connect (long under load)
        assert row.join_precision_ms == 1
        assert connecting - 0.1 < row.joined_at.timestamp() < joined + 0.1
        assert row.left_at is not None and abs(row.left_at.timestamp() - left) < 1.5
        events = {e.event for e in second.store.webhook_events()}
        assert {"participant_joined", "participant_left"} <= events
    finally:
        await c.close()


@pytest.mark.compat("webhooks")
async def test_a_brief_stay_that_publishes_nothing_is_recorded_from_webhooks(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    """livekit-server batches the join of a participant that publishes nothing and sends
    it to the others on a 3 s ticker; a leave before the tick replaces the queued join, so
    the room's other participants (the observer too) never hear of that participant."""
    port = free_tcp_port()
    server = webhook_server(livekit_server_factory, port)
    c = Clients(server)
    try:
        await create_room(server, "brief")
        await c.join("brief", "user-1")
        obs = await start_observer(server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
        await obs.wait_watching("brief")
        for i in range(3):
            agent = await c.agent("brief", f"brief-{i}", audio=False)
            await asyncio.sleep(0.3)
            await agent.disconnect()
        rows = await obs.wait_rows(
            lambda rows: len(rows) == 3 and all(r.left_at for r in rows), timeout=20
        )
        assert sorted(r.participant_identity for r in rows) == ["brief-0", "brief-1", "brief-2"]
        assert all(r.duration_ms is not None and r.duration_ms < 2000 for r in rows)
        # each stay had about a one-in-ten chance of meeting the ticker
        assert "webhook" in {r.end_source for r in rows}
    finally:
        await c.close()


async def test_seen_by_both_witnesses_is_one_row_and_metrics_move(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    server = webhook_server(livekit_server_factory, port)
    c = Clients(server)
    try:
        await create_room(server, "both")
        await c.join("both", "user-1")
        obs = await start_observer(server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
        await obs.wait_watching("both")
        m = obs.obs.metrics
        agent = await c.agent("both", "agent-both")
        await obs.wait_rows(lambda rows: len(rows) == 1)
        assert m.value("observer_sessions_open") == 1
        assert m.value("observer_rooms_watched") >= 1
        await agent.disconnect()
        await obs.wait_rows(lambda rows: rows[0].left_at is not None)
        deadline = time.monotonic() + 15
        while m.value("observer_webhooks_total", {"outcome": "accepted"}) < 4:  # started, joins
            assert time.monotonic() < deadline, "webhooks did not arrive"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        (row,) = obs.rows()
        assert row.end_source == "rtc"  # the observer's own ms-precise leave
        assert m.value("observer_sessions_open") == 0
        labels = {"reason": "CLIENT_INITIATED", "end_source": "rtc"}
        assert m.value("observer_sessions_closed_total", labels) == 1
        assert m.value("observer_agent_session_duration_seconds_count") == 1
        assert m.value("observer_leave_to_row_seconds_count") == 1
        assert m.value("observer_room_join_latency_seconds_count") >= 1
        status, text = await get(port, "/metrics")
        assert status == 200 and "observer_sessions_closed_total" in text
        assert await get(port, "/healthz") == (200, "ok\n")
    finally:
        await c.close()


@pytest.mark.databases("sqlite", "postgresql")  # the store's webhook writes
async def test_bad_requests_are_rejected_and_write_nothing(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}",
        OBSERVER_WEBHOOK_MAX_BYTES="4096",
    )
    await asyncio.sleep(0.5)
    body = event_body()
    assert (await post(port, body, None))[0] == 401  # unsigned
    assert (await post(port, body, signed(livekit_server, body, "f" * 40)))[0] == 401  # forged
    other = event_body()
    assert (await post(port, body, signed(livekit_server, other)))[0] == 401  # hash mismatch
    expired = api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
    expired = expired.with_ttl(__import__("datetime").timedelta(seconds=-120))
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    assert (await post(port, body, expired.with_sha256(digest).to_jwt()))[0] == 401
    big = "x" * 10_000
    assert (await post(port, big, signed(livekit_server, big)))[0] == 413  # oversized
    junk = "this is not json"
    assert (await post(port, junk, signed(livekit_server, junk)))[0] == 400  # malformed
    notlk = '{"hello": "world"}'
    assert (await post(port, notlk, signed(livekit_server, notlk)))[0] == 400
    await asyncio.sleep(0.5)
    assert obs.store.webhook_events() == [] and obs.rows() == []
    m = obs.obs.metrics
    assert m.value("observer_webhooks_total", {"outcome": "unauthorized"}) == 4
    assert m.value("observer_webhooks_total", {"outcome": "too_large"}) == 1
    assert m.value("observer_webhooks_total", {"outcome": "malformed"}) == 2
    assert not obs.task.done()


@pytest.mark.databases("sqlite", "postgresql")  # the store's webhook writes
async def test_duplicate_deliveries_are_idempotent(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    obs = await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    body = event_body("participant_joined", room_sid="RM_elsewhere")
    auth = signed(livekit_server, body)
    assert await post(port, body, auth) == (200, "accepted\n")
    assert await post(port, body, auth) == (200, "duplicate\n")
    rows = await obs.wait_rows(lambda rows: len(rows) == 1)
    await asyncio.sleep(0.5)
    assert len(obs.rows()) == 1 and rows[0].participant_sid == "PA_posted"
    assert len(obs.store.webhook_events()) == 1


async def test_readiness_follows_the_database(
    livekit_server: LiveKitServer, postgres_server: PostgresServer, pg_db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    await start_observer(livekit_server, pg_db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    assert await get(port, "/readyz") == (200, "ready\n")
    await asyncio.to_thread(postgres_server.stop)
    try:
        status, text = await get(port, "/readyz")
        assert status == 503 and "database" in text
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await asyncio.to_thread(postgres_server.start)
    deadline = time.monotonic() + 10
    while (await get(port, "/readyz"))[0] != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("company", [False, True], ids=["alone", "with-user"])
async def test_stuck_agent_alert(
    company: bool,
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer,
    clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = f"stuck-{company}"
    await create_room(livekit_server, room, empty_timeout=60, departure_timeout=60)
    if company:
        await clients.join(room, "user-1")
    obs = await start_observer(livekit_server, db_url, OBSERVER_STUCK_AGENT_S="1")
    await obs.wait_watching(room)
    await clients.agent(room, "lonely-agent")
    await obs.wait_rows(lambda rows: len(rows) == 1)
    await asyncio.sleep(2.5)
    m = obs.obs.metrics
    warnings = [r for r in caplog.records if r.getMessage() == "agent alone in room"]
    if company:
        assert m.value("observer_stuck_agents") == 0 and warnings == []
    else:
        assert m.value("observer_stuck_agents") == 1
        assert len(warnings) == 1  # one line per occurrence, not one per tick
        assert m.value("observer_stuck_agent_alerts_total") == 1


async def test_room_started_webhook_joins_without_waiting_for_a_listing(
    livekit_server_factory, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    server = webhook_server(livekit_server_factory, port)
    obs = await start_observer(
        server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}", OBSERVER_POLL_INTERVAL_S="60"
    )
    await asyncio.sleep(1.0)  # the first listing (of no rooms) is done
    created = time.monotonic()
    await create_room(server, "announced")
    await obs.wait_watching("announced", timeout=10)
    assert time.monotonic() - created < 5  # well before the next listing, 60 s away
    assert obs.obs.metrics.value("observer_room_join_latency_seconds_count") == 1


async def test_redelivery_after_a_restart_is_a_duplicate(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    body = event_body("participant_joined", room_sid="RM_elsewhere")
    auth = signed(livekit_server, body)
    first = await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    assert await post(port, body, auth) == (200, "accepted\n")
    await first.wait_rows(lambda rows: len(rows) == 1)
    assert await first.stop() == 0

    second = await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    assert await post(port, body, auth) == (200, "duplicate\n")
    m = second.obs.metrics
    assert m.value("observer_webhooks_total", {"outcome": "duplicate"}) == 1
    assert m.value("observer_webhooks_total", {"outcome": "accepted"}) == 0
    await asyncio.sleep(0.5)
    assert len(second.rows()) == 1 and len(second.store.webhook_events()) == 1


async def get_auth(port: int, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status


async def warned(caplog: pytest.LogCaptureFixture, says: Callable[[str], bool]) -> bool:
    """Whether a warning that `says` so is logged within 5 s."""
    for _ in range(100):
        if any(says(r.getMessage()) for r in caplog.records if r.levelname == "WARNING"):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_beyond_loopback_warns_and_the_token_guards_all_but_webhook_and_healthz(
    livekit_server: LiveKitServer, db_url: str, start_observer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_tcp_port()
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_HTTP_ADDR=f"0.0.0.0:{port}",
        OBSERVER_HTTP_TOKEN="s3cret-scrape-token",
    )
    assert await warned(
        caplog, lambda w: "listens beyond this host" in w and "require the bearer token" in w
    )
    assert not any("s3cret-scrape-token" in r.getMessage() for r in caplog.records)
    for path in ("/metrics", "/readyz"):
        assert await get_auth(port, path, None) == 401
        assert await get_auth(port, path, "wrong") == 401
        assert await get_auth(port, path, "s3cret-scrape-token") == 200
    assert await get_auth(port, "/healthz", None) == 200
    body = event_body("participant_joined", room_sid="RM_elsewhere")
    assert await post(port, body, signed(livekit_server, body)) == (200, "accepted\n")
    assert await post(port, body, None) == (401, "missing Authorization header\n")
    await obs.wait_rows(lambda rows: len(rows) == 1)


async def test_beyond_loopback_without_a_token_warns_that_it_is_open(
    livekit_server: LiveKitServer, db_url: str, start_observer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_tcp_port()
    await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"0.0.0.0:{port}")
    assert await warned(caplog, lambda w: "open to anyone" in w and "OBSERVER_HTTP_TOKEN" in w)
    assert await get_auth(port, "/metrics", None) == 200


async def test_loopback_does_not_warn(
    livekit_server: LiveKitServer, db_url: str, start_observer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_tcp_port()
    await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    assert not any("listens beyond this host" in r.getMessage() for r in caplog.records)


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
    """LiveKit keeps an agent whose connection never completes in the room, never active,
    for a minute, then removes it with JOIN_FAILURE (and, since 1.9.1, sends
    `participant_connection_aborted`): the row says so, and how long the server kept it."""
    port = free_tcp_port()
    server = webhook_server(livekit_server_factory, port)
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
