"""Helpers for tests that run the observer daemon against a real livekit-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api, rtc
from livekit_server import LiveKitServer
from polling import until

from observer.config import LiveKitSettings, Settings
from observer.daemon.service import Observer
from observer.db.reads import SessionFilter
from observer.db.schema import SessionRow
from observer.db.store import Store


def settings_for(server: LiveKitServer, db_url: str, **extra: str) -> Settings:
    env = {
        "LIVEKIT_URL": server.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
        "OBSERVER_DATABASE_URL": db_url,
        "OBSERVER_ID": "test-observer",
        "OBSERVER_POLL_INTERVAL_S": "0.3",
        "OBSERVER_LAST_SEEN_REFRESH_S": "1",
        "OBSERVER_DB_RETRY_MAX_S": "1",
        "OBSERVER_HTTP_ADDR": "off",
        **extra,
    }
    return Settings.from_mapping(env, need_livekit=True)


def lk_settings(server: LiveKitServer) -> LiveKitSettings:
    return LiveKitSettings(server.ws_url, server.api_key, server.api_secret)


@dataclass
class RunningObserver:
    obs: Observer
    task: asyncio.Task[int]
    store: Store

    async def stop(self) -> int:
        self.obs.stop()
        return await asyncio.wait_for(self.task, 30)

    def rows(self, **filters: Any) -> list[SessionRow]:
        return sorted(self.store.sessions(SessionFilter(**filters)), key=lambda r: r.id)

    async def wait_rows(
        self, pred: Callable[[list[SessionRow]], bool], timeout: float = 15.0, **filters: Any
    ) -> list[SessionRow]:
        return await until(
            lambda: self.rows(**filters),
            pred,
            timeout_s=timeout,
            what=lambda rows: f"rows: {describe(rows)}",
        )

    async def wait_watching(self, room_name: str, timeout: float = 15.0) -> None:
        await until(
            lambda: room_name in self.obs.tracker.watched_rooms.values(),
            timeout_s=timeout,
            what=f"observer did not join {room_name}",
            interval_s=0.05,
        )


def describe(rows: list[SessionRow]) -> list[tuple[Any, ...]]:
    return [
        (
            r.room_name,
            r.participant_identity,
            r.participant_sid,
            r.left_at,
            r.disconnect_reason,
            r.end_source,
        )
        for r in rows
    ]


CLIENT_CONNECT_TIMEOUT_S = 20.0


@dataclass
class Clients:
    """rtc clients opened by a test; all disconnected at teardown."""

    server: LiveKitServer
    rooms: list[rtc.Room] = field(default_factory=list)

    async def join(
        self,
        room: str,
        identity: str,
        *,
        kind: api.AccessToken.ParticipantKind | None = None,
        agent_name: str | None = None,
        audio: bool = False,
        stream: bool = True,
    ) -> rtc.Room:
        """A client in `room`; with `audio`, a publisher of a microphone track. Without
        `stream` the track is unpublished once the server counts the client as a publisher:
        the server keeps it one (its leave is sent at once, not on the 3 s ticker), and the
        client stops encoding silence (a few % of a core each)."""
        attrs = {"lk.agent.name": agent_name} if agent_name else None
        token = self.server.token(identity, room, kind=kind, attributes=attrs)
        r = rtc.Room()
        # The SDK's 5 s for a signal connection attempt is short for a client of a test
        # run that shares two cores with others: a test's own client is not under test.
        opts = rtc.RoomOptions(auto_subscribe=False, connect_timeout=CLIENT_CONNECT_TIMEOUT_S)
        await r.connect(self.server.ws_url, token, opts)
        self.rooms.append(r)
        if audio:
            source = rtc.AudioSource(48000, 1)
            track = rtc.LocalAudioTrack.create_audio_track("voice", source)
            opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            pub = await r.local_participant.publish_track(track, opts)
            await source.capture_frame(rtc.AudioFrame.create(48000, 1, 480))
            if not stream and await self._publisher(room, identity):
                await r.local_participant.unpublish_track(pub.sid)
        return r

    async def _publisher(self, room: str, identity: str, timeout_s: float = 10.0) -> bool:
        """Whether the server came to count `identity` as a publisher within `timeout_s`
        (if not, the client goes on streaming, as every publisher of a test once did)."""
        lkapi = self.server.api_client()

        async def publishing() -> bool:
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            return any(p.identity == identity and p.is_publisher for p in listed.participants)

        try:
            await until(publishing, timeout_s=timeout_s)
            return True
        except AssertionError:
            return False
        finally:
            await lkapi.aclose()

    async def agent(self, room: str, identity: str, **kw: Any) -> rtc.Room:
        """An agent (the token's kind claim); a publisher unless `audio=False`, whose track
        is gone once the server counts it as one, unless `stream=True`."""
        kw.setdefault("audio", True)
        kw.setdefault("stream", False)
        return await self.join(room, identity, kind="agent", **kw)

    async def close(self) -> None:
        for r in self.rooms:
            if r.isconnected():
                await r.disconnect()


async def create_room(server: LiveKitServer, name: str, **kw: Any) -> api.Room:
    lkapi = server.api_client()
    try:
        return await lkapi.room.create_room(api.CreateRoomRequest(name=name, **kw))
    finally:
        await lkapi.aclose()


async def list_rooms(server: LiveKitServer, *names: str) -> list[api.Room]:
    lkapi = server.api_client()
    try:
        resp = await lkapi.room.list_rooms(api.ListRoomsRequest(names=list(names)))
        return list(resp.rooms)
    finally:
        await lkapi.aclose()
