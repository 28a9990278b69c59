"""An agent built with livekit-agents, dispatched through the agent dispatch API.

The other daemon tests join "agents" made by hand (an rtc client with an agent token).
Here the agent is the real thing: a livekit-agents worker registers with the server under
an explicit agent name, the test dispatches it into a room, the framework joins it with
the token and attributes LiveKit gives dispatched agents, and it leaves by ending its job.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from daemon_helpers import Clients, create_room
from livekit import rtc
from livekit_server import LiveKitServer

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]

# livekit-agents takes about 1.7 s of CPU to import: the tests that run its worker import
# it themselves, so that collecting the suite (in every worker process) does not.
AGENT_NAME = "front-desk"


async def test_dispatched_framework_agent_is_recorded(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    from agents_worker import AgentWorker, dispatch, framework_threads

    room = f"dispatch-{uuid.uuid4().hex[:8]}"
    await create_room(livekit_server, room)
    await clients.join(room, "caller-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching(room)
    env_before = dict(os.environ)

    async with AgentWorker(livekit_server, AGENT_NAME) as worker:
        job = await dispatch(livekit_server, worker, room)
        assert job.job_agent_name == AGENT_NAME and job.room_name == room
        assert job.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        # set by the server when it assigns the job, and by the framework when accepting it
        assert job.attributes.get("lk.agent_name") == AGENT_NAME
        assert job.attributes.get("lk.agent.name") == AGENT_NAME

        (row,) = await obs.wait_rows(lambda rows: len(rows) == 1)
        assert row.left_at is None
        assert row.participant_sid == job.sid and row.room_sid == job.room_sid
        assert row.participant_identity == job.identity

        await asyncio.sleep(1.5)
        disconnected = await job.leave()
        (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    # the worker left nothing behind: no threads, no environment variables
    assert framework_threads() == []
    assert dict(os.environ) == env_before

    assert row.room_name == room
    assert row.participant_kind == "agent"
    assert row.agent_name == AGENT_NAME
    assert row.participant_identity.startswith("agent-AJ_")
    assert row.attributes.get("lk.agent_name") == AGENT_NAME
    # the server's join time: while the framework was connecting the agent
    joined = row.joined_at.timestamp()
    assert job.connect_started - 0.2 < joined < job.connected + 0.2, (
        job.connect_started,
        joined,
        job.connected,
    )
    # the leave: after the agent was asked to go, about when the framework disconnected it
    assert row.left_at is not None and job.leave_requested is not None
    left = row.left_at.timestamp()
    assert job.leave_requested - 0.2 < left < disconnected + 1.0, (
        job.leave_requested,
        left,
        disconnected,
    )
    assert row.duration_ms is not None
    assert abs(row.duration_ms - (left - joined) * 1000) <= 1, (row.duration_ms, left - joined)
    assert row.duration_ms > 1500
    assert row.disconnect_reason == "CLIENT_INITIATED"
    assert row.end_source == "rtc"
    # the caller is not an agent: only the dispatched agent has a row
    assert [r.participant_sid for r in obs.rows()] == [job.sid]


async def test_worker_shutdown_ends_the_agent_session(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    """A worker stopped (a deploy, a restart) takes its agents out of their rooms."""
    from agents_worker import AgentWorker, dispatch, framework_threads

    room = f"dispatch-{uuid.uuid4().hex[:8]}"
    await create_room(livekit_server, room)
    await clients.join(room, "caller-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching(room)

    worker = AgentWorker(livekit_server, AGENT_NAME)
    await worker.start()
    try:
        job = await dispatch(livekit_server, worker, room)
        await obs.wait_rows(lambda rows: len(rows) == 1)
    finally:
        await worker.stop()
    assert job.disconnected is not None
    assert framework_threads() == []

    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert row.participant_sid == job.sid and row.agent_name == AGENT_NAME
    assert row.disconnect_reason == "CLIENT_INITIATED"
    assert row.end_source == "rtc"
    assert row.left_at is not None
    assert abs(row.left_at.timestamp() - job.disconnected) < 1.0
