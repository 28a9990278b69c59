"""POST /usage: model usage posted by agents that do not send it into their room, signed as
LiveKit signs webhooks. Against a real daemon on both databases."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit_server import LiveKitServer, free_tcp_port
from polling import until
from sqlalchemy.orm import Session

from observer.db.schema import AgentUsageRow

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


def signed(server: LiveKitServer, body: str, secret: str | None = None, ttl_s: float = 300) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    tok = api.AccessToken(server.api_key, secret or server.api_secret).with_sha256(digest)
    return tok.with_ttl(timedelta(seconds=ttl_s)).to_jwt()


def usage_body(reported_at: str = "2026-03-02T10:00:00Z", **llm: Any) -> str:
    entry = {"kind": "llm", "provider": "acme", "model": "m-1", "input_tokens": 100, **llm}
    return json.dumps(
        {
            "room_sid": "RM_posted",
            "participant_sid": "PA_posted",
            "participant_identity": "posted-agent",
            "reported_at": reported_at,
            "usage": [entry, {"kind": "stt", "provider": "acme", "model": "ear", "audio_ms": 9000}],
        }
    )


async def post(port: int, body: str, auth: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/usage", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


def kept(obs: Any) -> list[AgentUsageRow]:
    with Session(obs.store.engine) as db:
        return list(db.query(AgentUsageRow).order_by(AgentUsageRow.kind))


async def wait_kept(obs: Any, n: int) -> list[AgentUsageRow]:
    return await until(
        lambda: kept(obs),
        lambda rows: len(rows) == n,
        timeout_s=10,
        what=lambda rows: f"{len(rows)} usage rows, not {n}",
    )


async def test_posted_usage_is_kept_once_and_newer_totals_replace_it(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    obs = await start_observer(livekit_server, db_url, OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}")
    await asyncio.sleep(0.5)
    body = usage_body()
    assert await post(port, body, signed(livekit_server, body)) == (200, "accepted\n")
    assert await post(port, body, signed(livekit_server, body)) == (200, "accepted\n")  # again
    llm, stt = await wait_kept(obs, 2)
    assert (llm.kind, llm.input_tokens, llm.source) == ("llm", 100, "http")
    assert (stt.kind, stt.audio_ms) == ("stt", 9000)
    newer = usage_body("2026-03-02T10:05:00Z", input_tokens=150, output_tokens=20)
    assert (await post(port, newer, signed(livekit_server, newer)))[0] == 200
    older = usage_body("2026-03-02T09:00:00Z", input_tokens=1)  # arrives late: ignored
    assert (await post(port, older, signed(livekit_server, older)))[0] == 200
    await asyncio.sleep(0.5)
    llm, _ = await wait_kept(obs, 2)
    assert (llm.input_tokens, llm.output_tokens, llm.went_backwards) == (150, 20, False)
    m = obs.obs.metrics
    assert m.value("observer_usage_reports_total", {"source": "http", "outcome": "accepted"}) == 4


async def test_bad_usage_requests_are_rejected_and_write_nothing(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}",
        OBSERVER_WEBHOOK_MAX_BYTES="4096",
        OBSERVER_HTTP_TOKEN="a-token-for-the-other-paths",
    )
    await asyncio.sleep(0.5)
    body = usage_body()
    assert (await post(port, body, None))[0] == 401  # unsigned
    assert (await post(port, body, signed(livekit_server, body, "f" * 40)))[0] == 401  # forged
    other = usage_body(input_tokens=5)
    assert (await post(port, body, signed(livekit_server, other)))[0] == 401  # hash mismatch
    assert (await post(port, body, signed(livekit_server, body, ttl_s=-120)))[0] == 401  # expired
    bearer = "Bearer a-token-for-the-other-paths"  # the read token is no signature
    assert (await post(port, body, bearer))[0] == 401
    big = usage_body(model="x" * 5000)
    assert (await post(port, big, signed(livekit_server, big)))[0] == 413  # oversized
    for bad in [
        "this is not json",
        "[1, 2]",
        json.dumps({"room_sid": "RM_x"}),
        usage_body(input_tokens=-1),
        usage_body(input_tokens=1.5),
        usage_body(reported_at="yesterday"),
        usage_body(reported_at="2026-03-02T10:00:00"),  # no offset
        usage_body(kind="video"),
        usage_body(surprise=1),
        usage_body(model=""),
    ]:
        status, text = await post(port, bad, signed(livekit_server, bad))
        assert status == 400 and text.count("\n") == 1, (bad, status, text)
    await asyncio.sleep(0.5)
    assert kept(obs) == []
    m = obs.obs.metrics
    assert (
        m.value("observer_usage_reports_total", {"source": "http", "outcome": "unauthorized"}) == 5
    )
    assert m.value("observer_usage_reports_total", {"source": "http", "outcome": "too_large"}) == 1
    assert m.value("observer_usage_reports_total", {"source": "http", "outcome": "rejected"}) == 10
    assert not obs.task.done()
