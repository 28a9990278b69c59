"""The daemon: wires room watchers and webhooks -> event queue -> tracker -> writer -> store,
with metrics and the HTTP server alongside."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
from livekit import api

from observer.config import LiveKitSettings, Settings
from observer.core import discovery
from observer.core.times import utcnow
from observer.core.tracker import (
    Event,
    Listed,
    Reconnecting,
    RoomClosed,
    RoomJoined,
    RoomLost,
    SessionTracker,
    Tick,
    Verify,
    WebhookRoomFinished,
)
from observer.daemon import telemetry, webhooks
from observer.daemon.http import WebServer
from observer.daemon.rooms import Rooms
from observer.daemon.shards import ShardPool
from observer.daemon.telemetry import Metrics
from observer.daemon.watcher import start_native_core_quietly
from observer.daemon.writer import BufferFull, Writer
from observer.db.store import Store
from observer.db.writes import Write

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_OVERFLOW = 3
TICK_S = 0.5
SEEN_WEBHOOKS_MAX = 50_000
IDENTITY_PREFIX = "lk-observer-"


class Observer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        lk: LiveKitSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.lk = lk
        self.metrics = metrics or Metrics()
        self.identity = IDENTITY_PREFIX + settings.observer_id
        self.tracker = SessionTracker(
            tracked_kinds=settings.track_kinds,
            heartbeat_s=settings.heartbeat_s,
            stuck_after_s=settings.stuck_agent_s,
        )
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=settings.queue_max)
        self.writer = Writer(
            store,
            settings.observer_id,
            retry_max_s=settings.db_retry_max_s,
            max_pending=settings.queue_max,
            on_error=lambda _exc: self.metrics.db_errors.inc(),
            on_retry=self.metrics.db_retries.inc,
            on_written=lambda writes: telemetry.record_written(self.metrics, writes),
        )
        self.metrics.read_gauges(
            sessions_open=lambda: len(self.tracker.open_sessions),
            rooms_watched=lambda: self.tracker.watched_count,
            stuck_agents=lambda: self.tracker.stuck_agents,
            event_queue_depth=self.queue.qsize,
            db_pending_ops=lambda: self.writer.pending,
        )
        self.rooms: Rooms | None = None
        self.pool: ShardPool | None = None
        self.web: WebServer | None = None
        self.exit_code = EXIT_OK
        self._seen_webhooks: OrderedDict[str, None] = OrderedDict()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._api: api.LiveKitAPI | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def stop(self, code: int = EXIT_OK) -> None:
        self.exit_code = max(self.exit_code, code)
        self._stop.set()

    async def run(self) -> int:
        """Watch until stopped; return the process exit code."""
        self._api = api.LiveKitAPI(
            self.lk.http_url,
            self.lk.api_key,
            self.lk.api_secret,
            timeout=aiohttp.ClientTimeout(total=10),
        )
        if self.settings.room_processes:
            self.pool = ShardPool(
                self.settings.room_processes,
                emit=self._emit,
                on_recovered=lambda w: self.rooms.recovered(w) if self.rooms else None,
            )
        self.rooms = Rooms(
            self.settings,
            self.lk,
            self._api,
            self.identity,
            emit=self._emit,
            spawn=self._spawn,
            unwatched_with_sessions=self.tracker.unwatched_rooms,
            pool=self.pool,
        )
        try:
            if await self._load_open_sessions():
                if self.pool is not None:
                    await self.pool.start()
                await self._start_web()
                self._spawn(self.writer.run(), "writer")
                consumer = self._spawn(self._consume(), "consumer")
                self._spawn(self._tick(), "ticker")
                self._spawn(self.rooms.discover_forever(), "discovery")
                self._spawn(self.rooms.check_forever(), "checks")
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
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.pool is not None:
                await self.pool.stop()
            if self.web is not None:
                await self.web.stop()
            await self._api.aclose()
        log.info("observer stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    async def _load_open_sessions(self) -> bool:
        attempt = 0
        while not self._stop.is_set():
            try:
                sessions = await asyncio.to_thread(
                    self.store.open_sessions, self.settings.observer_id
                )
            except Exception as exc:  # the database may still be starting
                attempt += 1
                delay = min(self.settings.db_retry_max_s, 0.5 * 2**attempt)
                log.warning(
                    "database not reachable at start; retrying",
                    extra={"attempt": attempt, "retry_in_s": delay, "error": type(exc).__name__},
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                self.tracker.seed(sessions)
                return True
        return False

    async def _start_web(self) -> None:
        if self.settings.http_host is None:
            return
        self.web = WebServer(
            receiver=api.WebhookReceiver(api.TokenVerifier(self.lk.api_key, self.lk.api_secret)),
            metrics=self.metrics,
            max_body_bytes=self.settings.webhook_max_bytes,
            on_webhook=self._on_webhook,
            readiness=self.readiness,
        )
        await self.web.start(self.settings.http_host, self.settings.http_port)

    async def _shutdown(self, consumer: asyncio.Task[Any]) -> None:
        """Leave every room. Open sessions stay open (their participants are still there);
        the next start continues them."""
        for t in list(self._tasks):
            if t.get_name() in ("ticker", "discovery", "checks"):
                t.cancel()
        if self.rooms is not None:
            await self.rooms.leave_all()
        try:
            if not consumer.done():
                await asyncio.wait_for(self.queue.join(), 10)
            await asyncio.wait_for(self.writer.wait_idle(), 15)
        except TimeoutError:
            log.error(
                "stopped with unwritten changes; the next start reconciles them",
                extra={"waiting_ops": self.writer.pending},
            )
            self.exit_code = max(self.exit_code, EXIT_FAILED)

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
            self.stop(EXIT_FAILED)

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

    def _submit(self, writes: Sequence[Write]) -> None:
        try:
            self.writer.submit(writes)
        except BufferFull as exc:
            log.error(
                "database buffer full; stopping so that nothing is silently lost",
                extra={"detail": str(exc)},
            )
            self.stop(EXIT_OVERFLOW)

    async def _consume(self) -> None:
        while True:
            ev = await self.queue.get()
            if isinstance(ev, (RoomClosed, RoomLost, WebhookRoomFinished)) and self.rooms:
                self.rooms.forget(ev.room_sid, ended=not isinstance(ev, RoomLost))
            if isinstance(ev, Listed) and not ev.exists and self.rooms:
                self.rooms.ended.add(ev.room_sid)
            if isinstance(ev, Reconnecting):
                self.metrics.reconnects.inc()
            if isinstance(ev, RoomJoined):
                self._joined(ev)
            out = self.tracker.handle(ev)
            telemetry.record_writes(self.metrics, out.writes)
            self._submit(out.writes)
            for notice in out.notices:
                telemetry.record_notice(
                    self.metrics, notice, stuck_limit_s=self.settings.stuck_agent_s
                )
                if isinstance(notice, Verify) and self.rooms is not None:
                    self.rooms.verify(notice.room_sid, notice.room_name)
            self.queue.task_done()

    def _joined(self, ev: RoomJoined) -> None:
        latency = self.rooms.join_latency_s(ev.room_sid) if self.rooms else None
        if latency is not None:
            self.metrics.room_join_latency.observe(latency)
        log.info(
            "room joined",
            extra={"room": ev.room_name, "room_sid": ev.room_sid, "present": len(ev.present)},
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._emit(Tick(utcnow()))

    # ---- webhooks and health ------------------------------------------------------------

    def _on_webhook(self, ev: api.WebhookEvent, body: str) -> str:
        """Handle a verified event: store it raw (once) and feed what it says to the tracker."""
        if ev.id in self._seen_webhooks:
            return "duplicate"
        self._seen_webhooks[ev.id] = None
        if len(self._seen_webhooks) > SEEN_WEBHOOKS_MAX:
            self._seen_webhooks.popitem(last=False)
        if ev.num_dropped:
            log.warning(
                "livekit reports dropped webhook events",
                extra={"num_dropped": ev.num_dropped, "room": ev.room.name},
            )
        self._submit([webhooks.record(ev, body, utcnow())])
        if ev.room.name and not discovery.matches(ev.room.name, self.settings.room_patterns):
            return "accepted"  # stored, but not a room this observer watches
        if ev.event == "room_started" and ev.room.sid:
            assert self.rooms is not None
            self.rooms.join_now(discovery.ListedRoom(ev.room.sid, ev.room.name))
        for tracker_event in webhooks.translate(ev, IDENTITY_PREFIX):
            self._emit(tracker_event)
        return "accepted"

    async def readiness(self) -> list[str]:
        """What is not working right now (empty when ready)."""
        assert self._api is not None
        problems: list[str] = []
        try:
            await asyncio.wait_for(self._api.room.list_rooms(api.ListRoomsRequest()), 3)
        except Exception as exc:
            problems.append(f"livekit unreachable: {type(exc).__name__}")
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), 3)
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        if self.writer.failing_since is not None:
            problems.append(f"database writes failing; {self.writer.pending} changes waiting")
        return problems


# Measured: each watched room holds a few sockets and pipes (one peer connection, ICE
# candidates gathered once); see bench/bench_fleet.py. Kept with a margin.
FDS_PER_ROOM = 5


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    level = logging.WARNING if soft // FDS_PER_ROOM < 100 else logging.INFO
    log.log(
        level, "open files limit", extra={"limit": soft, "rooms_it_allows": soft // FDS_PER_ROOM}
    )
    return soft


def run_forever(settings: Settings, install_signals: Callable[[Observer], None]) -> int:
    lk = settings.require_livekit()
    raise_fd_limit()
    if not settings.room_processes:
        start_native_core_quietly()
    store = Store(settings.database_url)

    async def main() -> int:
        obs = Observer(settings, store, lk)
        install_signals(obs)
        return await obs.run()

    try:
        return asyncio.run(main())
    finally:
        store.close()
