"""Finding rooms and keeping one hidden watcher in each: listings, webhook announcements,
joins (a few at a time), and the clean-up when a join found the room already gone or
hosted by no live node. What only the server's API can settle is asked through
`observer.daemon.room_checks`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from livekit import api, rtc
from sqlalchemy.exc import SQLAlchemyError

from observer.config import LiveKitSettings, Settings
from observer.core import discovery
from observer.core.events import (
    Event,
    Reconnecting,
    RoomClosed,
    RoomGone,
    RoomHandedOver,
    RoomLost,
    RoomUnreachable,
    StoredOpenSessions,
    TrackedSession,
    WebhookRoomFinished,
)
from observer.core.times import utcnow
from observer.core.vocab import OBSERVER_REJOINING, OBSERVER_STOPPED
from observer.daemon.crowding import Crowding
from observer.daemon.ended_rooms import EndedRooms
from observer.daemon.fleet import Fleet
from observer.daemon.join_turn import join_in_turn
from observer.daemon.room_checks import RoomChecks, confirm_unhosted, still_listed
from observer.daemon.room_processes.pool import JoinFailed, RemoteWatcher, RoomProcessPool
from observer.daemon.watcher import RoomMismatchError, RoomWatcher, observer_token
from observer.livekit_api import API_ERRORS, Client, log_failure, room_hosted

Watcher = RoomWatcher | RemoteWatcher

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0

LEAVE_CONCURRENCY = 32
# A connection still reconnecting this long is checked against the API: the node it went
# through, or the node hosting its room, may have died (the SDK itself retries for ~20 s).
STUCK_RECONNECT_S = 3.0
# How often a room no live node hosts is probed (a participant's reconnect re-creates it).
UNREACHABLE_RETRY_S = 1.0


class Rooms:
    def __init__(
        self,
        settings: Settings,
        lk: LiveKitSettings,
        lkapi: Client,
        identity: str,
        *,
        emit: Callable[[Event], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        unwatched_with_sessions: Callable[[], Mapping[str, str]],
        pool: RoomProcessPool | None = None,
        fleet: Fleet | None = None,
        open_in_room: Callable[[str], Awaitable[list[TrackedSession]]] | None = None,
        agent_attributes: bool = True,
    ) -> None:
        self._settings = settings
        self._agent_attributes = agent_attributes
        self._lk = lk
        self._api = lkapi
        self._identity = identity
        self._emit = emit
        self._spawn = spawn
        self._unwatched = unwatched_with_sessions
        self.watchers: dict[str, Watcher] = {}
        self._pool = pool
        self._fleet = fleet
        self._open_in_room = open_in_room
        self._listed: list[discovery.ListedRoom] = []
        self._listed_at: datetime | None = None
        self.listing_ok = False  # LiveKit answered the last listing
        self._not_mine_since: dict[str, float] = {}
        self._joining: set[str] = set()  # rooms whose join has not landed yet
        self._joined_via: dict[str, str] = {}  # room sid -> the URL its connection went to
        self.ended = EndedRooms()
        # listed rooms that no live node hosts (their node died): sid -> name
        self.unreachable: dict[str, str] = {}
        self._first_seen: dict[str, float] = {}
        self._slots = asyncio.Semaphore(len(pool.processes) if pool is not None else 1)
        self._joins: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # the questions only the server's API can settle, answered in batches
        self.checks: RoomChecks[Watcher] = RoomChecks(
            lk,
            lkapi,
            emit=emit,
            spawn=spawn,
            current=self.watchers.get,
            ended=self.ended,
            give_up=self._give_up,
        )
        self.crowding = Crowding(self.watchers, pool, self._renew, lambda: self._stopping)

    def _token(self, watcher: Watcher) -> str:
        lk = self._lk
        return observer_token(lk.api_key, lk.api_secret, self._identity, watcher.room_name)

    async def _renew(self, watcher: Watcher) -> None:
        """Join a room afresh, in turn; never cancelled, and waited for as the daemon stops."""

        def start() -> Coroutine[Any, Any, None] | None:
            if not self._still_wanted(watcher) or watcher.recovering:
                return None
            self._joined_via[watcher.room_sid] = self._api.ws_url
            self.crowding.changed()
            return watcher.renew(self._api.ws_url, self._token(watcher), JOIN_TIMEOUT_S)

        task = self._track_join(self._spawn(join_in_turn(self._slots, start), "renew"))
        await asyncio.shield(task)

    def _track_join(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)
        return task

    def verify(self, room_sid: str, room_name: str) -> None:
        """Ask the server who is in this room; the answer arrives as a `ServerListing` event."""
        self.checks.verify(room_sid, room_name)

    def recovered(self, watcher: Watcher) -> None:
        """The SDK reconnected this watcher: check it is still in the room it watched."""
        self.checks.recovered(watcher)

    async def _give_up(self, watcher: Watcher, listed_at: datetime) -> None:
        """The watched room no longer exists: its sessions are settled as gone, and the
        connection (recovering, or landed in a successor room) is left."""
        watcher.recovered(False)
        self._forget(watcher.room_sid, ended=True)
        self._emit(RoomGone(watcher.room_sid, utcnow(), listed_at))
        await self._leave_quietly(watcher)

    async def _leave_quietly(self, watcher: Watcher) -> None:
        try:
            await asyncio.wait_for(watcher.leave(), 5)
        except Exception:  # a connection that fails to close is not worth more than a line
            log.warning("leaving a room failed", extra={"room": watcher.room_name})

    async def discover_forever(self) -> None:
        while True:
            listed_at = utcnow()
            try:
                resp = await self._api.room.list_rooms(api.ListRoomsRequest())
            except API_ERRORS as exc:
                self.listing_ok = False
                log_failure(log, self._lk, exc)
            else:
                self.listing_ok = True
                self.poll_once([discovery.ListedRoom(r.sid, r.name) for r in resp.rooms], listed_at)
            await asyncio.sleep(self._settings.poll_interval_s)

    def listed_count(self) -> int:
        """Rooms of the last answered listing that match OBSERVER_ROOM_PATTERNS."""
        return sum(discovery.matches(r.name, self._settings.room_patterns) for r in self._listed)

    def poll_once(
        self, listed: list[discovery.ListedRoom], listed_at: datetime | None = None
    ) -> None:
        """Act on one complete room listing, requested at `listed_at`."""
        self._listed, self._listed_at = listed, listed_at
        mine = self._fleet.mine({r.name for r in listed}) if self._fleet else None
        p = discovery.plan(
            listed,
            patterns=self._settings.room_patterns,
            busy=set(self.watchers),
            ended=self.ended,
            with_open_sessions=self._unwatched(),
            mine=mine,
        )
        if mine is not None:
            self._hand_over_rooms_not_mine(mine)
            listed_names = {r.sid: r.name for r in listed}
            for sid in self._unwatched():
                if (
                    sid in listed_names
                    and listed_names[sid] not in mine
                    and sid not in self.watchers
                ):
                    self._emit(RoomHandedOver(sid, utcnow()))  # rows another observer continues
        now = utcnow()
        for sid in p.gone:
            self._emit(RoomGone(sid, now, listed_at or now))
        live = {r.sid for r in listed}
        self._prune(live)
        for sid, watcher in list(self.watchers.items()):
            if watcher.recovering and sid not in live:
                # The SDK is trying to get back into a room that no longer exists.
                self._spawn(self._give_up(watcher, listed_at or now), f"leave:{watcher.room_name}")
        for room in p.join:
            self._start(room)

    def _prune(self, live: set[str]) -> None:
        """What is kept of rooms that are gone goes with them (a daemon runs for months)."""
        self.ended.listed(live)
        for sid in [s for s in self.unreachable if s not in live]:
            del self.unreachable[sid]
        for sid in [s for s in self._first_seen if s not in live and s not in self.watchers]:
            del self._first_seen[sid]  # never joined: no join latency to tell
        for sid in [s for s in self._joined_via if s not in self.watchers]:
            del self._joined_via[sid]

    def replan(self) -> None:
        """The observers changed: place the last listing again (takeovers happen here)."""
        if self._listed_at is not None:
            self.poll_once(self._listed, self._listed_at)

    def _hand_over_rooms_not_mine(self, mine: set[str]) -> None:
        """Leave rooms the placement gave to others, once they have had time to get in."""
        now = time.monotonic()
        grace = self._settings.failover_s
        for sid, watcher in list(self.watchers.items()):
            if watcher.room_name in mine:
                self._not_mine_since.pop(sid, None)
                continue
            if sid in self._joining:
                # Not inside yet, so nothing to hand over: the join is dropped, or left
                # as soon as it lands (see _join).
                self.watchers.pop(sid, None)
                self._not_mine_since.pop(sid, None)
                continue
            since = self._not_mine_since.setdefault(sid, now)
            if now - since >= grace and not watcher.recovering:
                self._not_mine_since.pop(sid, None)
                self.watchers.pop(sid, None)
                self._emit(RoomHandedOver(sid, utcnow()))
                self._spawn(self._leave_quietly(watcher), f"hand-over:{watcher.room_name}")
        for sid in [s for s in self._not_mine_since if s not in self.watchers]:
            del self._not_mine_since[sid]

    def join_now(self, room: discovery.ListedRoom) -> None:
        """Join one room now (announced by a webhook) if the listing rules allow it."""
        if self._fleet is not None:
            names = {r.name for r in self._listed} | {room.name}
            if room.name not in self._fleet.mine(names):
                return
        p = discovery.plan(
            [room],
            patterns=self._settings.room_patterns,
            busy=set(self.watchers),
            ended=self.ended,
            with_open_sessions={},
        )
        for r in p.join:
            self._start(r)

    def emit(self, ev: Event) -> None:
        """Every room event from outside this class (watchers, room processes, webhooks)
        passes here on its way to the tracker, so that this class alone keeps each room's
        connection lifecycle: a room that ended is never joined again, and a lost
        connection frees the room for the next listing."""
        match ev:
            case RoomClosed() | WebhookRoomFinished():
                self._forget(ev.room_sid, ended=True)
            case RoomLost():
                self._forget(ev.room_sid, ended=False)
            case Reconnecting():
                self.crowding.changed()
                watcher = self.watchers.get(ev.room_sid)
                if watcher is not None:
                    self._spawn(self._check_stuck(watcher), f"stuck:{watcher.room_name}")
        self._emit(ev)

    async def _check_stuck(self, watcher: Watcher) -> None:
        """A connection still reconnecting after STUCK_RECONNECT_S (and each one after): when
        no live node hosts its room, its sessions end at their last evidence now; when the
        node it went through is the one that died (the API answers at another URL), the room
        is joined afresh at once rather than after the SDK gives up."""

        def stuck() -> bool:
            current = self.watchers.get(watcher.room_sid) is watcher
            return current and watcher.recovering and not self._stopping

        # Asked again while it stays stuck and the answer settles nothing: a server that could
        # not tell (the node it asked just died), or a live node and no sign of a dead one.
        while True:
            await asyncio.sleep(STUCK_RECONNECT_S)
            if not stuck():
                return
            hosted = await room_hosted(self._api, watcher.room_name)
            if not stuck():
                return
            moved = self._joined_via.get(watcher.room_sid) != self._api.ws_url
            if hosted is not None and (moved or not hosted):
                break
            # the SDK may yet resume: a cut link, not a dead node
        log.warning(
            "connection to a room stuck reconnecting through a node that is gone; leaving it",
            extra={"room": watcher.room_name, "room_sid": watcher.room_sid},
        )
        self.watchers.pop(watcher.room_sid, None)
        self._emit(RoomLost(watcher.room_sid, OBSERVER_REJOINING, utcnow()))
        await self._leave_quietly(watcher)
        room = discovery.ListedRoom(watcher.room_sid, watcher.room_name)
        if not hosted and await confirm_unhosted(self._api, room.name):
            self._mark_unreachable(room)
        else:
            self.join_now(room)

    def _forget(self, room_sid: str, *, ended: bool) -> None:
        self.watchers.pop(room_sid, None)
        self._joined_via.pop(room_sid, None)
        if ended:
            self.ended.add(room_sid)
            self.unreachable.pop(room_sid, None)

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
        slots = asyncio.Semaphore(LEAVE_CONCURRENCY)

        async def leave(watcher: Watcher) -> None:
            async with slots:
                await self._leave_quietly(watcher)

        for sid in self.watchers:
            self._emit(RoomLost(sid, OBSERVER_STOPPED, now))
        await asyncio.gather(*(leave(w) for w in list(self.watchers.values())))
        self.watchers.clear()

    def _start(self, room: discovery.ListedRoom) -> None:
        if self._stopping:
            return
        self._first_seen.setdefault(room.sid, time.monotonic())
        watcher: Watcher
        if self._pool is not None:
            watcher = self._pool.watcher(room.name, room.sid)
        else:
            watcher = RoomWatcher(
                room.name,
                room.sid,
                self.emit,
                on_recovered=self.recovered,
                agent_attributes=self._agent_attributes,
            )
        self.watchers[room.sid] = watcher
        self._joining.add(room.sid)
        self._track_join(self._spawn(self._join(watcher), f"join:{room.name}"))

    def _still_wanted(self, watcher: Watcher) -> bool:
        return not self._stopping and self.watchers.get(watcher.room_sid) is watcher

    async def _join(self, watcher: Watcher) -> None:
        try:
            await self._join_once(watcher)
        finally:
            if self.watchers.get(watcher.room_sid) in (watcher, None):
                self._joining.discard(watcher.room_sid)

    async def _join_once(self, watcher: Watcher) -> None:
        token = self._token(watcher)
        if watcher.room_sid in self.unreachable:
            # probed until a live node hosts it (`_reenter_when_hosted`), then joined
            self.watchers.pop(watcher.room_sid, None)
            return
        await self._seed(watcher.room_sid)

        def start() -> Coroutine[Any, Any, None] | None:
            if not self._still_wanted(watcher):
                return None
            self._joined_via[watcher.room_sid] = self._api.ws_url
            self.crowding.changed()
            return watcher.join(self._api.ws_url, token, JOIN_TIMEOUT_S)

        try:
            started = await join_in_turn(self._slots, start)
            if not started:
                if self.watchers.get(watcher.room_sid) is watcher:
                    self.watchers.pop(watcher.room_sid)
                return
            if self.watchers.get(watcher.room_sid) is watcher:
                self.unreachable.pop(watcher.room_sid, None)  # inside: a live node hosts it
            if not self._stopping and self.watchers.get(watcher.room_sid) is not watcher:
                # The placement gave the room to others while this join was in flight, and
                # maybe back: a newer join of the room is in flight (its snapshot follows), or
                # landed first (that connection watches the room, its sessions stay).
                if watcher.room_sid not in self.watchers:
                    self._emit(RoomHandedOver(watcher.room_sid, utcnow()))
                elif watcher.room_sid in self._joining:
                    self._emit(RoomLost(watcher.room_sid, OBSERVER_REJOINING, utcnow()))
                else:
                    log.info("a newer join landed first", extra={"room": watcher.room_name})
                await self._leave_quietly(watcher)
                return
            if self._stopping:
                self.watchers.pop(watcher.room_sid, None)
                self._emit(RoomLost(watcher.room_sid, OBSERVER_STOPPED, utcnow()))
                await watcher.leave()
        except RoomMismatchError as exc:
            # The listed room ended and a client (an agent's or user's SDK rejoining by name)
            # made a new one with its name; the observer's own join can never create a room
            # (NO_CREATE_PRESET). The new room is joined from the next listing, as any room.
            self._forget(watcher.room_sid, ended=True)
            self._first_seen.pop(watcher.room_sid, None)
            log.info(
                "room ended before the observer joined; its name now belongs to a new room",
                extra={
                    "room": watcher.room_name,
                    "listed_sid": watcher.room_sid,
                    "new_sid": exc.joined_sid,
                },
            )
        except (rtc.ConnectError, JoinFailed, TimeoutError, OSError) as exc:
            self.watchers.pop(watcher.room_sid, None)
            error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            if await self._ended_meanwhile(watcher):
                # The server refused to re-create it (see NO_CREATE_PRESET).
                log.info("room ended before the observer joined", extra={"room": watcher.room_name})
                return
            if await self._unhosted(watcher):
                return
            log.warning(
                "joining a room failed; will retry",
                extra={"room": watcher.room_name, "error": error},
            )

    async def _seed(self, room_sid: str) -> None:
        """Before joining: the room's open rows, whoever wrote them, so that the sessions
        continue and those whose participant left meanwhile are settled."""
        if self._open_in_room is None:
            return
        try:
            sessions = await self._open_in_room(room_sid)
        except SQLAlchemyError as exc:
            log.warning(
                "reading a room's open sessions failed", extra={"error": type(exc).__name__}
            )
            return
        if sessions:
            self._emit(StoredOpenSessions(room_sid, tuple(sessions)))

    async def _unhosted(self, watcher: Watcher) -> bool:
        """After a failed join of a listed room: does any live node host it? A room whose
        node died stays listed, with its participants, for good, and a join would have to
        create it (which the observer's token forbids). Its sessions end at their last
        evidence, and it is probed until a live node hosts it again."""
        room = discovery.ListedRoom(watcher.room_sid, watcher.room_name)
        if unhosted := await confirm_unhosted(self._api, room.name):
            self._mark_unreachable(room)
        return unhosted

    def _mark_unreachable(self, room: discovery.ListedRoom) -> None:
        if room.sid in self.unreachable or room.sid in self.ended or room.sid in self.watchers:
            return  # a join in flight (or landed) meanwhile decides
        self.unreachable[room.sid] = room.name
        log.warning(
            "room is listed but no live LiveKit node hosts it; its sessions end at their"
            " last evidence",
            extra={"room": room.name, "room_sid": room.sid},
        )
        self._emit(RoomUnreachable(room.sid, utcnow()))
        self._spawn(self._reenter_when_hosted(room), f"unreachable:{room.name}")

    async def _reenter_when_hosted(self, room: discovery.ListedRoom) -> None:
        """Probe a room no live node hosts until one does (a participant's own reconnect
        re-creates it on a live node), then join it at once."""
        while room.sid in self.unreachable and not self._stopping:
            await asyncio.sleep(UNREACHABLE_RETRY_S)
            if room.sid in self.watchers:
                self.unreachable.pop(room.sid, None)  # a join in flight decides
                return
            if room.sid not in self.unreachable:
                return
            if await room_hosted(self._api, room.name):
                if self.unreachable.pop(room.sid, None) is not None:
                    log.info("room is hosted again", extra={"room": room.name})
                    self.join_now(room)
                return

    async def _ended_meanwhile(self, watcher: Watcher) -> bool:
        """After a failed join: is the listed room gone? Then it is never tried again."""
        if await still_listed(self._api, watcher.room_name, watcher.room_sid):
            return False
        self._forget(watcher.room_sid, ended=True)
        self._first_seen.pop(watcher.room_sid, None)
        return True
