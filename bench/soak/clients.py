"""The soak run's participants: real rtc clients (agents and callers) that publish audio,
each keeping its own record of when it was in its room, and the comparison of that record
with the `sessions` rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime

from livekit import rtc

from observer.config import LiveKitSettings
from observer.daemon.watcher import room_options
from observer.simulate import agent_token, user_token


@dataclass
class Stay:
    """One client's own record: it was in `room` at least from `joined` (its connect call
    returned) to `leaving` (it called disconnect), both epoch seconds."""

    identity: str
    room: str
    kind: str  # "agent" or "standard"
    joined: float
    leaving: float | None = None


@dataclass
class Clients:
    lk: LiveKitSettings
    audio: bool = True  # publish a (silent) microphone track
    stays: list[Stay] = field(default_factory=list)
    failed: int = 0
    live: dict[str, rtc.Room] = field(default_factory=dict)
    late: set[asyncio.Future[None]] = field(default_factory=set)  # connects past the limit
    late_joined: int = 0  # of them, those that landed after all (and were left at once)

    async def join(self, identity: str, room: str, kind: str) -> rtc.Room | None:
        token = (
            agent_token(self.lk, identity, room, "soak")
            if kind == "agent"
            else user_token(self.lk, identity, room)
        )
        r = rtc.Room()
        # Never cancel a connect in flight (as asyncio.wait_for would at its timeout): the
        # SDK's native core waits for the connected room's first request from Python, and
        # panics, ending the process, when it never comes. A connect past the limit counts
        # as failed and is left when it lands.
        connecting = asyncio.ensure_future(r.connect(self.lk.ws_url, token, room_options(10)))
        done, _ = await asyncio.wait({connecting}, timeout=30)
        if not done:
            self.failed += 1
            self.late.add(connecting)
            connecting.add_done_callback(lambda _: self._leave_late(r, connecting))
            return None
        try:
            connecting.result()
            if self.audio:
                source = rtc.AudioSource(48000, 1)
                track = rtc.LocalAudioTrack.create_audio_track("voice", source)
                opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                await asyncio.wait_for(r.local_participant.publish_track(track, opts), 30)
        except Exception:
            self.failed += 1
            with contextlib.suppress(Exception):
                await r.disconnect()
            return None
        self.stays.append(Stay(identity, room, kind, time.time()))
        self.live[identity] = r
        return r

    def _leave_late(self, r: rtc.Room, connecting: asyncio.Future[None]) -> None:
        self.late.discard(connecting)
        if not connecting.cancelled() and connecting.exception() is None:
            self.late_joined += 1
            task = asyncio.ensure_future(r.disconnect())
            self.late.add(task)
            task.add_done_callback(self.late.discard)

    async def leave(self, identity: str) -> None:
        r = self.live.pop(identity, None)
        if r is None:
            return
        for s in reversed(self.stays):
            if s.identity == identity:
                s.leaving = time.time()
                break
        with contextlib.suppress(Exception):
            await asyncio.wait_for(r.disconnect(), 10)

    async def stay(self, identity: str, room: str, kind: str, seconds: float) -> None:
        if await self.join(identity, room, kind) is not None:
            await asyncio.sleep(seconds)
            await self.leave(identity)


@dataclass
class Row:
    identity: str
    joined_at: datetime
    left_at: datetime | None
    end_source: str | None
    end_uncertainty_ms: int | None


@dataclass
class Verdict:
    stays: int = 0
    lost: list[str] = field(default_factory=list)  # no row
    doubled: list[str] = field(default_factory=list)  # more than one row
    open: list[str] = field(default_factory=list)  # left, row still open
    shortened: list[str] = field(default_factory=list)  # row covers less than the client was in
    lengthened: list[str] = field(default_factory=list)  # row ends well after the leave
    by_source: dict[str, int] = field(default_factory=dict)
    # for shortened and lengthened rows: end source -> (rows, the largest difference in s)
    off_by: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)

    def off(self, what: str, identity: str, source: str | None, seconds: float) -> None:
        getattr(self, what).append(identity)
        kept = self.off_by.setdefault(what, {})
        n, worst = kept.get(source or "open", (0, 0.0))
        kept[source or "open"] = (n + 1, max(worst, seconds))


def compare(stays: list[Stay], rows: list[Row], tolerance_s: float) -> Verdict:
    """The rows against the clients' own record. A row is shortened when it starts after the
    client's connect returned, or ends (with its stated uncertainty) before the client called
    disconnect, by more than `tolerance_s`; lengthened when it ends more than `tolerance_s`
    plus its uncertainty after that call (the server's leave follows the call at once)."""
    by_identity: dict[str, list[Row]] = {}
    for r in rows:
        by_identity.setdefault(r.identity, []).append(r)
    v = Verdict(stays=len(stays))
    for s in stays:
        mine = by_identity.get(s.identity, [])
        if not mine:
            v.lost.append(s.identity)
            continue
        if len(mine) > 1:
            v.doubled.append(s.identity)
        row = mine[0]
        if s.leaving is not None and row.left_at is None:
            v.open.append(s.identity)
            continue
        v.by_source[row.end_source or "open"] = v.by_source.get(row.end_source or "open", 0) + 1
        joined = row.joined_at.timestamp()
        slack = (row.end_uncertainty_ms or 0) / 1000
        if joined > s.joined + tolerance_s:
            v.off("shortened", s.identity, row.end_source, joined - s.joined)
        elif s.leaving is not None and row.left_at is not None:
            left = row.left_at.timestamp()
            if left + slack < s.leaving - tolerance_s:
                v.off("shortened", s.identity, row.end_source, s.leaving - left - slack)
            elif left > s.leaving + tolerance_s + slack:
                v.off("lengthened", s.identity, row.end_source, left - s.leaving)
    return v
