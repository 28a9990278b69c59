"""Room connections held in worker processes, for fleets.

One process joins rooms one at a time: joins that overlap in one rtc SDK multiply the
sockets each room keeps (measured: 3 per room joined alone, 6-28 with 2-8 joins at once),
and one join takes ~0.1 s. So a fleet's rooms are spread over several processes, each with
its own SDK, joining one room at a time. A worker only holds `RoomWatcher`s: it runs
`python -m observer.daemon.shards`, takes commands on stdin and sends back the watchers' tracker
events on stdout (length-prefixed pickles between the daemon and its own children). The
daemon keeps everything else: tracker, database, webhooks, listings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from observer.core.tracker import Blind, Event, Reconnecting, RoomClosed, RoomLost

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
STOP_TIMEOUT_S = 20.0
# A worker answers every join; this only guards against one that never does (the SDK tries
# a join up to 4 times, each bounded by the connect timeout).
JOIN_REPLY_TIMEOUT_S = 90.0


class JoinFailed(Exception):
    """A worker could not join the room (the SDK's connect failed or timed out)."""


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    message = pickle.loads(body)
    assert isinstance(message, tuple)
    return message


# ---- the daemon's side ------------------------------------------------------------------


class RemoteWatcher:
    """Stands in the daemon for a `RoomWatcher` that lives in a worker."""

    def __init__(self, pool: ShardPool, room_name: str, room_sid: str) -> None:
        self.pool = pool
        self.shard = pool.shards[0]
        self.room_name = room_name
        self.room_sid = room_sid
        self.recovering = False
        self._joined: asyncio.Future[None] | None = None
        self._left: asyncio.Future[None] | None = None

    async def join(self, ws_url: str, token: str, connect_timeout_s: float) -> None:
        from observer.daemon.watcher import RoomMismatchError

        self.shard = self.pool.pick()
        self._joined = asyncio.get_running_loop().create_future()
        self.shard.watchers[self.room_sid] = self
        self.shard.joining += 1
        self.shard.send(("join", self.room_name, self.room_sid, ws_url, token, connect_timeout_s))
        try:
            await asyncio.wait_for(self._joined, JOIN_REPLY_TIMEOUT_S)
        except TimeoutError:
            self.shard.watchers.pop(self.room_sid, None)
            self.shard.send(("leave", self.room_sid))
            raise JoinFailed("no answer from the room process") from None
        except (RoomMismatchError, JoinFailed):
            self.shard.watchers.pop(self.room_sid, None)
            raise
        finally:
            self.shard.joining -= 1

    async def leave(self) -> None:
        if self.shard.watchers.get(self.room_sid) is not self or not self.shard.alive:
            return
        self._left = asyncio.get_running_loop().create_future()
        self.shard.send(("leave", self.room_sid))
        try:
            await self._left
        finally:
            self.shard.watchers.pop(self.room_sid, None)

    def recovered(self, same_room: bool) -> None:
        self.recovering = False
        if self.shard.alive:
            self.shard.send(("recovered", self.room_sid, same_room))

    def _resolve(self, kind: str, detail: str = "") -> None:
        from observer.daemon.watcher import RoomMismatchError

        fut = self._joined
        if kind == "left":
            fut = self._left
        if fut is None or fut.done():
            return
        if kind in ("joined", "left"):
            fut.set_result(None)
        elif kind == "mismatch":
            fut.set_exception(RoomMismatchError(self.room_sid, detail))
        else:
            fut.set_exception(JoinFailed(detail))


class Shard:
    """One worker process and the rooms it holds."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.watchers: dict[str, RemoteWatcher] = {}
        self.joining = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, message: tuple[Any, ...]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(frame(message))


class ShardPool:
    """Worker processes holding the rooms; replaced when one dies."""

    def __init__(
        self,
        processes: int,
        *,
        emit: Callable[[Event], None],
        on_recovered: Callable[[Any], None],
    ) -> None:
        self.shards = [Shard(i) for i in range(processes)]
        self._emit = emit
        self._on_recovered = on_recovered
        self._readers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        for shard in self.shards:
            await self._spawn(shard)

    def watcher(self, room_name: str, room_sid: str) -> RemoteWatcher:
        """A watcher; it goes to a worker when it joins."""
        return RemoteWatcher(self, room_name, room_sid)

    def pick(self) -> Shard:
        """The worker to join the next room: alive, fewest joins running, fewest rooms."""
        return min(self.shards, key=lambda s: (not s.alive, s.joining, len(s.watchers)))

    async def stop(self) -> None:
        self._stopping = True
        for shard in self.shards:
            if shard.alive and shard.proc is not None and shard.proc.stdin is not None:
                shard.proc.stdin.close()
        for shard in self.shards:
            if shard.proc is None:
                continue
            try:
                await asyncio.wait_for(shard.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                shard.proc.kill()
                await shard.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _spawn(self, shard: Shard) -> None:
        shard.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "observer.daemon.shards",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        self._readers.append(asyncio.create_task(self._read(shard), name=f"shard-{shard.index}"))
        log.info("room process started", extra={"index": shard.index, "pid": shard.proc.pid})

    async def _read(self, shard: Shard) -> None:
        try:
            await self._read_until_exit(shard)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from a room process failed", extra={"index": shard.index})
            if shard.proc is not None and shard.proc.returncode is None:
                shard.proc.kill()

    async def _read_until_exit(self, shard: Shard) -> None:
        proc = shard.proc
        assert proc is not None and proc.stdout is not None
        while (message := await read_frame(proc.stdout)) is not None:
            kind, sid = message[0], message[1]
            if kind == "event":
                self._event(shard, message[1])
                continue
            w = shard.watchers.get(sid)
            if w is None:
                continue
            if kind == "on_recovered":
                w.recovering = True
                self._on_recovered(w)
            else:
                w._resolve(kind, message[2] if len(message) > 2 else "")
        await proc.wait()
        if not self._stopping:
            await self._replace(shard)

    def _event(self, shard: Shard, ev: Event) -> None:
        w = shard.watchers.get(getattr(ev, "room_sid", ""))
        if w is not None:
            if isinstance(ev, Reconnecting):
                w.recovering = True
            elif isinstance(ev, (RoomLost, RoomClosed)):
                w.recovering = False
        self._emit(ev)

    async def _replace(self, shard: Shard) -> None:
        """A worker died: its rooms are lost (their sessions stay open until the rooms are
        joined again from the next listing) and a new worker takes its place."""
        code = shard.proc.returncode if shard.proc is not None else None
        log.error("room process exited; replacing it", extra={"index": shard.index, "code": code})
        now = datetime.now(UTC)
        lost, shard.watchers = shard.watchers, {}
        for w in lost.values():
            w._resolve("failed", "room process exited")
            w._resolve("left")
            self._emit(RoomLost(w.room_sid, "OBSERVER_PROCESS_EXITED", now))
        await asyncio.sleep(1)
        if not self._stopping:
            await self._spawn(shard)


# ---- the worker's side ------------------------------------------------------------------


async def serve() -> None:
    """Run in a worker: hold the rooms the daemon asks for, one join at a time."""
    from livekit import rtc

    from observer.daemon import pulse
    from observer.daemon.rooms import join_in_turn
    from observer.daemon.watcher import RoomMismatchError, RoomWatcher, start_native_core_quietly

    start_native_core_quietly()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    watchers: dict[str, RoomWatcher] = {}
    join_lock = asyncio.Semaphore(1)
    tasks: set[asyncio.Task[None]] = set()

    def send(message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the daemon is gone; we are leaving anyway
            out.write(frame(message))
            out.flush()

    async def join(name: str, sid: str, ws_url: str, token: str, timeout_s: float) -> None:
        w = RoomWatcher(
            name,
            sid,
            lambda ev: send(("event", ev)),
            on_recovered=lambda w: send(("on_recovered", w.room_sid)),
        )
        watchers[sid] = w
        try:
            await join_in_turn(join_lock, lambda: w.join(ws_url, token, timeout_s))
        except RoomMismatchError as exc:
            watchers.pop(sid, None)
            send(("mismatch", sid, exc.joined_sid))
            return
        except (rtc.ConnectError, TimeoutError, OSError) as exc:
            watchers.pop(sid, None)
            send(("failed", sid, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"))
            return
        except Exception as exc:  # the daemon must hear back, whatever happened
            log.exception("joining a room failed", extra={"room": name})
            watchers.pop(sid, None)
            with contextlib.suppress(Exception):
                await w.leave()
            send(("failed", sid, f"{type(exc).__name__}: {exc}"))
            return
        send(("joined", sid))

    async def leave(sid: str) -> None:
        w = watchers.pop(sid, None)
        if w is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.leave(), 5)
        send(("left", sid))

    # a gap in this process's life is a gap in what it saw of its rooms
    pulse.process_pulse().listen(
        lambda since, until: loop.call_soon_threadsafe(
            send, ("event", Blind(since, until, frozenset(watchers)))
        )
    )

    def spawn(coro: Any) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    while (message := await read_frame(reader)) is not None:
        match message:
            case ("join", name, sid, ws_url, token, timeout_s):
                spawn(join(name, sid, ws_url, token, timeout_s))
            case ("leave", sid):
                spawn(leave(sid))
            case ("recovered", sid, same_room):
                w = watchers.get(sid)
                if w is not None:
                    w.recovered(same_room)
    # stdin closed. On a clean stop the daemon has had us leave every room already. If rooms
    # are still held, the daemon died: exit without leaving them one by one (a storm of
    # leaves next to the new daemon's joins); the server drops this process's participants
    # on its own, some 20 s later (measured), and the next daemon joins as its own identity.
    if tasks and not watchers:
        await asyncio.wait(list(tasks), timeout=15)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve())
    sys.stdout.flush()
    import os

    os._exit(0)  # skip the rtc SDK's exit-time teardown, which can abort the process


if __name__ == "__main__":
    main()
