"""The session tracker: what the observer sees in rooms becomes rows to write.

Pure logic. It takes events (a room joined with a snapshot of who is there, a participant
joined or left, the observer's own reconnect, a room closed or gone, the clock) and returns
operations for the store. No I/O, no asyncio, no LiveKit or SQL types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

UNKNOWN_REASON = "UNKNOWN_REASON"
DUPLICATE_IDENTITY = "DUPLICATE_IDENTITY"

# How `left_at` was learned; stored in `sessions.end_source`.
END_RTC = "rtc"  # the leave was seen live by the observer in the room
END_ROOM_CLOSED = "room_closed"  # the room was deleted or closed while the participant was in it
END_RECONCILED = "reconciled"  # the leave happened while the observer could not see the room


@dataclass(frozen=True)
class SessionKey:
    room_sid: str
    participant_sid: str


@dataclass(frozen=True)
class Seen:
    """A participant as the observer saw it."""

    sid: str
    identity: str
    name: str
    kind: str
    attributes: Mapping[str, str]
    joined_at: datetime


@dataclass(frozen=True)
class TrackedSession:
    room_name: str
    room_sid: str
    participant_sid: str
    identity: str
    name: str
    kind: str
    agent_name: str | None
    attributes: Mapping[str, str]
    joined_at: datetime
    last_seen_at: datetime

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.room_sid, self.participant_sid)


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomJoined:
    """The observer is in the room; `present` is everyone it can see right now."""

    room_name: str
    room_sid: str
    present: tuple[Seen, ...]
    at: datetime


@dataclass(frozen=True)
class ParticipantJoined:
    room_name: str
    room_sid: str
    participant: Seen
    at: datetime


@dataclass(frozen=True)
class ParticipantLeft:
    room_sid: str
    participant_sid: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class AttributesChanged:
    room_sid: str
    participant_sid: str
    attributes: Mapping[str, str]
    at: datetime


@dataclass(frozen=True)
class Reconnecting:
    """The observer's own connection to the room is being re-established."""

    room_sid: str
    at: datetime


@dataclass(frozen=True)
class Reconnected:
    room_sid: str
    present: tuple[Seen, ...]
    at: datetime


@dataclass(frozen=True)
class RoomClosed:
    """The server ended the room (deleted, or closed by its timeouts)."""

    room_sid: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class RoomLost:
    """The observer lost the room without the room ending; it may be joined again."""

    room_sid: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class RoomGone:
    """The room is confirmed to no longer exist, and the observer did not see it end."""

    room_sid: str
    at: datetime


@dataclass(frozen=True)
class Tick:
    at: datetime


Event = (
    RoomJoined
    | ParticipantJoined
    | ParticipantLeft
    | AttributesChanged
    | Reconnecting
    | Reconnected
    | RoomClosed
    | RoomLost
    | RoomGone
    | Tick
)

# ---- operations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    session: TrackedSession


@dataclass(frozen=True)
class Close:
    key: SessionKey
    left_at: datetime
    reason: str | None
    end_source: str
    uncertainty_ms: int | None
    last_seen_at: datetime
    session: TrackedSession


@dataclass(frozen=True)
class Touch:
    keys: tuple[SessionKey, ...]
    at: datetime


@dataclass(frozen=True)
class UpdateAttributes:
    key: SessionKey
    attributes: Mapping[str, str]
    agent_name: str | None


Op = Open | Close | Touch | UpdateAttributes


def agent_name_of(attributes: Mapping[str, str]) -> str | None:
    """The agent's name as LiveKit (`lk.agent_name`) or the agents framework sets it."""
    return attributes.get("lk.agent_name") or attributes.get("lk.agent.name") or None


@dataclass
class _Room:
    name: str
    state: str  # "watching" | "reconnecting"


@dataclass
class SessionTracker:
    """Holds the open sessions and turns events into store operations.

    A leave with an unknown reason is held for `leave_grace_s`: the SDK reports every remote
    participant as disconnected (reason unknown) just before the observer's own full
    reconnect, and those must not close sessions.
    """

    tracked_kinds: frozenset[str]
    leave_grace_s: float = 2.0
    heartbeat_s: float = 15.0
    _open: dict[SessionKey, TrackedSession] = field(default_factory=dict)
    _rooms: dict[str, _Room] = field(default_factory=dict)
    _pending: dict[SessionKey, ParticipantLeft] = field(default_factory=dict)
    _last_heartbeat: datetime | None = None

    def seed(self, sessions: Iterable[TrackedSession]) -> None:
        """Continue sessions left open by an earlier run; their rooms are not joined yet."""
        for s in sessions:
            self._open[s.key] = s

    @property
    def open_sessions(self) -> Mapping[SessionKey, TrackedSession]:
        return self._open

    @property
    def watched_rooms(self) -> Mapping[str, str]:
        """room_sid -> room_name for rooms the observer is in."""
        return {sid: r.name for sid, r in self._rooms.items()}

    def unwatched_rooms(self) -> dict[str, str]:
        """room_sid -> room_name of rooms with open sessions that the observer is not in."""
        return {
            s.room_sid: s.room_name for s in self._open.values() if s.room_sid not in self._rooms
        }

    def handle(self, ev: Event) -> list[Op]:
        """Apply one event; return the operations that record its effect."""
        match ev:
            case RoomJoined():
                self._rooms[ev.room_sid] = _Room(ev.room_name, "watching")
                return self._snapshot(ev.room_sid, ev.room_name, ev.present, ev.at)
            case Reconnected():
                room = self._rooms.get(ev.room_sid)
                if room is None:
                    return []
                room.state = "watching"
                return self._snapshot(ev.room_sid, room.name, ev.present, ev.at)
            case ParticipantJoined():
                self._pending.pop(SessionKey(ev.room_sid, ev.participant.sid), None)
                ops = self._replaced(ev.room_sid, ev.participant.identity)
                return ops + self._joined(ev.room_name, ev.room_sid, ev.participant, ev.at)
            case ParticipantLeft():
                key = SessionKey(ev.room_sid, ev.participant_sid)
                if key not in self._open:
                    return []
                if ev.reason in ("", UNKNOWN_REASON):
                    self._pending[key] = ev
                    return []
                return [self._close(key, ev.at, ev.reason, END_RTC, None, ev.at)]
            case AttributesChanged():
                return self._attributes(ev)
            case Reconnecting():
                room = self._rooms.get(ev.room_sid)
                if room is None:
                    return []
                room.state = "reconnecting"
                for key in [k for k in self._pending if k.room_sid == ev.room_sid]:
                    del self._pending[key]
                return self._touch(self._keys_in(ev.room_sid), ev.at)
            case RoomClosed():
                ops = self._flush_pending(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                for key in self._keys_in(ev.room_sid):
                    ops.append(self._close(key, ev.at, ev.reason, END_ROOM_CLOSED, None, ev.at))
                return ops
            case RoomLost():
                ops = self._flush_pending(ev.room_sid)
                room = self._rooms.pop(ev.room_sid, None)
                if room is not None and room.state == "watching":
                    ops += self._touch(self._keys_in(ev.room_sid), ev.at)
                return ops
            case RoomGone():
                ops = self._flush_pending(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                for key in self._keys_in(ev.room_sid):
                    ops.append(self._reconciled(key, ev.at))
                return ops
            case Tick():
                return self._tick(ev.at)
        raise TypeError(f"unknown event {ev!r}")

    # ---- helpers ------------------------------------------------------------------------

    def _keys_in(self, room_sid: str) -> list[SessionKey]:
        return [k for k in self._open if k.room_sid == room_sid]

    def _joined(self, room_name: str, room_sid: str, p: Seen, at: datetime) -> list[Op]:
        if p.kind not in self.tracked_kinds:
            return []
        key = SessionKey(room_sid, p.sid)
        if key in self._open:
            return self._touch([key], at)
        s = TrackedSession(
            room_name=room_name,
            room_sid=room_sid,
            participant_sid=p.sid,
            identity=p.identity,
            name=p.name,
            kind=p.kind,
            agent_name=agent_name_of(p.attributes),
            attributes=dict(p.attributes),
            joined_at=p.joined_at,
            last_seen_at=at,
        )
        self._open[key] = s
        return [Open(s)]

    def _snapshot(
        self, room_sid: str, room_name: str, present: tuple[Seen, ...], at: datetime
    ) -> list[Op]:
        ops: list[Op] = []
        present_sids = {p.sid for p in present}
        for key in self._keys_in(room_sid):
            if key.participant_sid not in present_sids:
                pending = self._pending.pop(key, None)
                if pending is not None:
                    ops.append(
                        self._close(key, pending.at, pending.reason, END_RTC, None, pending.at)
                    )
                else:
                    ops.append(self._reconciled(key, at))
        for p in present:
            ops += self._joined(room_name, room_sid, p, at)
        return ops

    def _attributes(self, ev: AttributesChanged) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant_sid)
        s = self._open.get(key)
        if s is None or dict(s.attributes) == dict(ev.attributes):
            return []
        s = replace(s, attributes=dict(ev.attributes), agent_name=agent_name_of(ev.attributes))
        self._open[key] = s
        return [UpdateAttributes(key, s.attributes, s.agent_name)]

    def _touch(self, keys: Iterable[SessionKey], at: datetime) -> list[Op]:
        touched = []
        for key in keys:
            s = self._open.get(key)
            if s is not None and at > s.last_seen_at:
                self._open[key] = replace(s, last_seen_at=at)
                touched.append(key)
        return [Touch(tuple(touched), at)] if touched else []

    def _close(
        self,
        key: SessionKey,
        left_at: datetime,
        reason: str | None,
        source: str,
        uncertainty_ms: int | None,
        last_seen_at: datetime,
    ) -> Close:
        s = self._open.pop(key)
        self._pending.pop(key, None)
        return Close(key, left_at, reason, source, uncertainty_ms, last_seen_at, s)

    def _reconciled(self, key: SessionKey, at: datetime) -> Close:
        """Close a session whose leave the observer missed: it ended after it was last seen
        and before `at`; record the lower bound and the width of the gap."""
        last_seen = self._open[key].last_seen_at
        width_ms = max(0, round((at - last_seen).total_seconds() * 1000))
        return self._close(key, last_seen, None, END_RECONCILED, width_ms, last_seen)

    def _replaced(self, room_sid: str, identity: str) -> list[Op]:
        """A held leave followed by a join of the same identity is LiveKit replacing the
        older session (the newest connection wins): close it now, with that reason."""
        ops: list[Op] = []
        for key, ev in list(self._pending.items()):
            if key.room_sid == room_sid and self._open[key].identity == identity:
                ops.append(self._close(key, ev.at, DUPLICATE_IDENTITY, END_RTC, None, ev.at))
        return ops

    def _flush_pending(self, room_sid: str) -> list[Op]:
        ops: list[Op] = []
        for key, ev in list(self._pending.items()):
            if key.room_sid == room_sid:
                ops.append(self._close(key, ev.at, ev.reason, END_RTC, None, ev.at))
        return ops

    def _tick(self, at: datetime) -> list[Op]:
        ops: list[Op] = []
        grace = timedelta(seconds=self.leave_grace_s)
        for key, ev in list(self._pending.items()):
            if at - ev.at >= grace:
                ops.append(self._close(key, ev.at, ev.reason, END_RTC, None, ev.at))
        if self._last_heartbeat is None:
            self._last_heartbeat = at
        elif (at - self._last_heartbeat).total_seconds() >= self.heartbeat_s:
            self._last_heartbeat = at
            watching = {sid for sid, r in self._rooms.items() if r.state == "watching"}
            ops += self._touch(
                [k for k in self._open if k.room_sid in watching and k not in self._pending], at
            )
        return ops
