"""Newer protocol values against a real livekit-server: what the server lets through, and
what the observer keeps of values it has no word for."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Clients, create_room
from livekit import api, rtc
from livekit_server import LiveKitServer, free_tcp_port
from test_webhooks import post, signed

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


async def listed_kinds(server: LiveKitServer, room: str) -> dict[str, int]:
    lkapi = server.api_client()
    try:
        resp = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return {p.identity: p.kind for p in resp.participants if not p.permission.hidden}
    finally:
        await lkapi.aclose()


async def test_the_server_passes_named_kinds_and_makes_unknown_claims_standard(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    """A token's kind claim is a name (livekit/protocol auth/grants.go): the server maps a
    name it does not know to STANDARD, so no token can make it send an unknown number."""
    c = Clients(livekit_server)
    try:
        await create_room(livekit_server, "kinds")
        obs = await start_observer(
            livekit_server, db_url, OBSERVER_TRACK_KINDS="standard,7,bridge,9"
        )
        await obs.wait_watching("kinds")
        claims: dict[str, Any] = {"conn": "connector", "brid": "bridge", "odd": "robot"}
        claims["num"] = "9"
        for identity, claim in claims.items():
            await c.join("kinds", identity, kind=claim)
        listed = await listed_kinds(livekit_server, "kinds")
        assert listed == {"conn": 7, "brid": 8, "odd": 0, "num": 0}
        watcher = c.rooms[0]
        await asyncio.sleep(3.5)  # joins of non-publishers reach others on a 3 s tick
        seen = {p.identity: p.kind for p in watcher.remote_participants.values()}
        assert seen["brid"] == rtc.ParticipantKind.PARTICIPANT_KIND_BRIDGE
        rows = await obs.wait_rows(lambda rows: len(rows) == 4, timeout=15)
        assert {r.participant_identity: r.participant_kind for r in rows} == {
            "conn": "connector",
            "brid": "bridge",
            "odd": "standard",
            "num": "standard",
        }
        assert {r.join_precision_ms for r in rows} == {1}  # v1.13.5 gives milliseconds
        m = obs.obs.metrics
        assert m.value("observer_unknown_values_total", {"field": "participant_kind"}) == 0
    finally:
        await c.close()


async def test_webhooks_with_unknown_events_and_values_are_kept_and_counted(
    livekit_server: LiveKitServer, db_url: str, start_observer
) -> None:
    port = free_tcp_port()
    # the room the webhooks name exists on no server: a listing in the middle of the
    # deliveries would settle its first session as gone before its leave arrives
    obs = await start_observer(
        livekit_server,
        db_url,
        OBSERVER_HTTP_ADDR=f"127.0.0.1:{port}",
        OBSERVER_TRACK_KINDS="9",
        OBSERVER_POLL_INTERVAL_S="60",
    )
    await asyncio.sleep(0.5)
    now_ms = int(time.time() * 1000)
    participant = {"sid": "PA_newer", "identity": "newer", "kind": 9, "joinedAtMs": str(now_ms)}
    room = {"sid": "RM_newer", "name": "newer"}

    def body(event: str, **extra: Any) -> str:
        ev = {"event": event, "id": f"EV_{event}", "createdAt": str(now_ms // 1000), **extra}
        return json.dumps({"room": room, **ev})

    job = body("agent_job_started", agentJob={"id": "AJ_1"})
    assert await post(port, job, signed(livekit_server, job)) == (200, "accepted\n")
    ended = body("agent_job_ended", agentJob={"id": "AJ_1"})
    assert await post(port, ended, signed(livekit_server, ended)) == (200, "accepted\n")
    detailed = {**participant, "kindDetails": [99, "CLOUD_AGENT"]}
    joined = body("participant_joined", participant=detailed)
    assert await post(port, joined, signed(livekit_server, joined)) == (200, "accepted\n")
    # as a server before 1.8.4 sends it: the join time in whole seconds only
    old = {"sid": "PA_older", "identity": "older", "kind": 9, "joinedAt": str(now_ms // 1000)}
    older = body("participant_joined", participant=old, id="EV_older")
    assert await post(port, older, signed(livekit_server, older)) == (200, "accepted\n")
    odd = {**participant, "disconnectReason": 99, "kindDetails": [99, "CLOUD_AGENT"]}
    left = body("participant_left", participant=odd)
    assert await post(port, left, signed(livekit_server, left)) == (200, "accepted\n")

    def newer_left(rs: list[Any]) -> bool:
        return len(rs) == 2 and any(r.participant_identity == "newer" and r.left_at for r in rs)

    rows = await obs.wait_rows(newer_left, timeout=10)
    row, old_row = sorted(rows, key=lambda r: r.participant_identity != "newer")
    assert row.participant_kind == "kind_9" and old_row.participant_kind == "kind_9"
    assert row.disconnect_reason == "REASON_99"
    assert row.participant_kind_details == "DETAIL_99,CLOUD_AGENT"
    assert (row.join_precision_ms, old_row.join_precision_ms) == (1, 1000)
    assert old_row.joined_at.timestamp() == now_ms // 1000
    stored = {e.event for e in obs.store.webhook_events()}
    assert stored == {
        "agent_job_started",
        "agent_job_ended",
        "participant_joined",
        "participant_left",
    }
    m = obs.obs.metrics
    assert m.value("observer_unknown_values_total", {"field": "webhook_event"}) == 2
    assert m.value("observer_unknown_values_total", {"field": "disconnect_reason"}) == 1
    assert m.value("observer_unknown_values_total", {"field": "kind_detail"}) == 2
    assert m.value("observer_unknown_values_total", {"field": "participant_kind"}) == 3
    assert not obs.task.done()


def test_the_daemon_logs_the_release_once_at_start(
    livekit_server: LiveKitServer, sqlite_url: str, tmp_path: Path
) -> None:
    from test_start_errors import env_for

    env = env_for(
        livekit_server.ws_url, livekit_server.api_key, livekit_server.api_secret, sqlite_url
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "observer", "run", "--migrate"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "observer started" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    (release,) = [x for x in lines if "livekit release" in x]
    assert "version=1.13.5" in release and f"url={livekit_server.ws_url}" in release
    assert "join times in milliseconds (joined_at_ms): yes" in release
