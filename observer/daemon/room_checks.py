"""Questions about rooms that only the server's API can settle, asked in batches: is a room
the SDK reconnected to still the one watched, and who is in a room (`ServerListing`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from livekit import api

from observer.config import LiveKitSettings
from observer.core.events import Event, ServerListing
from observer.core.times import utcnow
from observer.daemon.ended_rooms import EndedRooms
from observer.livekit_api import API_ERRORS, Client, log_failure, room_hosted

log = logging.getLogger(__name__)

# A room is taken as hosted by no live node when this many probes this far apart say so.
UNREACHABLE_CONFIRM_S = 2.0
UNREACHABLE_PROBES = 3
CHECK_BATCH_DELAY_S = 0.2
CHECK_RETRY_S = 1.0
CHECK_CONCURRENCY = 8


class Connection(Protocol):
    """What the checks need of a room's connection (`RoomWatcher` or `RemoteWatcher`)."""

    @property
    def room_sid(self) -> str: ...
    @property
    def room_name(self) -> str: ...
    @property
    def recovering(self) -> bool: ...
    def recovered(self, same_room: bool) -> None: ...


W = TypeVar("W", bound=Connection)


async def list_rooms(lkapi: Client, names: set[str]) -> list[api.Room]:
    """The rooms of these names that exist now."""
    if not names:
        return []
    resp = await lkapi.room.list_rooms(api.ListRoomsRequest(names=sorted(names)))
    return list(resp.rooms)


async def still_listed(lkapi: Client, name: str, sid: str) -> bool:
    """The room is listed, or the API did not answer."""
    try:
        return sid in {r.sid for r in await list_rooms(lkapi, {name})}
    except API_ERRORS:
        return True


async def confirm_unhosted(lkapi: Client, name: str) -> bool:
    """Every probe over UNREACHABLE_CONFIRM_S * (UNREACHABLE_PROBES - 1) seconds says no live
    node hosts the room: a node that is alive but slow to answer (a loaded host) answers one
    of them."""
    for probe in range(UNREACHABLE_PROBES):
        if probe:
            await asyncio.sleep(UNREACHABLE_CONFIRM_S)
        if await room_hosted(lkapi, name) is not False:
            return False
    return True


class RoomChecks(Generic[W]):
    def __init__(
        self,
        lk: LiveKitSettings,
        lkapi: Client,
        *,
        emit: Callable[[Event], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        current: Callable[[str], W | None],
        ended: EndedRooms,
        give_up: Callable[[W, datetime], Awaitable[None]],
    ) -> None:
        """`current`: the connection now held for a room; `ended`: rooms found gone are
        added; `give_up`: leave a connection whose room ended while it reconnected."""
        self._lk = lk
        self._api = lkapi
        self._emit = emit
        self._spawn = spawn
        self._current = current
        self._ended = ended
        self._give_up = give_up
        self._to_confirm: dict[str, W] = {}  # room sid -> connection after a reconnect
        self._to_list: dict[str, str] = {}  # room sid -> name, whose participants to list
        self._wanted = asyncio.Event()

    def verify(self, room_sid: str, room_name: str) -> None:
        """Ask the server who is in this room; the answer arrives as a `ServerListing` event."""
        self._to_list[room_sid] = room_name
        self._wanted.set()

    def recovered(self, watcher: W) -> None:
        """The SDK reconnected this connection: check it is still in the room it watched."""
        self._to_confirm[watcher.room_sid] = watcher
        self._wanted.set()

    async def check_forever(self) -> None:
        """Answer the questions asked, in batches."""
        while True:
            await self._wanted.wait()
            await asyncio.sleep(CHECK_BATCH_DELAY_S)
            self._wanted.clear()
            confirm, self._to_confirm = self._to_confirm, {}
            verify, self._to_list = self._to_list, {}
            names = {w.room_name for w in confirm.values()} | set(verify.values())
            requested_at = utcnow()
            try:
                listed = await list_rooms(self._api, names)
            except API_ERRORS as exc:
                log_failure(log, self._lk, exc)
                self._retry_later(confirm, verify)
                continue
            live = {r.sid for r in listed}
            for sid, watcher in confirm.items():
                await self._confirm(watcher, sid in live, requested_at)
            gone = {sid: name for sid, name in verify.items() if sid not in live}
            for sid in gone:
                self._ended.add(sid)
                self._emit(ServerListing(sid, False, frozenset(), requested_at, utcnow()))
            rest = {sid: name for sid, name in verify.items() if sid in live}
            slots = asyncio.Semaphore(CHECK_CONCURRENCY)
            answers = await asyncio.gather(
                *(self._list_participants(sid, name, slots) for sid, name in rest.items())
            )
            failed = {
                sid: name for (sid, name), ok in zip(rest.items(), answers, strict=True) if not ok
            }
            if failed:
                self._retry_later({}, failed)

    async def _list_participants(self, sid: str, name: str, slots: asyncio.Semaphore) -> bool:
        async with slots:
            asked = utcnow()
            try:
                resp = await self._api.room.list_participants(
                    api.ListParticipantsRequest(room=name)
                )
            except API_ERRORS as exc:
                log.warning(
                    "listing participants failed",
                    extra={"room": name, "error": f"{type(exc).__name__}: {exc}"},
                )
                return False
        present = frozenset(p.sid for p in resp.participants)
        self._emit(ServerListing(sid, True, present, asked, utcnow()))
        return True

    def _retry_later(self, confirm: Mapping[str, W], verify: Mapping[str, str]) -> None:
        async def again() -> None:
            await asyncio.sleep(CHECK_RETRY_S)
            for sid, w in confirm.items():
                if self._current(sid) is w and w.recovering:
                    self._to_confirm[sid] = w
            for sid, name in verify.items():
                self._to_list.setdefault(sid, name)
            self._wanted.set()

        self._spawn(again(), "check-retry")

    async def _confirm(self, watcher: W, same_room: bool, listed_at: datetime) -> None:
        if self._current(watcher.room_sid) is not watcher or not watcher.recovering:
            return
        if same_room:
            watcher.recovered(True)
            return
        # The SDK's full reconnect joined a new room of the same name: the watched one ended.
        log.warning(
            "room ended while the observer reconnected; left its successor",
            extra={"room": watcher.room_name, "room_sid": watcher.room_sid},
        )
        await self._give_up(watcher, listed_at)
