"""The daemon: wires room watchers -> event queue -> tracker -> writer -> store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from livekit import api, rtc

from observer import discovery
from observer.config import LiveKitSettings, Settings
from observer.store import Store
from observer.tracker import (
    Close,
    Event,
    Op,
    Open,
    RoomClosed,
    RoomGone,
    RoomJoined,
    RoomLost,
    SessionTracker,
    Tick,
)
from observer.watcher import RoomMismatchError, RoomWatcher, observer_token
from observer.writer import BufferFull, Writer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_OVERFLOW = 3
TICK_S = 0.5
JOIN_TIMEOUT_S = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Observer:
    def __init__(self, settings: Settings, store: Store, lk: LiveKitSettings) -> None:
        self.settings = settings
        self.store = store
        self.lk = lk
        self.identity = f"lk-observer-{settings.observer_id}"
        self.tracker = SessionTracker(
            tracked_kinds=settings.track_kinds, heartbeat_s=settings.heartbeat_s
        )
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=settings.queue_max)
        self.writer = Writer(
            store,
            settings.observer_id,
            retry_max_s=settings.db_retry_max_s,
            max_pending=settings.queue_max,
        )
        self.watchers: dict[str, RoomWatcher] = {}
        self.ended_rooms: set[str] = set()
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._api: api.LiveKitAPI | None = None
        self._stopping = False

    # ---- lifecycle ----------------------------------------------------------------------

    def stop(self, code: int = EXIT_OK) -> None:
        self.exit_code = max(self.exit_code, code)
        self._stop.set()

    async def run(self) -> int:
        """Watch until stopped; return the process exit code."""
        await self._load_open_sessions()
        self._api = api.LiveKitAPI(self.lk.http_url, self.lk.api_key, self.lk.api_secret)
        try:
            self._spawn(self.writer.run(), "writer")
            consumer = self._spawn(self._consume(), "consumer")
            self._spawn(self._tick(), "ticker")
            self._spawn(self._discover(), "discovery")
            log.info(
                "observer started",
                extra={
                    "observer_id": self.settings.observer_id,
                    "url": self.lk.url,
                    "open_sessions": len(self.tracker.open_sessions),
                },
            )
            await self._stop.wait()
            await self._shutdown(consumer)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._api.aclose()
        log.info("observer stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    async def _load_open_sessions(self) -> None:
        attempt = 0
        while True:
            try:
                sessions = await asyncio.to_thread(
                    self.store.open_sessions, self.settings.observer_id
                )
                break
            except Exception as exc:  # the database may still be starting
                attempt += 1
                delay = min(self.settings.db_retry_max_s, 0.5 * 2**attempt)
                log.warning(
                    "database not reachable at start; retrying",
                    extra={"attempt": attempt, "retry_in_s": delay, "error": type(exc).__name__},
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    raise SystemExit(self.exit_code)
                except TimeoutError:
                    continue
        self.tracker.seed(sessions)

    async def _shutdown(self, consumer: asyncio.Task[Any]) -> None:
        """Leave every room. Open sessions stay open (their participants are still there);
        the next start continues them."""
        self._stopping = True
        # Never cancel a connect in flight: the SDK's native core then kills the process.
        joins = [t for t in self._tasks if t.get_name().startswith("join:")]
        if joins:
            await asyncio.wait(joins, timeout=JOIN_TIMEOUT_S + 5)
        now = utcnow()
        for sid, watcher in list(self.watchers.items()):
            self._emit(RoomLost(sid, "OBSERVER_STOPPED", now))
            try:
                await asyncio.wait_for(watcher.leave(), 5)
            except Exception:
                log.warning("leaving a room failed", extra={"room": watcher.room_name})
        self.watchers.clear()
        while not self.queue.empty():
            await asyncio.sleep(0.01)
            if consumer.done():
                break
        try:
            await asyncio.wait_for(self.writer.wait_idle(), 15)
        except TimeoutError:
            log.error(
                "stopped with unwritten changes; the next start reconciles them",
                extra={"waiting_ops": self.writer.pending},
            )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", exc_info=exc, extra={"task": task.get_name()})
            self.stop(1)

    # ---- event flow ---------------------------------------------------------------------

    def _emit(self, ev: Event) -> None:
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            log.error(
                "event buffer full; stopping so that nothing is silently lost",
                extra={"queue_max": self.settings.queue_max},
            )
            self.stop(EXIT_OVERFLOW)

    async def _consume(self) -> None:
        while True:
            ev = await self.queue.get()
            if isinstance(ev, RoomClosed):
                self.ended_rooms.add(ev.room_sid)
            if isinstance(ev, (RoomClosed, RoomLost)):
                self.watchers.pop(ev.room_sid, None)
            ops = self.tracker.handle(ev)
            if isinstance(ev, RoomJoined):
                log.info(
                    "room joined",
                    extra={
                        "room": ev.room_name,
                        "room_sid": ev.room_sid,
                        "present": len(ev.present),
                    },
                )
            self._log_ops(ops)
            try:
                self.writer.submit(ops)
            except BufferFull as exc:
                log.error(
                    "database buffer full; stopping so that nothing is silently lost",
                    extra={"detail": str(exc)},
                )
                self.stop(EXIT_OVERFLOW)

    def _log_ops(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, Open):
                s = op.session
                log.info(
                    "session opened",
                    extra={
                        "room": s.room_name,
                        "participant_sid": s.participant_sid,
                        "identity": s.identity,
                        "kind": s.kind,
                        "agent_name": s.agent_name,
                        "joined_at": s.joined_at,
                    },
                )
            elif isinstance(op, Close):
                s = op.session
                log.info(
                    "session closed",
                    extra={
                        "room": s.room_name,
                        "participant_sid": s.participant_sid,
                        "identity": s.identity,
                        "reason": op.reason,
                        "end_source": op.end_source,
                        "duration_ms": round((op.left_at - s.joined_at).total_seconds() * 1000),
                    },
                )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._emit(Tick(utcnow()))

    # ---- rooms --------------------------------------------------------------------------

    async def _discover(self) -> None:
        assert self._api is not None
        while True:
            try:
                resp = await self._api.room.list_rooms(api.ListRoomsRequest())
            except Exception as exc:
                log.warning("listing rooms failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            else:
                self.poll_once([discovery.ListedRoom(r.sid, r.name) for r in resp.rooms])
            await asyncio.sleep(self.settings.poll_interval_s)

    def poll_once(self, listed: list[discovery.ListedRoom]) -> None:
        p = discovery.plan(
            listed,
            patterns=self.settings.room_patterns,
            busy=set(self.watchers),
            ended=self.ended_rooms,
            with_open_sessions=self.tracker.unwatched_rooms(),
        )
        now = utcnow()
        for sid in p.gone:
            self._emit(RoomGone(sid, now))
        for room in p.join if not self._stopping else ():
            watcher = RoomWatcher(room.name, room.sid, self._emit)
            self.watchers[room.sid] = watcher
            self._spawn(self._join(watcher), f"join:{room.name}")

    async def _join(self, watcher: RoomWatcher) -> None:
        token = observer_token(
            self.lk.api_key, self.lk.api_secret, self.identity, watcher.room_name
        )
        try:
            await watcher.join(self.lk.ws_url, token, JOIN_TIMEOUT_S)
            if self._stopping:
                self.watchers.pop(watcher.room_sid, None)
                self._emit(RoomLost(watcher.room_sid, "OBSERVER_STOPPED", utcnow()))
                await watcher.leave()
        except RoomMismatchError as exc:
            # Our join created a fresh room: the listed one ended in between.
            self.ended_rooms.add(watcher.room_sid)
            self.watchers.pop(watcher.room_sid, None)
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
        assert self._api is not None
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


def run_forever(settings: Settings, install_signals: Callable[[Observer], None]) -> int:
    lk = settings.require_livekit()
    store = Store(settings.database_url)

    async def main() -> int:
        obs = Observer(settings, store, lk)
        install_signals(obs)
        return await obs.run()

    try:
        return asyncio.run(main())
    finally:
        store.close()
