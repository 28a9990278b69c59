"""Agents built with each agents framework, run as real worker processes and dispatched
through the agent dispatch API: livekit-agents for Python and ``@livekit/agents`` for Node.

Each is recorded as an agent with its agent name, joined and left when the server says, and
its model usage is captured where the framework sends it to the room (livekit-agents 1.5 and
later, to everyone); an agent that sends none is reported by ``observer usage --tokens`` as
"no usage from the room", never as 0 tokens. ``AGENTS_PYTHON`` runs the Python worker with
another release of livekit-agents (``COMPAT_AGENTS=1.0.0 scripts/compat.sh``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import Clients, RunningObserver, create_room
from framework_workers import (
    AgentJoined,
    FrameworkWorker,
    agents_python,
    python_agents_version,
)
from livekit import api
from livekit_server import LiveKitServer
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_agent_states import join_caller

from observer.db.schema import AgentUsageRow, SessionRow
from observer.reports.usage import TOKEN_FIELDS, UsageQuery, compute

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite"), pytest.mark.timeout(240)]

StartObserver = Callable[..., Awaitable[RunningObserver]]


def usage_rows(obs: RunningObserver) -> list[AgentUsageRow]:
    with Session(obs.store.engine) as db:
        return list(db.scalars(select(AgentUsageRow)))


async def server_joined_ms(server: LiveKitServer, room: str, identity: str) -> int:
    lkapi = server.api_client()
    try:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    (p,) = [p for p in listed.participants if p.identity == identity]
    return int(p.joined_at_ms or p.joined_at * 1000)


def token_report(obs: RunningObserver) -> dict[str | None, dict[str, object]]:
    """`observer usage --tokens --by agent` for the last hour, per agent name."""
    now = datetime.now(UTC)
    q = UsageQuery(start=now - timedelta(hours=1), end=now, now=now, by=("agent",), tokens=True)
    return {
        line.groups[0]: {
            "sessions": line.sessions,
            **dict(zip(TOKEN_FIELDS, line.tokens, strict=True)),
        }
        for line in compute(obs.store, q)
    }


async def run_agent(
    worker: FrameworkWorker,
    server: LiveKitServer,
    obs: RunningObserver,
    room: str,
) -> tuple[AgentJoined, list[SessionRow]]:
    """Dispatch the worker's agent, check its row while it is in the room and after it
    left. Returns its rows: one, or more when the observer's own process stood still for a
    while (a loaded machine) and it closed the session at the gap and opened it anew."""
    joined = await worker.dispatch(room)
    assert joined.job_agent_name == worker.agent_name and joined.room == room, joined
    first = (await obs.wait_rows(lambda rows: len(rows) >= 1, timeout=20))[0]
    assert (first.room_sid, first.participant_sid) == (joined.room_sid, joined.sid)
    assert first.participant_kind == "agent"
    # the join time is the server's own
    assert int(first.joined_at.timestamp() * 1000) == await server_joined_ms(
        server, room, joined.identity
    )
    assert joined.connect_started - 0.2 < first.joined_at.timestamp() < joined.connected + 0.2
    left = await worker.leave(room)
    rows = await obs.wait_rows(lambda rows: rows[-1].end_source == "rtc")
    assert {(r.participant_sid, r.participant_kind) for r in rows} == {(joined.sid, "agent")}
    last = rows[-1]
    assert last.left_at is not None
    assert left.leave_requested - 0.2 < last.left_at.timestamp() < left.disconnected + 1.0, (
        left,
        [(r.joined_at, r.left_at, r.end_source) for r in rows],
    )
    assert last.disconnect_reason == "CLIENT_INITIATED"
    return joined, rows


def observed(
    joined: AgentJoined, row: SessionRow, server: LiveKitServer, obs: RunningObserver
) -> None:
    """What the observer made of the agent, appended to the file ``AGENT_MATRIX_OUT`` names
    (``scripts/compat.sh`` prints it as a table): written before the checks, so that a
    release where one fails still says what it saw."""
    path = os.environ.get("AGENT_MATRIX_OUT")
    if not path:
        return
    line = {
        "framework": joined.framework,
        "version": joined.version,
        "server": ".".join(map(str, server.version)),
        "kind": row.participant_kind,
        "agent_name": row.agent_name,
        "name_attributes": sorted(k for k in joined.attributes if "name" in k),
        "usage_rows": len(usage_rows(obs)),
        "report": token_report(obs).get(row.agent_name),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def check_named(joined: AgentJoined, row: SessionRow, server: LiveKitServer, name: str) -> None:
    """The agent's name: from the server's `lk.agent_name` (livekit-server 1.9.2 and later)
    or the framework's `lk.agent.name` (livekit-agents 1.4 and later, @livekit/agents)."""
    attrs = joined.attributes
    server_sets = server.version >= (1, 9, 2)
    assert (attrs.get("lk.agent_name") == name) == server_sets, attrs
    expected = name if server_sets or attrs.get("lk.agent.name") == name else None
    assert row.agent_name == expected, (attrs, row.agent_name)


async def room_with_caller(
    server: LiveKitServer, db_url: str, start_observer: StartObserver, clients: Clients
) -> tuple[str, RunningObserver]:
    room = f"frameworks-{uuid.uuid4().hex[:8]}"
    await create_room(server, room)
    # a caller with a microphone who subscribes to the agent: a voice agent links to it
    await join_caller(clients, room, "caller-1")
    obs = await start_observer(server, db_url)
    await obs.wait_watching(room)
    return room, obs


@pytest.mark.compat("node-agent")
async def test_node_agent_is_recorded_without_usage(
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer: StartObserver,
    clients: Clients,
    tmp_path: Path,
) -> None:
    room, obs = await room_with_caller(livekit_server, db_url, start_observer, clients)
    async with FrameworkWorker.node(livekit_server, "node-desk", tmp_path / "worker") as worker:
        joined, rows = await run_agent(worker, livekit_server, obs, room)
    row = rows[0]
    observed(joined, row, livekit_server, obs)
    assert joined.framework == "@livekit/agents" and joined.version.startswith("1.")
    # the framework sets its own name attribute on every release we pin
    assert joined.attributes.get("lk.agent.name") == "node-desk"
    check_named(joined, row, livekit_server, "node-desk")
    # no model session: nothing sent, nothing kept, and the report says so
    assert usage_rows(obs) == []
    report = token_report(obs)
    assert report[row.agent_name]["no_usage_sessions"] == len(rows)
    assert report[row.agent_name]["no_usage_reported"] is True
    assert report[row.agent_name]["input_tokens"] is None


@pytest.mark.compat("python-agent")
async def test_python_agent_is_recorded_with_its_usage(
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer: StartObserver,
    clients: Clients,
    tmp_path: Path,
) -> None:
    version = python_agents_version(agents_python())
    # the session host (usage to the room) exists from 1.5; our local models need 1.8's API
    voice = version >= (1, 8)
    room, obs = await room_with_caller(livekit_server, db_url, start_observer, clients)
    async with FrameworkWorker.python(
        livekit_server, "python-desk", tmp_path / "worker", voice=voice
    ) as worker:
        joined, rows = await run_agent(worker, livekit_server, obs, room)
    row = rows[0]
    observed(joined, row, livekit_server, obs)
    assert joined.framework == "livekit-agents"
    assert tuple(int(p) for p in joined.version.split(".")[:2]) == version[:2]
    check_named(joined, row, livekit_server, "python-desk")
    report = token_report(obs)[row.agent_name]
    if voice:
        (usage,) = usage_rows(obs)
        assert usage.kind == "tts" and usage.characters == joined.usage["tts_characters"]
        assert (usage.room_sid, usage.participant_sid) == (joined.room_sid, joined.sid)
        assert report["usage_sessions"] == 1
        # a session split at a gap is one agent session: its usage belongs to every piece
        assert report["no_usage_sessions"] == 0
        assert report["no_usage_reported"] is False
        assert report["characters"] == joined.usage["tts_characters"]
    else:
        assert usage_rows(obs) == []
        assert report["usage_sessions"] == 0 and report["no_usage_sessions"] == len(rows)
        assert report["no_usage_reported"] is True and report["characters"] is None
