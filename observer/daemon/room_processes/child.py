"""The worker's side of a room process: hold the rooms the daemon asks for, one join at a
time, and send back what their watchers see. Messages come on stdin and go out on stdout
(`channel`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from livekit import rtc

from observer.core.events import Blind
from observer.daemon import pulse
from observer.daemon.join_turn import join_in_turn
from observer.daemon.room_processes import channel
from observer.daemon.room_processes.proto import (
    FromWorker,
    Join,
    Joined,
    JoinFailedReply,
    JoinMismatch,
    Leave,
    Left,
    Reconnected,
    Recovered,
    Renew,
    Renewed,
    RoomEvent,
)
from observer.daemon.sdk_internals import start_native_core_or_fall_back
from observer.daemon.watcher import RoomMismatchError, RoomWatcher

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0
# After the daemon closed the pipe: how long joins in flight may take to land.
DRAIN_TIMEOUT_S = 15.0


class Worker:
    """The rooms one worker holds, and the joins and leaves in flight."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.watchers: dict[str, RoomWatcher] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._join_lock = asyncio.Semaphore(1)

    def send(self, message: FromWorker) -> None:
        with contextlib.suppress(OSError):  # the daemon is gone; we are leaving anyway
            self._out.write(channel.encode(message))
            self._out.flush()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self, msg: Join) -> None:
        sid = msg.room_sid
        w = RoomWatcher(
            msg.room_name,
            sid,
            lambda ev: self.send(RoomEvent(ev)),
            on_recovered=lambda w: self.send(Reconnected(w.room_sid)),
            agent_attributes=msg.agent_attributes,
        )
        self.watchers[sid] = w
        try:
            await join_in_turn(
                self._join_lock, lambda: w.join(msg.ws_url, msg.token, msg.connect_timeout_s)
            )
        except RoomMismatchError as exc:
            self.watchers.pop(sid, None)
            self.send(JoinMismatch(sid, exc.joined_sid))
            return
        except (rtc.ConnectError, TimeoutError, OSError) as exc:
            self.watchers.pop(sid, None)
            detail = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            self.send(JoinFailedReply(sid, detail))
            return
        except Exception as exc:  # the daemon must hear back, whatever happened
            log.exception("joining a room failed", extra={"room": msg.room_name})
            self.watchers.pop(sid, None)
            with contextlib.suppress(Exception):
                await w.leave()
            self.send(JoinFailedReply(sid, f"{type(exc).__name__}: {exc}"))
            return
        self.send(Joined(sid))

    async def leave(self, sid: str) -> None:
        w = self.watchers.pop(sid, None)
        if w is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.leave(), LEAVE_TIMEOUT_S)
        self.send(Left(sid))

    async def renew(self, msg: Renew) -> None:
        """Join the room afresh, in turn; answered by `Renewed` whatever came of it (what it
        did arrives as the room's events first)."""
        w = self.watchers.get(msg.room_sid)

        def start() -> Coroutine[Any, Any, None] | None:
            if w is None or self.watchers.get(msg.room_sid) is not w:
                return None
            return w.renew(msg.ws_url, msg.token, msg.connect_timeout_s)

        try:
            await join_in_turn(self._join_lock, start)
        except Exception:
            log.exception("joining a room afresh failed", extra={"room_sid": msg.room_sid})
        finally:
            self.send(Renewed(msg.room_sid))

    def recovered(self, msg: Recovered) -> None:
        w = self.watchers.get(msg.room_sid)
        if w is not None:
            w.recovered(msg.same_room)


async def serve() -> None:
    """Run in a worker until the daemon closes stdin."""
    start_native_core_or_fall_back()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=channel.STREAM_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker(sys.stdout.buffer)

    # a gap in this process's life is a gap in what it saw of its rooms
    pulse.process_pulse().listen(
        lambda since, until: loop.call_soon_threadsafe(
            worker.send, RoomEvent(Blind(since, until, frozenset(worker.watchers)))
        )
    )

    while (message := await channel.read(reader)) is not None:
        match message:
            case Join():
                worker.spawn(worker.join(message))
            case Leave(room_sid=sid):
                worker.spawn(worker.leave(sid))
            case Recovered():
                worker.recovered(message)
            case Renew():
                worker.spawn(worker.renew(message))
            case _:
                raise channel.ProtocolError(f"unexpected from the daemon: {message!r}")
    # stdin closed. On a clean stop the daemon has had us leave every room already. If rooms
    # are still held, the daemon died: exit without leaving them one by one (a storm of
    # leaves next to the new daemon's joins); the server drops this process's participants
    # on its own, some 20 s later (measured), and the next daemon joins as its own identity.
    if worker.tasks and not worker.watchers:
        await asyncio.wait(list(worker.tasks), timeout=DRAIN_TIMEOUT_S)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve())
    sys.stdout.flush()
    os._exit(0)  # skip the rtc SDK's exit-time teardown, which can abort the process
