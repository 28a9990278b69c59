"""Smoke tests for the test infrastructure: a real livekit-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from livekit import api, rtc
from livekit_server import LiveKitServer, LiveKitServerFactory

pytestmark = pytest.mark.live


def _room_name() -> str:
    return f"smoke-{uuid.uuid4().hex[:8]}"


async def _participant_info(server: LiveKitServer, room: str, identity: str) -> api.ParticipantInfo:
    """Poll ListParticipants (up to 5 s) until ``identity`` is in ``room``."""
    seen: list[str] = []
    async with server.api_client() as lkapi:
        try:
            async with asyncio.timeout(5):
                while True:
                    req = api.ListParticipantsRequest(room=room)
                    resp = await lkapi.room.list_participants(req)
                    seen = [p.identity for p in resp.participants]
                    for info in resp.participants:
                        if info.identity == identity:
                            return info
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"{identity} not in room {room}; present: {seen}") from None


async def _join(server: LiveKitServer, token: str) -> rtc.Room:
    room = rtc.Room()
    await room.connect(server.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    return room


async def test_kind_claim_makes_agent(livekit_server: LiveKitServer) -> None:
    """A token with kind "agent" (and the agent grant) joins as kind AGENT."""
    room_name = _room_name()
    token = livekit_server.token("agent-smoke", room_name, kind="agent", agent=True)
    room = await _join(livekit_server, token)
    try:
        assert room.local_participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        info = await _participant_info(livekit_server, room_name, "agent-smoke")
        assert info.kind == api.ParticipantInfo.Kind.AGENT
        assert info.permission.agent
    finally:
        await room.disconnect()


async def test_agent_grant_alone_stays_standard(livekit_server: LiveKitServer) -> None:
    """The agent grant without a kind claim leaves the participant STANDARD."""
    room_name = _room_name()
    token = livekit_server.token("grant-only", room_name, agent=True)
    room = await _join(livekit_server, token)
    try:
        info = await _participant_info(livekit_server, room_name, "grant-only")
        assert info.kind == api.ParticipantInfo.Kind.STANDARD
        assert info.permission.agent
    finally:
        await room.disconnect()


async def test_factory_server_with_custom_settings(
    livekit_server_factory: LiveKitServerFactory, livekit_server: LiveKitServer
) -> None:
    """The factory starts a second, independent server next to the shared one."""
    server = livekit_server_factory(empty_timeout=2, departure_timeout=1)
    assert server.port != livekit_server.port
    room_name = _room_name()
    room = await _join(server, server.token("someone", room_name))
    try:
        info = await _participant_info(server, room_name, "someone")
        assert info.kind == api.ParticipantInfo.Kind.STANDARD
    finally:
        await room.disconnect()


def test_postgres_select_one(pg_url: str) -> None:
    """The per-test database accepts SQLAlchemy connections."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()
