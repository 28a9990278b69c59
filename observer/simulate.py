"""Simulated agents: real rtc clients with agent tokens, for demos and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

from livekit import api, rtc

from observer import livekit_api
from observer.config import ConfigError, LiveKitSettings

log = logging.getLogger(__name__)


def agent_token(lk: LiveKitSettings, identity: str, room: str, agent_name: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, agent=True)
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_name(agent_name)
        .with_kind("agent")
        .with_attributes({"lk.agent.name": agent_name})
        .with_grants(grants)
        .with_ttl(timedelta(hours=1))
        .to_jwt()
    )


def user_token(lk: LiveKitSettings, identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(timedelta(hours=1))
        .to_jwt()
    )


@dataclass
class Stay:
    """One simulated participant's stay, measured on the client's side."""

    room: str
    identity: str
    connecting_at: float = 0.0  # time.time() when connect() was called
    connected_at: float = 0.0  # time.time() when connect() returned
    leaving_at: float = 0.0  # time.time() when disconnect() was called

    @property
    def measured_ms(self) -> float:
        return (self.leaving_at - self.connected_at) * 1000


async def connect_agent(
    lk: LiveKitSettings, room_name: str, identity: str, agent_name: str, *, audio: bool = True
) -> tuple[rtc.Room, Stay]:
    """Connect a simulated agent; with `audio` it publishes a (silent) microphone track."""
    room = rtc.Room()
    connecting_at = time.time()
    await room.connect(
        lk.ws_url,
        agent_token(lk, identity, room_name, agent_name),
        rtc.RoomOptions(auto_subscribe=False),
    )
    stay = Stay(room_name, identity, connecting_at=connecting_at, connected_at=time.time())
    if audio:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, opts)
        await source.capture_frame(rtc.AudioFrame.create(48000, 1, 480))
    return room, stay


async def leave(room: rtc.Room, stay: Stay | None = None) -> None:
    if stay is not None:
        stay.leaving_at = time.time()
    await room.disconnect()


async def run(lk: LiveKitSettings, args: argparse.Namespace) -> int:
    """`observer simulate`: rooms with users and agents that stay, then leave. A refused
    key is bad settings (ConfigError); a server that cannot be used, one line and exit 1."""
    errors: tuple[type[BaseException], ...] = (*livekit_api.API_ERRORS, rtc.ConnectError)
    try:
        return await _simulate(lk, args)
    except errors as exc:
        if livekit_api.is_refusal(exc):
            raise ConfigError([livekit_api.refusal(lk.url, lk, exc)]) from None
        print(
            f"observer: LiveKit at {lk.url} did not answer ({livekit_api.reason(exc)});"
            " `observer check` tests the settings",
            file=sys.stderr,
        )
        return 1


async def _simulate(lk: LiveKitSettings, args: argparse.Namespace) -> int:
    lkapi = livekit_api.client(lk, 10)
    users: list[rtc.Room] = []
    agents: list[tuple[rtc.Room, Stay]] = []
    try:
        names = [f"{args.room_prefix}-{i + 1}" for i in range(args.rooms)]
        for name in names:
            await lkapi.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=30))
            for u in range(args.users):
                room = rtc.Room()
                await room.connect(
                    lk.ws_url,
                    user_token(lk, f"user-{u + 1}", name),
                    rtc.RoomOptions(auto_subscribe=False),
                )
                users.append(room)
        print(f"created {len(names)} rooms with {args.users} user(s) each")
        for name in names:
            for a in range(args.agents):
                agents.append(
                    await connect_agent(
                        lk, name, f"agent-{a + 1}", f"sim-agent-{a + 1}", audio=not args.no_audio
                    )
                )
        print(f"{len(agents)} agents joined; staying {args.duration:g}s")
        await asyncio.sleep(args.duration)
    finally:
        for room, stay in agents:
            await leave(room, stay)
        for room in users:
            await room.disconnect()
        await lkapi.aclose()
    for _room, stay in agents:
        print(f"{stay.room}/{stay.identity}: stayed {stay.measured_ms / 1000:.2f}s")
    return 0
