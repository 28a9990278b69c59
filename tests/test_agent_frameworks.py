"""Agents built with each agents framework, run as real worker processes and dispatched
through the agent dispatch API: livekit-agents for Python and ``@livekit/agents`` for Node.

Each is recorded as an agent with its agent name, joined and left when the server says, and
its model usage is captured where the framework sends it to the room (livekit-agents 1.5 and
later, to everyone); an agent that sends none is reported by ``observer usage --tokens`` as
"no usage from the room", never as 0 tokens. ``AGENTS_PYTHON`` runs the Python worker with
another release of livekit-agents (``COMPAT_AGENTS=1.0.0 scripts/compat.sh``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

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

from observer.db.schema import AgentUsageRow
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
) -> tuple[AgentJoined, object]:
    """Dispatch the worker's agent, check its row while it is in the room and after it left."""
    joined = await worker.dispatch(room)
    assert joined.job_agent_name == worker.agent_name and joined.room == room, joined
    (row,) = await obs.wait_rows(lambda rows: len(rows) == 1, timeout=20)
    assert (row.room_sid, row.participant_sid) == (joined.room_sid, joined.sid)
    assert row.left_at is None and row.participant_kind == "agent"
    # the join time is the server's own
    assert int(row.joined_at.timestamp() * 1000) == await server_joined_ms(
        server, room, joined.identity
    )
    assert joined.connect_started - 0.2 < row.joined_at.timestamp() < joined.connected + 0.2
    left = await worker.leave(room)
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert row.left_at is not None
    assert left.leave_requested - 0.2 < row.left_at.timestamp() < left.disconnected + 1.0, (
        left,
        row.left_at,
    )
    assert row.disconnect_reason == "CLIENT_INITIATED" and row.end_source == "rtc"
    return joined, row


def check_named(joined: AgentJoined, row: object, server: LiveKitServer, name: str) -> None:
    """The agent's name: from the server's `lk.agent_name` (livekit-server 1.9.2 and later)
    or the framework's `lk.agent.name` (livekit-agents 1.4 and later, @livekit/agents)."""
    attrs = joined.attributes
    server_sets = server.version >= (1, 9, 2)
    assert (attrs.get("lk.agent_name") == name) == server_sets, attrs
    expected = name if server_sets or attrs.get("lk.agent.name") == name else None
    assert row.agent_name == expected, (attrs, row.agent_name)  # type: ignore[attr-defined]


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
    livekit_server: LiveKitServer, db_url: str, start_observer: StartObserver, clients: Clients
) -> None:
    room, obs = await room_with_caller(livekit_server, db_url, start_observer, clients)
    async with FrameworkWorker.node(livekit_server, "node-desk") as worker:
        joined, row = await run_agent(worker, livekit_server, obs, room)
    assert joined.framework == "@livekit/agents" and joined.version.startswith("1.")
    # the framework sets its own name attribute on every release we pin
    assert joined.attributes.get("lk.agent.name") == "node-desk"
    check_named(joined, row, livekit_server, "node-desk")
    # no model session: nothing sent, nothing kept, and the report says so
    assert usage_rows(obs) == []
    report = token_report(obs)
    assert report[row.agent_name]["no_usage_sessions"] == 1  # type: ignore[attr-defined]
    assert report[row.agent_name]["no_usage_reported"] is True  # type: ignore[attr-defined]
    assert report[row.agent_name]["input_tokens"] is None  # type: ignore[attr-defined]


@pytest.mark.compat("python-agent")
async def test_python_agent_is_recorded_with_its_usage(
    livekit_server: LiveKitServer, db_url: str, start_observer: StartObserver, clients: Clients
) -> None:
    version = python_agents_version(agents_python())
    # the session host (usage to the room) exists from 1.5; our local models need 1.8's API
    voice = version >= (1, 8)
    room, obs = await room_with_caller(livekit_server, db_url, start_observer, clients)
    async with FrameworkWorker.python(livekit_server, "python-desk", voice=voice) as worker:
        joined, row = await run_agent(worker, livekit_server, obs, room)
    assert joined.framework == "livekit-agents"
    assert tuple(int(p) for p in joined.version.split(".")[:2]) == version[:2]
    check_named(joined, row, livekit_server, "python-desk")
    report = token_report(obs)[row.agent_name]  # type: ignore[attr-defined]
    if voice:
        (usage,) = usage_rows(obs)
        assert usage.kind == "tts" and usage.characters == joined.usage["tts_characters"]
        assert (usage.room_sid, usage.participant_sid) == (joined.room_sid, joined.sid)
        assert report["usage_sessions"] == 1 and report["no_usage_sessions"] == 0
        assert report["no_usage_reported"] is False
        assert report["characters"] == joined.usage["tts_characters"]
    else:
        assert usage_rows(obs) == []
        assert report["usage_sessions"] == 0 and report["no_usage_sessions"] == 1
        assert report["no_usage_reported"] is True and report["characters"] is None
