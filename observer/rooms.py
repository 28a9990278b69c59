"""Finding rooms and keeping one hidden watcher in each: listings, webhook announcements,
joins (a few at a time), and the clean-up when a join found the room already gone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from livekit import api, rtc

from observer import discovery
from observer.config import LiveKitSettings, Settings
from observer.tracker import Event, RoomGone, RoomLost
from observer.watcher import RoomMismatchError, RoomWatcher, observer_token

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
# Each connect briefly starts many native threads; a burst of hundreds starves the rooms
# already watched.
JOIN_CONCURRENCY = 4


def utcnow() -> datetime:
    return datetime.now(UTC)


class Rooms:
    def __init__(
        self,
        settings: Settings,
        lk: LiveKitSettings,
        lkapi: api.LiveKitAPI,
        identity: str,
        *,
        emit: Callable[[Event], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        unwatched_with_sessions: Callable[[], Mapping[str, str]],
    ) -> None:
        self._settings = settings
        self._lk = lk
        self._api = lkapi
        self._identity = identity
        self._emit = emit
        self._spawn = spawn
        self._unwatched = unwatched_with_sessions
        self.watchers: dict[str, RoomWatcher] = {}
        self.ended: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._slots = asyncio.Semaphore(JOIN_CONCURRENCY)
        self._joins: set[asyncio.Task[Any]] = set()
        self._stopping = False

    async def discover_forever(self) -> None:
        while True:
            listed_at = utcnow()
            try:
                resp = await self._api.room.list_rooms(api.ListRoomsRequest())
            except Exception as exc:
                log.warning("listing rooms failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            else:
                self.poll_once([discovery.ListedRoom(r.sid, r.name) for r in resp.rooms], listed_at)
            await asyncio.sleep(self._settings.poll_interval_s)

    def poll_once(
        self, listed: list[discovery.ListedRoom], listed_at: datetime | None = None
    ) -> None:
        """Act on one complete room listing, requested at `listed_at`."""
        p = discovery.plan(
            listed,
            patterns=self._settings.room_patterns,
            busy=set(self.watchers),
            ended=self.ended,
            with_open_sessions=self._unwatched(),
        )
        now = utcnow()
        for sid in p.gone:
            self._emit(RoomGone(sid, now, listed_at or now))
        for room in p.join:
            self._start(room)

    def join_now(self, room: discovery.ListedRoom) -> None:
        """Join one room now (announced by a webhook) if the listing rules allow it."""
        p = discovery.plan(
            [room],
            patterns=self._settings.room_patterns,
            busy=set(self.watchers),
            ended=self.ended,
            with_open_sessions={},
        )
        for r in p.join:
            self._start(r)

    def forget(self, room_sid: str, *, ended: bool) -> None:
        """The watcher of this room is gone; an ended room is never joined again."""
        self.watchers.pop(room_sid, None)
        if ended:
            self.ended.add(room_sid)

    def join_latency_s(self, room_sid: str) -> float | None:
        """Seconds from the room first being seen to the observer being inside."""
        first = self._first_seen.pop(room_sid, None)
        return None if first is None else time.monotonic() - first

    async def leave_all(self) -> None:
        """Stop joining and leave every room; report each as lost (its sessions stay open)."""
        self._stopping = True
        # Never cancel a connect in flight: the SDK's native core then kills the process.
        if self._joins:
            await asyncio.wait(list(self._joins), timeout=JOIN_TIMEOUT_S + 5)
        now = utcnow()
        for sid, watcher in list(self.watchers.items()):
            self._emit(RoomLost(sid, "OBSERVER_STOPPED", now))
            try:
                await asyncio.wait_for(watcher.leave(), 5)
            except Exception:
                log.warning("leaving a room failed", extra={"room": watcher.room_name})
        self.watchers.clear()

    def _start(self, room: discovery.ListedRoom) -> None:
        if self._stopping:
            return
        self._first_seen.setdefault(room.sid, time.monotonic())
        watcher = RoomWatcher(room.name, room.sid, self._emit)
        self.watchers[room.sid] = watcher
        task = self._spawn(self._join(watcher), f"join:{room.name}")
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)

    async def _join(self, watcher: RoomWatcher) -> None:
        lk = self._lk
        token = observer_token(lk.api_key, lk.api_secret, self._identity, watcher.room_name)
        try:
            async with self._slots:
                if self._stopping:
                    self.watchers.pop(watcher.room_sid, None)
                    return
                await watcher.join(lk.ws_url, token, JOIN_TIMEOUT_S)
            if self._stopping:
                self.watchers.pop(watcher.room_sid, None)
                self._emit(RoomLost(watcher.room_sid, "OBSERVER_STOPPED", utcnow()))
                await watcher.leave()
        except RoomMismatchError as exc:
            # Our join created a fresh room: the listed one ended in between.
            self.forget(watcher.room_sid, ended=True)
            self._first_seen.pop(watcher.room_sid, None)
            log.warning(
                "room ended before the observer joined; left the new room it created",
                extra={
                    "room": watcher.room_name,
                    "listed_sid": watcher.room_sid,
                    "created_sid": exc.joined_sid,
                },
            )
            await self._delete_if_only_dependents(watcher.room_name, exc.joined_sid)
        except (rtc.ConnectError, TimeoutError, OSError) as exc:
            self.watchers.pop(watcher.room_sid, None)
            log.warning(
                "joining a room failed; will retry",
                extra={"room": watcher.room_name, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def _delete_if_only_dependents(self, room_name: str, sid: str) -> None:
        """Delete a room the observer created by accident, unless someone real is in it."""
        try:
            resp = await self._api.room.list_participants(
                api.ListParticipantsRequest(room=room_name)
            )
            if all(
                p.permission.agent or p.kind == api.ParticipantInfo.Kind.AGENT
                for p in resp.participants
            ):
                rooms = await self._api.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
                if any(r.sid == sid for r in rooms.rooms):
                    await self._api.room.delete_room(api.DeleteRoomRequest(room=room_name))
        except Exception as exc:
            log.warning(
                "could not clean up the accidental room",
                extra={"room": room_name, "error": type(exc).__name__},
            )
