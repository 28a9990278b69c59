"""The session tracker: what the observer sees in rooms becomes rows to write.

Pure logic. It takes events (a room joined with a snapshot of who is there, a participant
joined or left, the observer's own reconnect, a room closed or gone, the clock) and returns
operations for the store. No I/O, no asyncio, no LiveKit or SQL types.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, assert_never

from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.timeline import Timeline, Timelines
from observer.core.vocab import (
    COMPANY_KINDS,
    END_RECONCILED,
    END_ROOM_CLOSED,
    END_RTC,
    END_WEBHOOK,
    EndSource,
)

UNKNOWN_REASON = "UNKNOWN_REASON"
DUPLICATE_IDENTITY = "DUPLICATE_IDENTITY"

# A watched room: the observer is inside and sees it, or its connection is reconnecting.
RoomState = Literal["watching", "reconnecting"]
RECENTLY_CLOSED_MAX = 100_000


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
    """The observer is in the room; `present` is everyone it can see right now, `metadata`
    the room's metadata and `created_at` when the server created the room."""

    room_name: str
    room_sid: str
    present: tuple[Seen, ...]
    at: datetime
    metadata: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class RoomMetadataChanged:
    room_sid: str
    metadata: str
    at: datetime


@dataclass(frozen=True)
class ParticipantJoined:
    """A participant joined the room; `blind_since` as in `ParticipantLeft` (the join is
    known from the participant's join time, but not that it was still there at `at`)."""

    room_name: str
    room_sid: str
    participant: Seen
    at: datetime
    blind_since: datetime | None = None


@dataclass(frozen=True)
class ParticipantLeft:
    """A participant left the room. `blind_since` is set when the news arrived just after
    the observer's own process stopped running (see `Blind`): the leave may have happened
    at any moment of that gap, not at `at`."""

    room_sid: str
    participant_sid: str
    reason: str
    at: datetime
    blind_since: datetime | None = None


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
    """The server ended the room (deleted, or closed by its timeouts); `blind_since` as in
    `ParticipantLeft`."""

    room_sid: str
    reason: str
    at: datetime
    blind_since: datetime | None = None


@dataclass(frozen=True)
class RoomLost:
    """The observer lost the room without the room ending; it may be joined again."""

    room_sid: str
    reason: str
    at: datetime
    blind_since: datetime | None = None


@dataclass(frozen=True)
class RoomGone:
    """The room is confirmed to no longer exist, and the observer did not see it end.

    `listed_at` is when the listing that lacked the room was requested: sessions seen after
    that (a webhook about a room newer than the listing) are left alone.
    """

    room_sid: str
    at: datetime
    listed_at: datetime | None = None


@dataclass(frozen=True)
class RoomUnreachable:
    """The room is listed, but no live LiveKit node hosts it (its node died): everyone who
    was in it went with the node, although the server goes on listing them."""

    room_sid: str
    at: datetime


@dataclass(frozen=True)
class Listed:
    """What the server's API says about a room, asked at `requested_at`.

    `exists` is False when no room of that name has this sid any more; `present` holds the
    participant sids the server lists in it.
    """

    room_sid: str
    exists: bool
    present: frozenset[str]
    requested_at: datetime
    at: datetime


@dataclass(frozen=True)
class Tick:
    """The clock; `blind_since` is set on the first tick after the observer's own process
    stopped running (see `Blind`)."""

    at: datetime
    blind_since: datetime | None = None


@dataclass(frozen=True)
class Blind:
    """The observer's own process did not run from `since` to `until` (stopped, a paused VM,
    a host that stalled): it saw nothing of `rooms` (None: every room it is in) meanwhile.
    Its own clock moving on is no evidence: every session it counted as present there is
    unconfirmed until the room or the server's listing shows the participant again, and a
    leave it learns of meanwhile is bounded by the last evidence, not by the moment it
    arrived."""

    since: datetime
    until: datetime
    rooms: frozenset[str] | None = None


@dataclass(frozen=True)
class RoomHandedOver:
    """Another observer watches this room now (several observers share the fleet): its
    sessions are that observer's to record, and this one forgets them without a write."""

    room_sid: str
    at: datetime


@dataclass(frozen=True)
class Seeded:
    """The open rows of a room about to be joined, as the database has them (whichever
    observer wrote them): sessions to continue, and to settle if their participant is gone."""

    room_sid: str
    sessions: tuple[TrackedSession, ...]


@dataclass(frozen=True)
class WebhookJoined:
    """LiveKit's webhook says a participant joined (`at` is the event's createdAt)."""

    room_name: str
    room_sid: str
    participant: Seen
    at: datetime


@dataclass(frozen=True)
class WebhookLeft:
    """LiveKit's webhook says a participant left; it carries the participant's join time."""

    room_name: str
    room_sid: str
    participant: Seen
    reason: str
    at: datetime


@dataclass(frozen=True)
class WebhookRoomFinished:
    room_sid: str
    at: datetime


@dataclass(frozen=True)
class UsageReported:
    """An agent session's model usage totals, from the room or posted to the observer."""

    report: UsageReport


@dataclass(frozen=True)
class UsageUndecodable:
    """A message on the agents framework's session topic that could not be read."""

    room_sid: str
    identity: str
    at: datetime


Event = (
    RoomJoined
    | RoomMetadataChanged
    | ParticipantJoined
    | ParticipantLeft
    | AttributesChanged
    | Reconnecting
    | Reconnected
    | RoomClosed
    | RoomLost
    | RoomGone
    | RoomUnreachable
    | Listed
    | Tick
    | Blind
    | Seeded
    | RoomHandedOver
    | WebhookJoined
    | WebhookLeft
    | WebhookRoomFinished
    | UsageReported
    | UsageUndecodable
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
    end_source: EndSource
    uncertainty_ms: int | None
    last_seen_at: datetime
    session: TrackedSession
    timeline: Timeline | None = None  # what this observer saw of it; None: never watched


@dataclass(frozen=True)
class Touch:
    keys: tuple[SessionKey, ...]
    at: datetime


@dataclass(frozen=True)
class UpdateAttributes:
    key: SessionKey
    attributes: Mapping[str, str]
    agent_name: str | None


@dataclass(frozen=True)
class Witnessed:
    """This observer saw these participants in their room itself."""

    keys: tuple[SessionKey, ...]
    at: datetime


@dataclass(frozen=True)
class RecordUsage:
    """Keep these totals, unless newer ones are kept already."""

    report: UsageReport


@dataclass(frozen=True)
class RoomSeen:
    """The room as the observer sees it: its name, metadata (None: unchanged) and creation
    time, and how many agents and participants are in it now (the row keeps the most)."""

    room_sid: str
    room_name: str
    metadata: str | None
    created_at: datetime | None
    at: datetime
    agents: int
    participants: int


@dataclass(frozen=True)
class RoomPresence:
    """Who is in the room now, as the observer sees it: agents and company (people, phone
    lines, ...), and since when its agents have been alone (None: not alone)."""

    room_sid: str
    room_name: str
    agents: int
    company: int
    alone_since: datetime | None
    at: datetime


@dataclass(frozen=True)
class RoomEnded:
    """The room ended at `at`: `reason` is the server's (ROOM_DELETED, ...), or GONE when
    the observer found it gone from the server's listing."""

    room_sid: str
    room_name: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class StuckAgents:
    """Agents alone in a room (no company) for longer than the limit; not a database write."""

    room_name: str
    room_sid: str
    identities: tuple[str, ...]
    alone_since: datetime


@dataclass(frozen=True)
class Verify:
    """Ask the server's API who is in this room; the answer comes back as `Listed`.
    Not a database write."""

    room_sid: str
    room_name: str


@dataclass(frozen=True)
class UsageDropped:
    """A usage message that could not be read; not a database write."""

    room_sid: str
    identity: str


@dataclass(frozen=True)
class UsageFlagged:
    """Usage that is suspicious, once per session and flag: `unseen_session` (usage for a
    session this observer has not seen), `silent_realtime` (a realtime model reporting 0
    output audio tokens). Not a database write: reports find the same in the rows."""

    room_sid: str
    participant_sid: str
    identity: str
    flag: str


RowWrite = (
    Open
    | Close
    | Touch
    | UpdateAttributes
    | Witnessed
    | RoomSeen
    | RoomPresence
    | RoomEnded
    | RecordUsage
)  # changes to the rows
Notice = (
    StuckAgents | Verify | UsageDropped | UsageFlagged
)  # for the daemon to act on; never written
Op = RowWrite | Notice


@dataclass(frozen=True)
class Outcome:
    """What one event changes: row writes for the writer, notices for the daemon."""

    writes: tuple[RowWrite, ...] = ()
    notices: tuple[Notice, ...] = ()

    @classmethod
    def of(cls, ops: Iterable[Op]) -> Outcome:
        writes: list[RowWrite] = []
        notices: list[Notice] = []
        for op in ops:
            match op:
                case (
                    Open()
                    | Close()
                    | Touch()
                    | UpdateAttributes()
                    | Witnessed()
                    | RoomSeen()
                    | RoomPresence()
                    | RoomEnded()
                    | RecordUsage()
                ):
                    writes.append(op)
                case StuckAgents() | Verify() | UsageDropped() | UsageFlagged():
                    notices.append(op)
                case _:
                    assert_never(op)
        return cls(tuple(writes), tuple(notices))


def missed_leave(last_seen_at: datetime, learned_at: datetime) -> tuple[datetime, int]:
    """The one rule for a leave nobody saw: the session ends at the last time the participant
    was seen, and the gap until its absence was learned is the uncertainty (ms)."""
    return last_seen_at, max(0, round((learned_at - last_seen_at).total_seconds() * 1000))


def agent_name_of(attributes: Mapping[str, str]) -> str | None:
    """The agent's name as LiveKit (`lk.agent_name`) or the agents framework sets it."""
    return attributes.get("lk.agent_name") or attributes.get("lk.agent.name") or None


@dataclass
class _Room:
    name: str
    state: RoomState


@dataclass
class SessionTracker:
    """Holds the open sessions and turns events into store operations.

    The observer's own connection never ends a session. A leave counts when the server
    announced it with a reason while the observer was watching (closed at that moment), or
    when the server's API confirms the participant is gone. A leave without a reason (the
    SDK reports every remote participant that way around its own reconnects) only makes
    the session a suspect: a `Verify` asks the API, and `Listed` settles it. A leave that
    happened while the observer could not see is closed `reconciled` between when the
    participant was last seen and when its absence was learned, or at the webhook's time
    when LiveKit's webhook told it.

    The API is wrong in one case: a cluster node that died leaves its participants listed
    in Redis. A participant the observer had seen, missing from a fresh join of its room
    yet listed for `stale_listing_s`, is closed `reconciled` as well.
    """

    tracked_kinds: frozenset[str]
    heartbeat_s: float = 15.0
    stuck_after_s: float = 300.0
    verify_retry_s: float = 3.0
    webhook_hold_s: float = 3.0
    # How long the server's listing may show a participant that a fresh join of the room
    # does not: a cluster node that died leaves its participants listed in Redis for good.
    stale_listing_s: float = 30.0
    # How long the real leave of a participant that publishes nothing may take to reach
    # the observers in its room (livekit-server's 3 s ticker, and some)
    leave_news_s: float = 4.0
    # How long the observer's connection to a room may be dead before it notices: a ping
    # timeout, or a relay through a cluster node that died (seen: about 10 s)
    trouble_window_s: float = 20.0
    _open: dict[SessionKey, TrackedSession] = field(default_factory=dict)
    _rooms: dict[str, _Room] = field(default_factory=dict)
    _suspect: dict[SessionKey, ParticipantLeft] = field(default_factory=dict)
    _witness: dict[SessionKey, WebhookLeft] = field(default_factory=dict)
    _verify_asked: dict[str, datetime] = field(default_factory=dict)
    _last_heartbeat: datetime | None = None
    _company: dict[str, set[str]] = field(default_factory=dict)
    _alone_since: dict[str, datetime] = field(default_factory=dict)
    _alerted: set[str] = field(default_factory=set)
    _recently_closed: OrderedDict[SessionKey, None] = field(default_factory=OrderedDict)
    _in_view: set[SessionKey] = field(default_factory=set)  # seen present by the observer
    _witnessed: set[SessionKey] = field(default_factory=set)  # recorded as witnessed
    _seen_live: set[SessionKey] = field(default_factory=set)  # ever seen over rtc
    # suspects because the observer's own process stopped running (`Blind`), not because
    # the room reported anything
    _doubted: set[SessionKey] = field(default_factory=set)
    # the start of the latest gap handled, for every room (None) and for single rooms
    _blind_handled: dict[str | None, datetime] = field(default_factory=dict)
    # leaves for a newer connection of the same identity, held until that one's join
    # shows when the old one ended (see `_replaced_live`)
    _replaced_leaves: dict[SessionKey, ParticipantLeft] = field(default_factory=dict)
    # sessions a newer connection of the same identity replaced, seen live: waiting for the
    # server's leave of the old one (it comes when the old connection was alive) -> the
    # newer one's join time, and when it was seen
    _superseded_by: dict[SessionKey, tuple[datetime, datetime]] = field(default_factory=dict)
    # when the room or the server last showed each open session's participant
    _evidence: dict[SessionKey, datetime] = field(default_factory=dict)
    _absent_at_join: dict[SessionKey, datetime] = field(default_factory=dict)
    _absent_listed: dict[SessionKey, datetime] = field(default_factory=dict)
    _present: dict[str, dict[str, str]] = field(default_factory=dict)  # room -> sid -> kind
    _peak: dict[str, tuple[int, int]] = field(default_factory=dict)  # room -> agents, all
    _stuck_count: int = 0
    _timelines: Timelines = field(default_factory=Timelines)
    # room -> (agents, company, alone since) as last written
    _presence_shown: dict[str, tuple[int, int, datetime | None]] = field(default_factory=dict)
    _usage_flagged: OrderedDict[tuple[SessionKey, str], None] = field(default_factory=OrderedDict)
    _usage_written: OrderedDict[tuple[SessionKey, tuple[str, str, str]], ModelUsage] = field(
        default_factory=OrderedDict
    )

    def seed(self, sessions: Iterable[TrackedSession]) -> None:
        """Continue sessions left open by an earlier run; their rooms are not joined yet."""
        for s in sessions:
            self._open[s.key] = s

    @property
    def open_sessions(self) -> Mapping[SessionKey, TrackedSession]:
        return self._open

    @property
    def suspects(self) -> Mapping[SessionKey, ParticipantLeft]:
        """Sessions whose leave was reported without a reason and is not yet confirmed."""
        return self._suspect

    @property
    def watched_rooms(self) -> Mapping[str, str]:
        """room_sid -> room_name for rooms the observer is in."""
        return {sid: r.name for sid, r in self._rooms.items()}

    @property
    def stuck_agents(self) -> int:
        """Agents in rooms flagged as stuck, as of the last tick."""
        return self._stuck_count

    @property
    def watched_count(self) -> int:
        return len(self._rooms)

    def unwatched_rooms(self) -> dict[str, str]:
        """room_sid -> room_name of rooms with open sessions that the observer is not in."""
        return {
            s.room_sid: s.room_name for s in self._open.values() if s.room_sid not in self._rooms
        }

    def handle(self, ev: Event) -> Outcome:
        """Apply one event; return the writes that record its effect and the notices."""
        return Outcome.of(self._apply(ev))

    def _apply(self, ev: Event) -> list[Op]:
        match ev:
            case RoomJoined():
                self._rooms[ev.room_sid] = _Room(ev.room_name, "watching")
                ops = self._snapshot(ev.room_sid, ev.room_name, ev.present, ev.at, fresh=True)
                seen = self._room_seen(ev.room_sid, ev.at, ev.metadata, ev.created_at, force=True)
                return seen + ops + self._presence(ev.room_sid, ev.at)
            case RoomMetadataChanged():
                return self._room_seen(ev.room_sid, ev.at, ev.metadata, None, force=True)
            case Reconnected():
                room = self._rooms.get(ev.room_sid)
                if room is None:
                    return []
                room.state = "watching"
                # as after a fresh join: after a full reconnect the room's list comes from
                # the node that hosts it now, so an absence the API goes on listing is stale
                ops = self._snapshot(ev.room_sid, room.name, ev.present, ev.at, fresh=True)
                return (
                    ops + self._room_seen(ev.room_sid, ev.at) + self._presence(ev.room_sid, ev.at)
                )
            case ParticipantJoined():
                key = SessionKey(ev.room_sid, ev.participant.sid)
                blind = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
                if ev.blind_since is None:
                    self._suspect.pop(key, None)
                    self._doubted.discard(key)
                self._absent_at_join.pop(key, None)
                if ev.participant.kind in self.tracked_kinds:
                    self._in_view.add(key)
                if ev.participant.kind in COMPANY_KINDS:
                    self._company.setdefault(ev.room_sid, set()).add(ev.participant.sid)
                ops = self._replaced(
                    ev.room_sid,
                    ev.participant.identity,
                    ev.participant.sid,
                    ev.at,
                    ev.participant.joined_at,
                    live=ev.blind_since is None,
                )
                ops += self._joined(
                    ev.room_name,
                    ev.room_sid,
                    ev.participant,
                    ev.at,
                    blind=ev.blind_since is not None,
                )
                self._present.setdefault(ev.room_sid, {})[ev.participant.sid] = ev.participant.kind
                if key in self._open:
                    p = ev.participant
                    # from the join itself, when the observer saw it happen
                    live = timedelta(0) <= ev.at - p.joined_at < timedelta(seconds=2)
                    self._timelines.seen(
                        key,
                        ev.at,
                        p.attributes,
                        self._alone(ev.room_sid),
                        joined_at=p.joined_at if live else None,
                    )
                self._company_changed(ev.room_sid, ev.at)
                ops += self._release_replaced()
                ops += self._room_seen(ev.room_sid, ev.at) + self._presence(ev.room_sid, ev.at)
                return blind + ops + self._record_seen([key], ev.at)
            case RoomHandedOver():
                self._forget_room(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                self._timelines.drop(self._keys_in(ev.room_sid))
                for key in self._keys_in(ev.room_sid):
                    self._open.pop(key, None)
                    self._suspect.pop(key, None)
                    self._witness.pop(key, None)
                    self._seen_live.discard(key)
                    self._doubted.discard(key)
                    self._absent_at_join.pop(key, None)
                    self._absent_listed.pop(key, None)
                return []
            case Seeded():
                for s in ev.sessions:
                    if s.key not in self._open and s.key not in self._recently_closed:
                        self._open[s.key] = s
                return []
            case ParticipantLeft():
                return self._left(ev)
            case AttributesChanged():
                return self._attributes(ev)
            case Reconnecting():
                # No touch: the connection broke some time before the SDK noticed, so the
                # moment of noticing is no evidence that anyone was still there.
                room = self._rooms.get(ev.room_sid)
                if room is None:
                    return []
                room.state = "reconnecting"
                self._timelines.pause(self._keys_in(ev.room_sid), ev.at)
                self._trouble(ev.room_sid, ev.at)
                return []
            case RoomClosed():
                return self._room_closed(ev)
            case RoomLost():
                ops = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
                self._forget_room(ev.room_sid)
                self._timelines.pause(self._keys_in(ev.room_sid), ev.at)
                room = self._rooms.pop(ev.room_sid, None)
                if room is not None and room.state == "watching" and ev.blind_since is None:
                    keys = [k for k in self._keys_in(ev.room_sid) if k not in self._suspect]
                    return self._touch(keys, ev.at, evidence=False)
                return ops
            case RoomGone():
                return self._gone(ev.room_sid, ev.at, ev.listed_at)
            case RoomUnreachable():
                self._trouble(ev.room_sid, ev.at)
                self._forget_room(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                return [self._reconciled(key, ev.at) for key in self._keys_in(ev.room_sid)]
            case Listed():
                return self._listed(ev)
            case Tick():
                return self._blind_news(ev.blind_since, ev.at) + self._tick(ev.at)
            case Blind():
                return self._blind(ev.since, ev.until, ev.rooms)
            case WebhookJoined():
                return self._joined(ev.room_name, ev.room_sid, ev.participant, ev.at)
            case WebhookLeft():
                return self._webhook_left(ev)
            case UsageReported():
                # kept whether or not the session is known yet: the row links them by key
                return self._usage(ev.report) + self._usage_flags(ev.report)
            case UsageUndecodable():
                return [UsageDropped(ev.room_sid, ev.identity)]
            case WebhookRoomFinished():
                room = self._rooms.get(ev.room_sid)
                if room is not None and room.state == "watching":
                    return []  # the observer is inside and sees the room end itself
                return self._room_ended(ev.room_sid, ev.at, "ROOM_FINISHED") + [
                    self._close(key, left_at=ev.at, reason=None, source=END_WEBHOOK)
                    for key in self._keys_in(ev.room_sid)
                ]
            case _:
                assert_never(ev)

    # ---- helpers ------------------------------------------------------------------------

    def _keys_in(self, room_sid: str) -> list[SessionKey]:
        return [k for k in self._open if k.room_sid == room_sid]

    def _watching(self, room_sid: str) -> bool:
        room = self._rooms.get(room_sid)
        return room is not None and room.state == "watching"

    def _joined(
        self, room_name: str, room_sid: str, p: Seen, at: datetime, *, blind: bool = False
    ) -> list[Op]:
        """Open a session for a tracked participant (or touch its open one). `blind`: the
        news came just after a gap in the observer's life, so only the participant's own
        join time is evidence of its presence."""
        key = SessionKey(room_sid, p.sid)
        if p.kind not in self.tracked_kinds or key in self._recently_closed:
            return []
        if key in self._open:
            return [] if blind else self._touch([key], at)
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
            last_seen_at=min(at, p.joined_at) if blind else at,
        )
        self._open[key] = s
        self._evidence[key] = s.last_seen_at
        return [Open(s)]

    def _left(self, ev: ParticipantLeft) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant_sid)
        self._timelines.pause([key], ev.at)
        ops = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        if key in self._open and ev.reason in ("", UNKNOWN_REASON):
            # Not known to be real: the room's numbers change when the server confirms it.
            return ops + self._left_session(ev, key)
        return (
            ops + self._absent(ev.room_sid, ev.participant_sid, ev.at) + self._left_session(ev, key)
        )

    def _absent(self, room_sid: str, participant_sid: str, at: datetime) -> list[Op]:
        """The participant is no longer in the room: its numbers change."""
        self._company.get(room_sid, set()).discard(participant_sid)
        self._present.get(room_sid, {}).pop(participant_sid, None)
        self._company_changed(room_sid, at)
        return self._presence(room_sid, at)

    def _left_session(self, ev: ParticipantLeft, key: SessionKey) -> list[Op]:
        if key not in self._open:
            return []
        watching = self._watching(ev.room_sid)
        if ev.reason in ("", UNKNOWN_REASON):
            # Not known to be real: may be the SDK's own reconnect. Ask the server.
            fresh = watching and ev.blind_since is None
            ops: list[Op] = self._touch([key], ev.at, evidence=False) if fresh else []
            self._suspect.setdefault(key, ev)
            return ops + self._verify(ev.room_sid, ev.at)
        if ev.blind_since is not None:
            # The news arrived, but the leave happened while the observer was not running.
            return [self._reconciled(key, ev.at, reason=ev.reason)]
        if watching and ev.reason == DUPLICATE_IDENTITY:
            return self._replaced_live(key, ev)
        if watching:
            return [self._close(key, left_at=ev.at, reason=ev.reason, source=END_RTC)]
        # Announced by the server while the observer was reconnecting: real, but the moment
        # it happened is only known to lie in the gap.
        return [self._reconciled(key, ev.at, reason=ev.reason)]

    def _blind_news(
        self, since: datetime | None, at: datetime, room_sid: str | None = None
    ) -> list[Op]:
        """An event that arrived just after a gap in the observer's own life: handle the gap
        first (once), so nothing the gap hid counts as seen."""
        if since is None:
            return []
        handled = [self._blind_handled.get(None), self._blind_handled.get(room_sid)]
        if any(h is not None and since <= h for h in handled):
            return []
        return self._blind(since, at, None if room_sid is None else frozenset({room_sid}))

    def _blind(self, since: datetime, until: datetime, rooms: frozenset[str] | None) -> list[Op]:
        """The observer saw nothing of `rooms` from `since` to `until`: every session it counts
        as present there becomes a suspect, to be confirmed by the room or the server's
        listing; until then its `last_seen_at` stays where the last evidence put it."""
        for room in [None] if rooms is None else rooms:
            self._blind_handled[room] = max(since, self._blind_handled.get(room, since))
        self._last_heartbeat = until  # the next heartbeat comes a whole period later
        affected = set(self._rooms) if rooms is None else set(rooms) & set(self._rooms)
        ops: list[Op] = []
        for room_sid in sorted(affected):
            keys = [k for k in self._keys_in(room_sid) if k not in self._suspect]
            if not keys:
                continue
            self._timelines.pause(keys, since)
            for key in keys:
                self._suspect[key] = ParticipantLeft(room_sid, key.participant_sid, "", until)
                self._doubted.add(key)
            ops += self._verify(room_sid, until)
        return ops

    def _room_closed(self, ev: RoomClosed) -> list[Op]:
        ops: list[Op] = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        ops += self._room_ended(ev.room_sid, ev.at, ev.reason or "ROOM_CLOSED")
        self._forget_room(ev.room_sid)
        self._rooms.pop(ev.room_sid, None)
        for key in self._keys_in(ev.room_sid):
            if key in self._doubted:
                ops.append(self._reconciled(key, ev.at, reason=ev.reason))
            elif key in self._suspect or key in self._witness:
                ops.append(self._reconciled(key, ev.at))
            else:
                ops.append(
                    self._close(key, left_at=ev.at, reason=ev.reason, source=END_ROOM_CLOSED)
                )
        return ops

    def _verify(self, room_sid: str, at: datetime) -> list[Op]:
        name = self._room_name(room_sid)
        if name is None:
            return []
        self._verify_asked[room_sid] = at
        return [Verify(room_sid, name)]

    def _room_name(self, room_sid: str) -> str | None:
        room = self._rooms.get(room_sid)
        if room is not None:
            return room.name
        for k, s in self._open.items():
            if k.room_sid == room_sid:
                return s.room_name
        return None

    def _snapshot(
        self,
        room_sid: str,
        room_name: str,
        present: tuple[Seen, ...],
        at: datetime,
        *,
        fresh: bool = False,
    ) -> list[Op]:
        """What the observer sees on (re)joining a room. A fresh join shows everyone in the
        room from the node that hosts it, so an absence there is remembered (see
        `stale_listing_s`)."""
        ops: list[Op] = []
        present_sids = {p.sid for p in present}
        self._company[room_sid] = {p.sid for p in present if p.kind in COMPANY_KINDS}
        self._present[room_sid] = {p.sid: p.kind for p in present}
        self._in_view.update(
            SessionKey(room_sid, p.sid) for p in present if p.kind in self.tracked_kinds
        )
        missing = False
        for key in self._keys_in(room_sid):
            if key.participant_sid in present_sids:
                self._suspect.pop(key, None)
                self._doubted.discard(key)
                self._absent_at_join.pop(key, None)
                continue
            if fresh and key in self._seen_live:
                self._absent_at_join.setdefault(key, at)
            if key not in self._suspect:
                # Absent from what the SDK shows; only the server's API may end it (or a
                # listing that stays stale after a fresh join, in `_listed`).
                s = self._open[key]
                self._suspect[key] = ParticipantLeft(
                    room_sid, key.participant_sid, "", s.last_seen_at
                )
                missing = True
            else:
                missing = True
            self._timelines.pause([key], at)
        for p in present:
            if p.kind in self.tracked_kinds:
                ops += self._superseded(room_sid, p.identity, p.sid, p.joined_at, at)
            ops += self._joined(room_name, room_sid, p, at)
            key = SessionKey(room_sid, p.sid)
            if key in self._open:
                self._timelines.seen(key, at, p.attributes, self._alone(room_sid))
        ops += self._record_seen([SessionKey(room_sid, p.sid) for p in present], at)
        if missing:
            ops += self._verify(room_sid, at)
        return ops

    def _listed(self, ev: Listed) -> list[Op]:
        self._verify_asked.pop(ev.room_sid, None)
        if not ev.exists:
            return self._gone(ev.room_sid, ev.at, ev.requested_at)
        ops: list[Op] = []
        for key in [k for k in self._suspect if k.room_sid == ev.room_sid]:
            left = self._suspect[key]
            if key not in self._open:
                self._suspect.pop(key)
            elif key.participant_sid in ev.present:
                self._absent_listed.pop(key, None)  # a later absence waits afresh
                absent_since = self._absent_at_join.get(key)
                if absent_since is not None and self._watching(ev.room_sid):
                    # listed, yet not in the room its node shows: stale once it lasts
                    if ev.at - absent_since >= timedelta(seconds=self.stale_listing_s):
                        ops.append(self._reconciled(key, ev.at))
                    continue
                if left.at <= ev.requested_at:  # still there after the leave was reported
                    del self._suspect[key]
                    self._doubted.discard(key)
                    if self._watching(ev.room_sid):
                        ops += self._touch([key], ev.requested_at)
                        self._timelines.seen(
                            key, ev.at, self._open[key].attributes, self._alone(ev.room_sid)
                        )
            elif self._another_may_tell(key, ev.at):
                continue  # a suspect still: `_tick` lists the room again
            else:
                ops.append(self._reconciled(key, ev.at))
                ops += self._absent(ev.room_sid, key.participant_sid, ev.at)
        return ops

    def _another_may_tell(self, key: SessionKey, at: datetime) -> bool:
        """A session this observer never saw, that another observer saw moments ago, gone
        from the server's listing: that observer may yet report the real leave (the server
        announces the leave of a participant that publishes nothing on a 3 s ticker), so
        the missed-leave bound waits `leave_news_s` for it."""
        if key in self._seen_live:
            return False
        if at - self._open[key].last_seen_at > timedelta(seconds=self.leave_news_s + 10):
            return False
        first = self._absent_listed.setdefault(key, at)
        return at - first < timedelta(seconds=self.leave_news_s)

    def _gone(self, room_sid: str, at: datetime, listed_at: datetime | None) -> list[Op]:
        ops: list[Op] = self._room_ended(room_sid, at, "GONE")
        self._forget_room(room_sid)
        self._rooms.pop(room_sid, None)
        for key in self._keys_in(room_sid):
            if listed_at is None or self._open[key].last_seen_at < listed_at:
                ops.append(self._reconciled(key, at))
        return ops

    def _attributes(self, ev: AttributesChanged) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant_sid)
        self._timelines.state(key, ev.attributes, ev.at)
        s = self._open.get(key)
        if s is None or dict(s.attributes) == dict(ev.attributes):
            return []
        s = replace(s, attributes=dict(ev.attributes), agent_name=agent_name_of(ev.attributes))
        self._open[key] = s
        return [UpdateAttributes(key, s.attributes, s.agent_name)]

    def _touch(
        self, keys: Iterable[SessionKey], at: datetime, *, evidence: bool = True
    ) -> list[Op]:
        """Move `last_seen_at` on. `evidence`: the room or the server showed the participant
        at `at`; else only the observer's connection did not report it gone (the
        heartbeat), which a connection that broke unnoticed cannot vouch for (`_trouble`)."""
        touched = []
        for key in keys:
            s = self._open.get(key)
            if s is not None and evidence:
                self._evidence[key] = max(at, self._evidence.get(key, at))
            if s is not None and at > s.last_seen_at:
                self._open[key] = replace(s, last_seen_at=at)
                touched.append(key)
        return [Touch(tuple(touched), at)] if touched else []

    def _trouble(self, room_sid: str, at: datetime) -> None:
        """The observer's connection to the room broke, noticed at `at`: it may have been
        dead for a while before (a relay through a node that died, a ping timeout), and
        what the heartbeat claimed meanwhile is no evidence. `last_seen_at` falls back to
        the last evidence, or to `trouble_window_s` before `at` if that is later."""
        window = at - timedelta(seconds=self.trouble_window_s)
        for key in self._keys_in(room_sid):
            s = self._open[key]
            floor = max(self._evidence.get(key, s.joined_at), s.joined_at)
            back = max(floor, min(s.last_seen_at, window))
            if back < s.last_seen_at:
                self._open[key] = replace(s, last_seen_at=back)

    def _close(
        self,
        key: SessionKey,
        *,
        left_at: datetime,
        reason: str | None,
        source: EndSource,
        uncertainty_ms: int | None = None,
        last_seen_at: datetime | None = None,
    ) -> Close:
        s = self._open.pop(key)
        self._suspect.pop(key, None)
        self._witness.pop(key, None)
        # (a leave that was not yet confirmed left the room's numbers as they were)
        self._present.get(key.room_sid, {}).pop(key.participant_sid, None)
        self._company.get(key.room_sid, set()).discard(key.participant_sid)
        self._recently_closed[key] = None
        self._in_view.discard(key)
        self._witnessed.discard(key)
        self._seen_live.discard(key)
        self._doubted.discard(key)
        self._evidence.pop(key, None)
        self._replaced_leaves.pop(key, None)
        self._superseded_by.pop(key, None)
        self._absent_at_join.pop(key, None)
        self._absent_listed.pop(key, None)
        if len(self._recently_closed) > RECENTLY_CLOSED_MAX:
            self._recently_closed.popitem(last=False)
        return Close(
            key=key,
            left_at=left_at,
            reason=reason,
            end_source=source,
            uncertainty_ms=uncertainty_ms,
            last_seen_at=left_at if last_seen_at is None else last_seen_at,
            session=s,
            timeline=self._timelines.finish(key, s.joined_at, max(left_at, s.joined_at)),
        )

    def _reconciled(
        self,
        key: SessionKey,
        at: datetime,
        *,
        reason: str | None = None,
        successor_joined_at: datetime | None = None,
    ) -> Close:
        """Close a session whose leave the observer did not see: at the webhook's time when
        LiveKit's webhook told it, else between when it was last seen and `at` (the lower
        bound is recorded, with the width of the gap).

        LiveKit keeps one participant per identity in a room, so a later session of the
        same identity (`successor_joined_at`, or one already open) bounds this one: it
        never ends after its successor joined, even when the observer's own connection was
        dead without its knowing and it went on counting the participant as seen."""
        witness = self._witness.get(key)
        if witness is not None:
            return self._close(
                key, left_at=witness.at, reason=witness.reason or reason, source=END_WEBHOOK
            )
        s = self._open[key]
        later = [
            o.joined_at
            for k, o in self._open.items()
            if k.room_sid == key.room_sid and o.identity == s.identity and o.joined_at > s.joined_at
        ]
        if successor_joined_at is not None and successor_joined_at > s.joined_at:
            later.append(successor_joined_at)
        left_at, width_ms = missed_leave(s.last_seen_at, at)
        if later and min(later) < left_at + timedelta(milliseconds=width_ms):
            upper = min(later)
            left_at = min(left_at, upper)
            width_ms = max(0, round((upper - left_at).total_seconds() * 1000))
        return self._close(
            key,
            left_at=left_at,
            reason=reason,
            source=END_RECONCILED,
            uncertainty_ms=width_ms,
            last_seen_at=left_at,
        )

    def _webhook_left(self, ev: WebhookLeft) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant.sid)
        if key in self._open and key in self._in_view and self._watching(ev.room_sid):
            if key not in self._suspect:
                # The observer should see this leave itself, to the millisecond: give it a
                # moment before the webhook's time is used.
                self._witness.setdefault(key, ev)
                return []
        if key in self._open:
            return [self._close(key, left_at=ev.at, reason=ev.reason or None, source=END_WEBHOOK)]
        # A session the observer never saw (it was down, or not in the room yet) is
        # opened from the webhook's participant info and closed at once.
        ops = self._joined(ev.room_name, ev.room_sid, ev.participant, ev.at)
        if key in self._open:
            ops.append(
                self._close(key, left_at=ev.at, reason=ev.reason or None, source=END_WEBHOOK)
            )
        return ops

    def _record_seen(self, keys: Iterable[SessionKey], at: datetime) -> list[Op]:
        """Record, once, that this observer saw these open sessions' participants itself."""
        keys = [k for k in keys if k in self._open]
        self._seen_live.update(keys)
        new = tuple(k for k in keys if k not in self._witnessed)
        self._witnessed.update(new)
        return [Witnessed(new, at)] if new else []

    def _room_seen(
        self,
        room_sid: str,
        at: datetime,
        metadata: str | None = None,
        created_at: datetime | None = None,
        *,
        force: bool = False,
    ) -> list[Op]:
        """A `RoomSeen` when asked to, or when the room holds more than it ever did."""
        name = self._room_name(room_sid)
        if name is None:
            return []
        present = self._present.get(room_sid, {})
        agents = sum(1 for kind in present.values() if kind == "agent")
        now = (agents, len(present))
        peak = self._peak.get(room_sid, (0, 0))
        if not force and now[0] <= peak[0] and now[1] <= peak[1]:
            return []
        self._peak[room_sid] = (max(now[0], peak[0]), max(now[1], peak[1]))
        return [RoomSeen(room_sid, name, metadata, created_at, at, *now)]

    def _presence(self, room_sid: str, at: datetime) -> list[Op]:
        """A `RoomPresence` when the numbers of agents or company in the room change."""
        name = self._room_name(room_sid)
        present = self._present.get(room_sid)
        if name is None or present is None:
            return []
        agents = sum(1 for kind in present.values() if kind == "agent")
        company = sum(1 for kind in present.values() if kind in COMPANY_KINDS)
        last = self._presence_shown.get(room_sid)
        if last is not None and (last[0], last[1]) == (agents, company):
            return []
        alone_since = None
        if agents and not company:
            alone_since = last[2] if last is not None and last[2] is not None else at
        self._presence_shown[room_sid] = (agents, company, alone_since)
        return [RoomPresence(room_sid, name, agents, company, alone_since, at)]

    def _room_ended(self, room_sid: str, at: datetime, reason: str) -> list[Op]:
        name = self._room_name(room_sid)
        return [] if name is None else [RoomEnded(room_sid, name, at, reason)]

    def _alone(self, room_sid: str) -> bool:
        """No company (a person, a phone line, an ingress, ...) in the room."""
        return not self._company.get(room_sid)

    def _company_changed(self, room_sid: str, at: datetime) -> None:
        self._timelines.alone(self._keys_in(room_sid), self._alone(room_sid), at)

    def _forget_room(self, room_sid: str) -> None:
        self._blind_handled.pop(room_sid, None)
        self._present.pop(room_sid, None)
        self._presence_shown.pop(room_sid, None)
        self._peak.pop(room_sid, None)
        self._in_view = {k for k in self._in_view if k.room_sid != room_sid}
        self._witnessed = {k for k in self._witnessed if k.room_sid != room_sid}
        self._company.pop(room_sid, None)
        self._alone_since.pop(room_sid, None)
        self._alerted.discard(room_sid)

    def _stuck(self, at: datetime) -> list[Op]:
        """One alert per spell of agents alone. A spell ends when company comes, the agents
        are gone or the room ends; while the observer cannot tell (its connection recovers,
        or its agents are unconfirmed), the spell neither ends nor starts."""
        agents_by_room: dict[str, list[TrackedSession]] = {}
        unsure: set[str] = set()
        for k, s in self._open.items():
            if s.kind == "agent" and k.room_sid in self._rooms:
                if k in self._suspect:
                    unsure.add(k.room_sid)
                else:
                    agents_by_room.setdefault(k.room_sid, []).append(s)
        ops: list[Op] = []
        for room_sid, room in self._rooms.items():
            agents = agents_by_room.get(room_sid)
            if self._company.get(room_sid) or not (agents or room_sid in unsure):
                self._alone_since.pop(room_sid, None)
                self._alerted.discard(room_sid)
                continue
            if room.state != "watching" or not agents:
                continue
            since = self._alone_since.setdefault(room_sid, at)
            if (at - since).total_seconds() >= self.stuck_after_s and room_sid not in self._alerted:
                self._alerted.add(room_sid)
                ids = tuple(sorted(s.identity for s in agents))
                ops.append(StuckAgents(room.name, room_sid, ids, since))
        self._stuck_count = sum(len(agents_by_room.get(sid, ())) for sid in self._alerted)
        return ops

    def _replaced_live(self, key: SessionKey, ev: ParticipantLeft) -> list[Op]:
        """LiveKit removed this participant because its identity joined again: the old
        session ends no later than the new one began (the server removes the old just
        before it starts the new, but the news of the leave may reach the observer after
        the new one's join time). Without the newer session yet, hold the close for it."""
        s = self._open[key]
        newer = self._newer_joins(key)
        if newer:
            left_at = min(ev.at, min(newer))
            return [self._close(key, left_at=left_at, reason=DUPLICATE_IDENTITY, source=END_RTC)]
        self._replaced_leaves[key] = replace(ev, at=max(ev.at, s.joined_at))
        return []

    def _newer_joins(self, key: SessionKey) -> list[datetime]:
        s = self._open[key]
        return [
            o.joined_at
            for k, o in self._open.items()
            if k.room_sid == key.room_sid and o.identity == s.identity and o.joined_at > s.joined_at
        ]

    def _release_replaced(self, at: datetime | None = None) -> list[Op]:
        """Close held leaves whose newer session joined, or that waited long enough; and
        bound the replaced sessions whose leave never came."""
        ops: list[Op] = []
        hold = timedelta(seconds=self.webhook_hold_s)
        for key, (joined_at, seen_at) in list(self._superseded_by.items()):
            if key not in self._open:
                del self._superseded_by[key]
            elif at is not None and at - seen_at >= hold:
                del self._superseded_by[key]
                ops.append(
                    self._reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=joined_at
                    )
                )
        for key, ev in list(self._replaced_leaves.items()):
            if key not in self._open:
                del self._replaced_leaves[key]
                continue
            newer = self._newer_joins(key)
            waited = at is not None and at - ev.at >= timedelta(seconds=self.webhook_hold_s)
            if newer or waited:
                del self._replaced_leaves[key]
                left_at = min([ev.at, *newer])
                ops.append(
                    self._close(key, left_at=left_at, reason=DUPLICATE_IDENTITY, source=END_RTC)
                )
        return ops

    def _replaced(
        self,
        room_sid: str,
        identity: str,
        sid: str,
        at: datetime,
        joined_at: datetime,
        *,
        live: bool = False,
    ) -> list[Op]:
        """A suspect leave followed by a join of the same identity is LiveKit replacing the
        older session (the newest connection wins): close it now, with that reason. A leave
        without a reason says nothing of when (the SDK reports every participant so around
        its own reconnects, and a connection that died with its node long before gets
        none): bounded, from the last evidence to the newer one's join."""
        ops: list[Op] = []
        for key in list(self._suspect):
            if key.room_sid == room_sid and key in self._open and key.participant_sid != sid:
                if self._open[key].identity != identity:
                    continue
                ops.append(
                    self._reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=joined_at
                    )
                )
        return ops + self._superseded(room_sid, identity, sid, joined_at, at, live=live)

    def _superseded(
        self,
        room_sid: str,
        identity: str,
        sid: str,
        joined_at: datetime,
        at: datetime,
        *,
        live: bool = False,
    ) -> list[Op]:
        """LiveKit keeps one participant per identity in a room: an open session of this
        identity that joined before `joined_at` is over, whether or not its leave was seen
        (after a cluster node died, the API may still list it). Seen live, in a room the
        observer watches, with the old session in view, the server's leave of the old
        one is awaited (`_replaced_live` closes it at the new join); otherwise, or when no
        such leave comes, it is bounded (`_reconciled`)."""
        ops: list[Op] = []
        for key, s in list(self._open.items()):
            if not (
                key.room_sid == room_sid
                and key.participant_sid != sid
                and s.identity == identity
                and s.joined_at < joined_at
            ):
                continue
            if live and self._watching(room_sid) and self._seen_now(key):
                # The server's leave of the old connection ends it at the newer one's join;
                # no leave (the old connection died with its node) leaves it bounded.
                self._superseded_by.setdefault(key, (joined_at, at))
            else:
                ops.append(
                    self._reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=joined_at
                    )
                )
        return ops

    def _seen_now(self, key: SessionKey) -> bool:
        """In view of this observer, and not in doubt."""
        return key in self._seen_live and key not in self._suspect

    def _usage(self, r: UsageReport) -> list[Op]:
        """The report's models whose totals changed since this observer last wrote them: an
        agent sends its totals after every metrics event, mostly unchanged."""
        key = SessionKey(r.room_sid, r.participant_sid)
        changed = []
        for m in r.models:
            seen = (key, m.key)
            if self._usage_written.get(seen) != m:
                changed.append(m)
                self._usage_written[seen] = m
                self._usage_written.move_to_end(seen)
        while len(self._usage_written) > RECENTLY_CLOSED_MAX:
            self._usage_written.popitem(last=False)
        return [RecordUsage(replace(r, models=tuple(changed)))] if changed else []

    def _usage_flags(self, r: UsageReport) -> list[Op]:
        key = SessionKey(r.room_sid, r.participant_sid)
        flags = []
        # (a posted report may reach an observer that does not watch the room: the reports
        # find those by the missing row)
        seen = key in self._open or key in self._recently_closed
        if r.source == "room" and not seen:
            flags.append("unseen_session")
        if any(
            m.kind == "llm" and m.session_ms > 0 and m.output_audio_tokens == 0 for m in r.models
        ):
            flags.append("silent_realtime")
        ops: list[Op] = []
        for flag in flags:
            if (key, flag) not in self._usage_flagged:
                self._usage_flagged[(key, flag)] = None
                if len(self._usage_flagged) > RECENTLY_CLOSED_MAX:
                    self._usage_flagged.popitem(last=False)
                ops.append(UsageFlagged(r.room_sid, r.participant_sid, r.identity, flag))
        return ops

    def _tick(self, at: datetime) -> list[Op]:
        ops: list[Op] = self._release_replaced(at)
        hold = timedelta(seconds=self.webhook_hold_s)
        for key, wh in list(self._witness.items()):
            if key not in self._open:
                del self._witness[key]
            elif at - wh.at >= hold:
                ops.append(
                    self._close(key, left_at=wh.at, reason=wh.reason or None, source=END_WEBHOOK)
                )
        retry = timedelta(seconds=self.verify_retry_s)
        for room_sid in {k.room_sid for k in self._suspect}:
            asked = self._verify_asked.get(room_sid)
            if asked is None or at - asked >= retry:
                ops += self._verify(room_sid, at)
        ops += self._stuck(at)
        if self._last_heartbeat is None:
            self._last_heartbeat = at
        elif (at - self._last_heartbeat).total_seconds() >= self.heartbeat_s:
            self._last_heartbeat = at
            watching = {sid for sid, r in self._rooms.items() if r.state == "watching"}
            ops += self._touch(
                [k for k in self._open if k.room_sid in watching and k not in self._suspect],
                at,
                evidence=False,
            )
        return ops
