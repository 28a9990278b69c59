"""The daemon: wires room watchers and webhooks -> event queue -> tracker -> writer -> store,
with metrics and the HTTP server alongside."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from livekit import api
from sqlalchemy.exc import SQLAlchemyError

from observer import livekit_api
from observer.config import LiveKitSettings, Settings
from observer.core import discovery
from observer.core.changes import RequestListing, StuckAgents
from observer.core.events import (
    Blind,
    Event,
    Reconnecting,
    RoomJoined,
    RoomLost,
    Tick,
    UsageReported,
)
from observer.core.protocol_values import unknown_in
from observer.core.times import backoff_s, utcnow
from observer.core.tracker import SessionTracker
from observer.daemon import pulse, telemetry, webhooks
from observer.daemon.export_ledger import ExportLedger
from observer.daemon.fleet import Fleet
from observer.daemon.http import OPEN_PATHS, WebServer
from observer.daemon.identity import (
    IDENTITY_PREFIX,
    IdHeld,
    hold,
    new_run_id,
    participant_identity,
)
from observer.daemon.room_processes.pool import RoomProcessPool
from observer.daemon.rooms import Rooms
from observer.daemon.telemetry import Metrics, backed_up
from observer.daemon.writer import BufferFull, Writer
from observer.db.migrate import upgrade
from observer.db.store import Store
from observer.db.writes import WebhookRecord, Write
from observer.web.app import WebPage
from observer.web.guard import Access

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SCHEMA = 2
EXIT_ID_HELD = 2
EXIT_OVERFLOW = 3
TICK_S = 0.5
WEBHOOK_DB_WAIT_S = 2.0


class Observer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        lk: LiveKitSettings,
        metrics: Metrics | None = None,
        *,
        migrate: bool = False,
        run_id: str | None = None,
        agent_attributes: bool = True,
    ) -> None:
        """`agent_attributes`: a standard participant with an agent's attributes counts as
        an agent (for servers that drop the kind claim; see `participant_kind`)."""
        self.settings = settings
        self.agent_attributes = agent_attributes
        self.store = store
        self.lk = lk
        self.migrate = migrate
        self.metrics = metrics or Metrics()
        self.run_id = run_id or new_run_id()
        self.identity = participant_identity(settings.observer_id, self.run_id)
        self.tracker = SessionTracker(
            tracked_kinds=settings.track_kinds,
            last_seen_refresh_s=settings.last_seen_refresh_s,
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
            on_written=lambda writes: telemetry.observe_stored_writes(self.metrics, writes),
            on_backwards=lambda notes: telemetry.record_backwards(self.metrics, notes),
        )
        self.metrics.read_gauges(
            sessions_open=lambda: len(self.tracker.open_sessions),
            rooms_watched=lambda: self.tracker.watched_count,
            stuck_agents=lambda: self.tracker.stuck_agents,
            event_queue_depth=self.queue.qsize,
            db_pending_ops=lambda: self.writer.pending,
            rooms_unreachable=lambda: len(self.rooms.unreachable) if self.rooms else 0,
            ready=self.recording,
            rooms_listed=lambda: self.rooms.listed_count() if self.rooms else 0,
            room_process_fds=lambda: self.rooms.crowding.room_process_files() if self.rooms else 0,
            buffer_max=settings.queue_max,
            replicas_wanted=settings.replicas,
        )
        self.export_ledger = ExportLedger(self.metrics.registry)  # observer export's ledger
        self.rooms: Rooms | None = None
        self.fleet: Fleet | None = None
        self.pool: RoomProcessPool | None = None
        self.web: WebServer | None = None
        self.page_store: Store | None = None  # the page's threads and connections
        self.exit_code = EXIT_OK
        self._seen_webhooks = webhooks.SeenIds()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._api: livekit_api.Client | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def stop(self, code: int = EXIT_OK) -> None:
        self.exit_code = max(self.exit_code, code)
        self._stop.set()

    async def run(self) -> int:
        """Watch until stopped; return the process exit code."""
        self._api = livekit_api.client(self.lk, 10)
        if self.settings.room_processes:
            self.pool = RoomProcessPool(
                self.settings.room_processes,
                emit=lambda ev: self.rooms.emit(ev) if self.rooms else self._emit(ev),
                on_recovered=lambda w: self.rooms.recovered(w) if self.rooms else None,
                agent_attributes=self.agent_attributes,
            )
        self.fleet = Fleet(
            self.settings,
            self.store,
            self.metrics,
            run_id=self.run_id,
            rooms_inside=lambda: set(self.tracker.watched_rooms.values()),
            on_change=lambda: self.rooms.replan() if self.rooms else None,
            on_id_taken=lambda: self.stop(EXIT_ID_HELD),
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
            fleet=self.fleet,
            open_in_room=lambda sid: self.store.run(self.store.open_in_room, sid),
            agent_attributes=self.agent_attributes,
        )
        loop = asyncio.get_running_loop()
        # a gap in this process's life is a gap in what it saw (see observer.daemon.pulse)
        stop_listening = pulse.process_pulse().listen(
            lambda since, until: loop.call_soon_threadsafe(self._emit, Blind(since, until))
        )
        try:
            if await self._load_open_sessions():
                if self.pool is not None:
                    await self.pool.start()
                await self._start_web()
                await self.fleet.beat()  # know the other observers before placing rooms
                self._spawn(self.writer.run(), "writer")
                consumer = self._spawn(self._consume(), "consumer")
                self._spawn(self._tick(), "ticker")
                self._spawn(self.rooms.discover_forever(), "discovery")
                self._spawn(self.rooms.checks.check_forever(), "checks")
                self._spawn(self.rooms.crowding.keep_uncrowded_forever(), "crowding")
                self._spawn(self.fleet.run_forever(), "fleet")
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
            stop_listening()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.pool is not None:
                await self.pool.stop()
            if self.web is not None:
                await self.web.stop()
            if self.page_store is not None:
                self.page_store.close()
            await self._api.aclose()
        log.info("observer stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    async def _load_open_sessions(self) -> bool:
        """Wait for the database, check its schema, hold the observer id, and continue the
        sessions left open.

        A database that is not reachable is waited for; one that is reachable but has no
        schema or an old one stops the daemon (exit 2), unless it was told to migrate; so
        does an observer id that another live process holds."""
        attempt = 0
        while not self._stop.is_set():
            try:
                if not await self.store.run(self.store.schema_is_current):
                    if not self.migrate:
                        log.error(
                            "database schema is missing or old; run `observer migrate`,"
                            " or start with `observer run --migrate`",
                            extra={"database": self.settings.database_url_safe},
                        )
                        self.stop(EXIT_SCHEMA)
                        return False
                    await self.store.run(upgrade, self.settings.database_url)
                    log.info("database schema migrated to the newest revision")
                if not await self._hold_id():
                    return False
                sessions = await self.store.run(self.store.open_sessions, self.settings.observer_id)
            except (SQLAlchemyError, OSError) as exc:  # the database may still be starting
                attempt += 1
                delay = backoff_s(attempt, self.settings.db_retry_max_s)
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

    async def _hold_id(self) -> bool:
        """Become the one run of this observer id (see `identity.hold`)."""
        try:
            await self.store.run(hold, self.store, self.settings, self.run_id)
        except IdHeld as exc:
            log.error(
                "this OBSERVER_ID is held by another live observer; give each its own",
                extra={
                    "observer_id": self.settings.observer_id,
                    "host": exc.holder.host,
                    "pid": exc.holder.pid,
                },
            )
            self.stop(EXIT_ID_HELD)
            return False
        return True

    async def _start_web(self) -> None:
        if self.settings.http_host is None:
            return
        self.page_store = Store.for_page(
            self.settings.database_url, workers=self.settings.page_workers
        )
        self._spawn(self.export_ledger.refresh_forever(self.page_store), "export-ledger")
        access = Access.of(self.settings, self.settings.http_host, OPEN_PATHS)
        self.web = WebServer(
            receiver=api.WebhookReceiver(api.TokenVerifier(self.lk.api_key, self.lk.api_secret)),
            metrics=self.metrics,
            max_body_bytes=self.settings.webhook_max_bytes,
            on_webhook=self._on_webhook,
            on_usage=lambda report: self._emit(UsageReported(report)),
            readiness=self.readiness,
            access=access,
            page=WebPage(
                self.page_store,
                stuck_after_s=self.settings.stuck_agent_s,
                dead_after_s=self.settings.failover_s,
                access=access,
                readiness=self.readiness,
                livekit_url=", ".join(self.lk.urls),
            ).add_routes,
        )
        await self.web.start(self.settings.http_host, self.settings.http_port)
        if not self.settings.http_is_loopback:
            log.warning(
                "the HTTP server listens beyond this host"
                + (
                    "; /metrics and /readyz require the bearer token"
                    if self.settings.http_token
                    else "; /metrics and /readyz are open to anyone who can reach it:"
                    " set OBSERVER_HTTP_TOKEN, or listen on 127.0.0.1"
                ),
                extra={"host": self.settings.http_host, "port": self.settings.http_port},
            )

    async def _shutdown(self, consumer: asyncio.Task[Any]) -> None:
        """Leave every room. Open sessions stay open (their participants are still there);
        the next start continues them."""
        for t in list(self._tasks):
            if t.get_name() in ("ticker", "discovery", "checks"):
                t.cancel()
        if self.fleet is not None:
            await self.fleet.hand_over(timeout_s=self.settings.failover_s)
            for t in list(self._tasks):
                if t.get_name() == "fleet":
                    t.cancel()
        if self.rooms is not None:
            await self.rooms.leave_all()
        if self.fleet is not None:
            await self.fleet.leave()
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
            telemetry.record_unknown(self.metrics, unknown_in(ev))
            if isinstance(ev, Reconnecting):
                self.metrics.reconnects.inc()
            if isinstance(ev, RoomLost):
                telemetry.record_room_lost(self.metrics, ev, lambda: self.tracker.watched_rooms)
            if isinstance(ev, RoomJoined):
                self._joined(ev)
            out = self.tracker.handle(ev)
            telemetry.count_decided_writes(self.metrics, out.writes)
            self._submit(out.writes)
            for notice in out.notices:
                if isinstance(notice, StuckAgents) and self.fleet is not None and self.fleet.shared:
                    self._spawn(self._alert_once(notice), "stuck alert")
                    continue
                telemetry.record_notice(
                    self.metrics, notice, stuck_limit_s=self.settings.stuck_agent_s
                )
                if isinstance(notice, RequestListing) and self.rooms is not None:
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

    async def _alert_once(self, notice: StuckAgents) -> None:
        """With a shared database, the observer that claims the occurrence first raises the
        alert; the room's other observers stay quiet. If the claim cannot be written, alert."""
        try:
            claimed = await self.store.run(
                self.store.claim_stuck_alert,
                room_sid=notice.room_sid,
                room_name=notice.room_name,
                alone_since=notice.alone_since,
                observer_id=self.settings.observer_id,
                now=utcnow(),
            )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not claim a stuck-agent alert", extra={"detail": str(exc)})
            claimed = True
        if claimed:
            telemetry.record_notice(self.metrics, notice, stuck_limit_s=self.settings.stuck_agent_s)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            st = pulse.stamp()
            self._emit(Tick(st.at, st.blind_since))

    # ---- webhooks and health ------------------------------------------------------------

    async def _on_webhook(self, ev: api.WebhookEvent, body: str) -> str:
        """Handle a verified event: store it raw (once) and feed what it says to the tracker.

        The database decides whether an event is new, so a redelivery after a restart, or to
        another observer, is answered `duplicate`. While the database cannot answer, the
        event goes through the writer like any write and counts as new."""
        now = utcnow()
        if not self._seen_webhooks.first(ev.id, now):
            return "duplicate"
        if ev.event not in webhooks.KNOWN_EVENTS:
            telemetry.record_unknown(self.metrics, [("webhook_event", ev.event)])
        rec = webhooks.record(ev, body, now)
        try:
            stored = await self._store_webhook(rec)
        except BaseException:
            self._seen_webhooks.forget(ev.id)
            raise
        if stored is False:
            return "duplicate"
        if ev.num_dropped:
            log.warning(
                "livekit reports dropped webhook events",
                extra={"num_dropped": ev.num_dropped, "room": ev.room.name},
            )
        if ev.room.name and not discovery.matches(ev.room.name, self.settings.room_patterns):
            return "accepted"  # stored, but not a room this observer watches
        assert self.rooms is not None  # the HTTP server starts after the rooms
        if ev.event == "room_started" and ev.room.sid:
            self.rooms.join_now(discovery.ListedRoom(ev.room.sid, ev.room.name))
        for tracker_event in webhooks.translate(
            ev, IDENTITY_PREFIX, agent_attributes=self.agent_attributes
        ):
            self.rooms.emit(tracker_event)
        return "accepted"

    async def _store_webhook(self, rec: WebhookRecord) -> bool | None:
        """True if stored now, False if already stored; None if handed to the writer."""
        if self.writer.failing_since is None:
            try:
                return await asyncio.wait_for(
                    self.store.run(self.store.record_webhook, rec), WEBHOOK_DB_WAIT_S
                )
            except (SQLAlchemyError, TimeoutError):
                pass
        self._submit([rec])  # idempotent: a late direct insert and this one store it once
        return None

    def recording(self) -> bool:
        """`observer_ready`: /readyz from what the daemon already knows (the last listing,
        the heartbeats' and the writer's database answers, the backlog), without asking."""
        q, w = self.queue.qsize(), self.writer.pending
        return bool(
            self.rooms and self.rooms.listing_ok and self.fleet and self.fleet.database_answers
        ) and not (self.writer.failing_since or backed_up(q, w, self.settings.queue_max))

    async def readiness(self) -> list[str]:
        """What keeps recording from working right now (empty when ready): LiveKit, the
        database's answers and writes, events or writes backed up. The page's load is not
        of it: the database is asked on recording's threads and connections."""
        assert self._api is not None
        problems: list[str] = []
        try:
            await asyncio.wait_for(self._api.room.list_rooms(api.ListRoomsRequest()), 3)
        except livekit_api.API_ERRORS as exc:
            problems.append(f"livekit unreachable: {type(exc).__name__}")
        try:
            await asyncio.wait_for(self.store.run(self.store.ping), 3)
        except (SQLAlchemyError, TimeoutError) as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        if self.writer.failing_since is not None:
            problems.append(f"database writes failing; {self.writer.pending} changes waiting")
        return problems + backed_up(
            self.queue.qsize(), self.writer.pending, self.settings.queue_max
        )
