"""The daemon's side of the room processes: the workers, replaced when one dies, and a
stand-in (`RemoteWatcher`) for each room a worker holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from observer.core import events as tracked
from observer.core.events import Event, Reconnecting, RoomClosed, RoomLost
from observer.core.vocab import OBSERVER_PROCESS_EXITED
from observer.daemon.room_processes import channel
from observer.daemon.room_processes.proto import (
    Join,
    Joined,
    JoinFailedReply,
    JoinMismatch,
    JoinReply,
    Leave,
    Left,
    Reconnected,
    Recovered,
    Renew,
    Renewed,
    RoomEvent,
    ToWorker,
)
from observer.daemon.watcher import RoomMismatchError

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
# A worker answers every join; this only guards against one that never does (the SDK tries
# a join up to 4 times, each bounded by the connect timeout).
JOIN_REPLY_TIMEOUT_S = 90.0


class JoinFailed(Exception):
    """A worker could not join the room (the SDK's connect failed or timed out)."""


class RemoteWatcher:
    """Stands in the daemon for a `RoomWatcher` that lives in a worker."""

    def __init__(self, pool: RoomProcessPool, room_name: str, room_sid: str) -> None:
        self.pool = pool
        self.process = pool.processes[0]
        self.room_name = room_name
        self.room_sid = room_sid
        self.recovering = False
        self._joined: asyncio.Future[None] | None = None
        self._left: asyncio.Future[None] | None = None
        self._renewed: asyncio.Future[None] | None = None

    async def join(self, ws_url: str, token: str, connect_timeout_s: float) -> None:
        self.process = self.pool.pick()
        self._joined = asyncio.get_running_loop().create_future()
        self.process.watchers[self.room_sid] = self
        self.process.joining += 1
        self.process.send(
            Join(
                self.room_name,
                self.room_sid,
                ws_url,
                token,
                connect_timeout_s,
                self.pool.agent_attributes,
            )
        )
        try:
            await asyncio.wait_for(self._joined, JOIN_REPLY_TIMEOUT_S)
        except TimeoutError:
            self.process.watchers.pop(self.room_sid, None)
            self.process.send(Leave(self.room_sid))
            raise JoinFailed("no answer from the room process") from None
        except (RoomMismatchError, JoinFailed):
            self.process.watchers.pop(self.room_sid, None)
            raise
        finally:
            self.process.joining -= 1

    async def leave(self) -> None:
        if self.process.watchers.get(self.room_sid) is not self or not self.process.alive:
            return
        self._left = asyncio.get_running_loop().create_future()
        self.process.send(Leave(self.room_sid))
        try:
            await self._left
        finally:
            self.process.watchers.pop(self.room_sid, None)

    def recovered(self, same_room: bool) -> None:
        self.recovering = False
        if self.process.alive:
            self.process.send(Recovered(self.room_sid, same_room))

    async def renew(self, ws_url: str, token: str, connect_timeout_s: float) -> None:
        """Have the worker join the room afresh (see `RoomWatcher.renew`); what came of it
        arrives as the room's events, before the worker's answer."""
        if self.process.watchers.get(self.room_sid) is not self or not self.process.alive:
            return
        self._renewed = asyncio.get_running_loop().create_future()
        self.process.send(Renew(self.room_sid, ws_url, token, connect_timeout_s))
        try:
            await asyncio.wait_for(self._renewed, JOIN_REPLY_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "no answer from the room process to a renewal", extra={"room": self.room_name}
            )
        finally:
            self._renewed = None

    def renewed(self) -> None:
        """The worker is done with this room's renewal (or its process is gone)."""
        if self._renewed is not None and not self._renewed.done():
            self._renewed.set_result(None)

    def answered(self, reply: JoinReply) -> None:
        """The worker's answer to this room's join."""
        fut = self._joined
        if fut is None or fut.done():
            return
        match reply:
            case Joined():
                fut.set_result(None)
            case JoinMismatch(joined_sid=joined_sid):
                fut.set_exception(RoomMismatchError(self.room_sid, joined_sid))
            case JoinFailedReply(detail=detail):
                fut.set_exception(JoinFailed(detail))

    def left(self) -> None:
        """The worker left the room (or its process is gone)."""
        if self._left is not None and not self._left.done():
            self._left.set_result(None)


class RoomProcess:
    """One worker process and the rooms it holds."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.watchers: dict[str, RemoteWatcher] = {}
        self.joining = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, message: ToWorker) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(channel.encode(message))


class RoomProcessPool:
    """Worker processes holding the rooms; replaced when one dies."""

    def __init__(
        self,
        processes: int,
        *,
        emit: Callable[[Event], None],
        on_recovered: Callable[[RemoteWatcher], None],
        agent_attributes: bool = True,
    ) -> None:
        self.processes = [RoomProcess(i) for i in range(processes)]
        self.agent_attributes = agent_attributes
        self._emit = emit
        self._on_recovered = on_recovered
        self._readers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        for process in self.processes:
            await self._spawn(process)

    def watcher(self, room_name: str, room_sid: str) -> RemoteWatcher:
        """A watcher; it goes to a worker when it joins."""
        return RemoteWatcher(self, room_name, room_sid)

    def pick(self) -> RoomProcess:
        """The worker to join the next room: alive, fewest joins running, fewest rooms."""
        return min(self.processes, key=lambda p: (not p.alive, p.joining, len(p.watchers)))

    async def stop(self) -> None:
        self._stopping = True
        for process in self.processes:
            if process.alive and process.proc is not None and process.proc.stdin is not None:
                process.proc.stdin.close()
        for process in self.processes:
            if process.proc is None:
                continue
            try:
                await asyncio.wait_for(process.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.proc.kill()
                await process.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _spawn(self, process: RoomProcess) -> None:
        process.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "observer.daemon.room_processes",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=channel.STREAM_LIMIT,
        )
        self._readers.append(
            asyncio.create_task(self._read(process), name=f"room-process-{process.index}")
        )
        log.info("room process started", extra={"index": process.index, "pid": process.proc.pid})

    async def _read(self, process: RoomProcess) -> None:
        try:
            await self._read_until_exit(process)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from a room process failed", extra={"index": process.index})
            if process.proc is not None and process.proc.returncode is None:
                process.proc.kill()

    async def _read_until_exit(self, process: RoomProcess) -> None:
        proc = process.proc
        assert proc is not None and proc.stdout is not None
        while (message := await channel.read(proc.stdout)) is not None:
            match message:
                case RoomEvent(event=ev):
                    self._event(process, ev)
                case Reconnected(room_sid=sid):
                    if (w := process.watchers.get(sid)) is not None:
                        w.recovering = True
                        self._on_recovered(w)
                case Joined() | JoinMismatch() | JoinFailedReply():
                    if (w := process.watchers.get(message.room_sid)) is not None:
                        w.answered(message)
                case Left(room_sid=sid):
                    if (w := process.watchers.get(sid)) is not None:
                        w.left()
                case Renewed(room_sid=sid):
                    if (w := process.watchers.get(sid)) is not None:
                        w.renewed()
                case _:
                    raise channel.ProtocolError(f"unexpected from a worker: {message!r}")
        await proc.wait()
        if not self._stopping:
            await self._replace(process)

    def _event(self, process: RoomProcess, ev: Event) -> None:
        w = process.watchers.get(getattr(ev, "room_sid", ""))
        if w is not None:
            if isinstance(ev, Reconnecting):
                w.recovering = True
            elif isinstance(ev, (RoomLost, RoomClosed, tracked.Reconnected)):
                w.recovering = False  # a Reconnected arrives once the recovery is settled
        self._emit(ev)

    async def _replace(self, process: RoomProcess) -> None:
        """A worker died: its rooms are lost (their sessions stay open until the rooms are
        joined again from the next listing) and a new worker takes its place."""
        code = process.proc.returncode if process.proc is not None else None
        log.error("room process exited; replacing it", extra={"index": process.index, "code": code})
        now = datetime.now(UTC)
        lost, process.watchers = process.watchers, {}
        for w in lost.values():
            w.answered(JoinFailedReply(w.room_sid, "room process exited"))
            w.left()
            w.renewed()
            self._emit(RoomLost(w.room_sid, OBSERVER_PROCESS_EXITED, now))
        await asyncio.sleep(1)
        if not self._stopping:
            await self._spawn(process)
