"""The session tracker: what the observer sees in rooms becomes rows to write.

Pure logic. It takes events (`observer.core.events`: a room joined with a snapshot of who is
there, a participant joined or left, the observer's own reconnect, a room closed or gone,
the clock) and returns an `EventChanges` (`observer.core.changes`) for the store. No I/O, no
asyncio, no LiveKit or SQL types. The sessions' lifecycle is `observer.core.sessions` (its rules)
and `observer.core.session_book` (its moves), who is in each room `observer.core.occupancy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, assert_never

from observer.core.changes import EventChanges, Op, RequestListing, RoomEnded, UsageDropped
from observer.core.events import (
    AttributesChanged,
    Blind,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomClosed,
    RoomGone,
    RoomHandedOver,
    RoomJoined,
    RoomLost,
    RoomMetadataChanged,
    RoomUnreachable,
    SeenParticipant,
    ServerListing,
    SessionKey,
    StoredOpenSessions,
    Tick,
    TrackedSession,
    UsageReported,
    UsageUndecodable,
    WebhookJoined,
    WebhookLeft,
    WebhookRoomFinished,
)
from observer.core.gaps import HandledGaps
from observer.core.occupancy import Occupancy, WatchedRoom
from observer.core.sessions import Sessions
from observer.core.usage_ledger import UsageLedger
from observer.core.vocab import (
    DUPLICATE_IDENTITY,
    END_WEBHOOK,
    ROOM_CLOSED,
    ROOM_FINISHED,
    ROOM_GONE,
    UNKNOWN_REASON,
    RoomEndReason,
)

# A watched room: the observer is inside and sees it, or its connection is reconnecting.
RoomState = Literal["watching", "reconnecting"]


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
    the session a suspect: a `RequestListing` asks the API, and `ServerListing` settles
    it. A leave that happened while the observer could not see is closed `reconciled`
    between when the participant was last seen and when its absence was learned, or at the
    webhook's time when LiveKit's webhook told it.

    The API is wrong in one case: a cluster node that died leaves its participants listed
    in Redis. A participant the observer had seen, missing from a fresh join of its room
    yet listed for `stale_listing_s`, is closed `reconciled` as well.
    """

    tracked_kinds: frozenset[str]
    last_seen_refresh_s: float = 15.0
    stuck_after_s: float = 300.0
    listing_retry_s: float = 3.0
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
    _rooms: dict[str, _Room] = field(default_factory=dict)
    _listing_asked: dict[str, datetime] = field(default_factory=dict)
    _last_refresh: datetime | None = None
    _gaps: HandledGaps = field(default_factory=HandledGaps)
    _usage: UsageLedger = field(default_factory=UsageLedger)

    def __post_init__(self) -> None:
        self._occupancy = Occupancy(stuck_after_s=self.stuck_after_s)
        self._s = Sessions(
            self.tracked_kinds,
            self._occupancy,
            webhook_hold_s=self.webhook_hold_s,
            trouble_window_s=self.trouble_window_s,
            stale_listing_s=self.stale_listing_s,
            leave_news_s=self.leave_news_s,
            last_seen_refresh_s=self.last_seen_refresh_s,
        )
        self._open = self._s.open
        self._suspect = self._s.suspect

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
        return self._occupancy.stuck_count

    @property
    def watched_count(self) -> int:
        return len(self._rooms)

    def unwatched_rooms(self) -> dict[str, str]:
        """room_sid -> room_name of rooms with open sessions that the observer is not in."""
        return {
            sid: self._open[self._open.in_room(sid)[0]].room_name
            for sid in self._open.rooms()
            if sid not in self._rooms
        }

    def handle(self, ev: Event) -> EventChanges:
        """Apply one event; return the writes that record its effect and the notices, with
        the timelines' spans that ended (after the event's own writes: a session closed by
        it carries its last spans itself)."""
        return EventChanges.of([*self._apply(ev), *self._s.spans_ended()])

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
                return self._reconnected(ev)
            case ParticipantJoined():
                return self._participant_joined(ev)
            case RoomHandedOver():
                self._forget_room(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                self._s.handed_over(ev.room_sid)
                return []
            case StoredOpenSessions():
                for s in ev.sessions:
                    if s.key not in self._open and s.key not in self._s.recently_closed:
                        self._open[s.key] = s
                return []
            case ParticipantLeft():
                return self._left(ev)
            case AttributesChanged():
                return self._s.attributes(ev)
            case Reconnecting():
                # No touch: the connection broke some time before the SDK noticed, so the
                # moment of noticing is no evidence that anyone was still there.
                room = self._rooms.get(ev.room_sid)
                if room is None:
                    return []
                room.state = "reconnecting"
                self._s.timelines.pause(self._keys_in(ev.room_sid), ev.at)
                self._s.trouble(ev.room_sid, ev.at)
                return []
            case RoomClosed():
                return self._room_closed(ev)
            case RoomLost():
                return self._room_lost(ev)
            case RoomGone():
                return self._gone(ev.room_sid, ev.at, ev.listed_at)
            case RoomUnreachable():
                self._s.trouble(ev.room_sid, ev.at)
                self._forget_room(ev.room_sid)
                self._rooms.pop(ev.room_sid, None)
                return self._s.bounded(ev.room_sid, ev.at)
            case ServerListing():
                return self._server_listing(ev)
            case Tick():
                return self._blind_news(ev.blind_since, ev.at) + self._tick(ev.at)
            case Blind():
                return self._blind(ev.since, ev.until, ev.rooms)
            case WebhookJoined():
                return self._s.opened(ev.room_name, ev.room_sid, ev.participant, ev.at)
            case WebhookLeft():
                return self._s.webhook_left(ev, watching=self._watching(ev.room_sid))
            case UsageReported():
                # kept whether or not the session is known yet: the row links them by key
                r = ev.report
                key = SessionKey(r.room_sid, r.participant_sid)
                known = key in self._open or key in self._s.recently_closed
                return [*self._usage.changed(r), *self._usage.flags(r, session_known=known)]
            case UsageUndecodable():
                return [UsageDropped(ev.room_sid, ev.identity)]
            case WebhookRoomFinished():
                if self._watching(ev.room_sid):
                    return []  # the observer is inside and sees the room end itself
                return self._room_ended(ev.room_sid, ev.at, ROOM_FINISHED) + [
                    self._s.close(key, left_at=ev.at, reason=None, source=END_WEBHOOK)
                    for key in self._keys_in(ev.room_sid)
                ]
            case _:
                assert_never(ev)

    # ---- the observer in a room ---------------------------------------------------------

    def _reconnected(self, ev: Reconnected) -> list[Op]:
        room = self._rooms.get(ev.room_sid)
        if room is None:
            return []
        room.state = "watching"
        # as after a fresh join: after a full reconnect the room's list comes from the node
        # that hosts it now, so an absence the API goes on listing is stale
        ops = self._snapshot(ev.room_sid, room.name, ev.present, ev.at, fresh=True)
        return ops + self._room_seen(ev.room_sid, ev.at) + self._presence(ev.room_sid, ev.at)

    def _room_lost(self, ev: RoomLost) -> list[Op]:
        ops = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        self._forget_room(ev.room_sid)
        self._s.timelines.pause(self._keys_in(ev.room_sid), ev.at)
        room = self._rooms.pop(ev.room_sid, None)
        if room is not None and room.state == "watching" and ev.blind_since is None:
            keys = [k for k in self._keys_in(ev.room_sid) if k not in self._suspect]
            return self._s.touch(keys, ev.at, evidence=False)
        return ops

    def _keys_in(self, room_sid: str) -> list[SessionKey]:
        return self._open.in_room(room_sid)

    def _watching(self, room_sid: str) -> bool:
        room = self._rooms.get(room_sid)
        return room is not None and room.state == "watching"

    def _room_name(self, room_sid: str) -> str | None:
        room = self._rooms.get(room_sid)
        return room.name if room is not None else self._open.room_name(room_sid)

    def _forget_room(self, room_sid: str) -> None:
        self._gaps.forget(room_sid)
        self._occupancy.forget(room_sid)
        self._s.out_of_view(room_sid)

    def _snapshot(
        self,
        room_sid: str,
        room_name: str,
        present: tuple[SeenParticipant, ...],
        at: datetime,
        *,
        fresh: bool = False,
    ) -> list[Op]:
        """What the observer sees on (re)joining a room. A fresh join shows everyone in the
        room from the node that hosts it, so an absence there is remembered (see
        `stale_listing_s`)."""
        s = self._s
        ops: list[Op] = []
        present_sids = {p.sid for p in present}
        self._occupancy.snapshot(room_sid, present)
        s.in_view.update(
            SessionKey(room_sid, p.sid) for p in present if p.kind in self.tracked_kinds
        )
        missing = s.absences(room_sid, present_sids, at, fresh=fresh)
        watching = self._watching(room_sid)
        for p in present:
            if p.kind in self.tracked_kinds:
                ops += s.superseded(room_sid, p, at, watching=watching)
            ops += s.opened(room_name, room_sid, p, at)
            key = SessionKey(room_sid, p.sid)
            if key in self._open:
                s.timelines.seen(key, at, p.attributes, self._occupancy.alone(room_sid))
        ops += s.record_seen([SessionKey(room_sid, p.sid) for p in present], at)
        if missing:
            ops += self._request_listing(room_sid, at)
        return ops

    def _room_seen(
        self,
        room_sid: str,
        at: datetime,
        metadata: str | None = None,
        created_at: datetime | None = None,
        *,
        force: bool = False,
    ) -> list[Op]:
        name = self._room_name(room_sid)
        if name is None:
            return []
        return [*self._occupancy.room_seen(room_sid, name, at, metadata, created_at, force=force)]

    def _presence(self, room_sid: str, at: datetime) -> list[Op]:
        name = self._room_name(room_sid)
        return [] if name is None else [*self._occupancy.presence(room_sid, name, at)]

    def _company_changed(self, room_sid: str, at: datetime) -> None:
        alone = self._occupancy.alone(room_sid)
        self._s.timelines.alone(self._keys_in(room_sid), alone, at)

    def _request_listing(self, room_sid: str, at: datetime) -> list[Op]:
        name = self._room_name(room_sid)
        if name is None:
            return []
        self._listing_asked[room_sid] = at
        return [RequestListing(room_sid, name)]

    # ---- participants -------------------------------------------------------------------

    def _participant_joined(self, ev: ParticipantJoined) -> list[Op]:
        s, p = self._s, ev.participant
        key = SessionKey(ev.room_sid, p.sid)
        blind = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        if ev.blind_since is None:
            self._suspect.pop(key, None)
            s.doubted.discard(key)
        s.absent_at_join.pop(key, None)
        if p.kind in self.tracked_kinds:
            s.in_view.add(key)
        self._occupancy.arrived(ev.room_sid, p.sid, p.kind)
        live = ev.blind_since is None
        ops = s.replaced(ev.room_sid, p, ev.at, live=live, watching=self._watching(ev.room_sid))
        ops += s.opened(ev.room_name, ev.room_sid, p, ev.at, blind=not live)
        if key in self._open:
            # from the join itself, when the observer saw it happen
            seen_join = timedelta(0) <= ev.at - p.joined_at < timedelta(seconds=2)
            s.timelines.seen(
                key,
                ev.at,
                p.attributes,
                self._occupancy.alone(ev.room_sid),
                joined_at=p.joined_at if seen_join else None,
            )
        self._company_changed(ev.room_sid, ev.at)
        ops += s.release_replaced()
        ops += self._room_seen(ev.room_sid, ev.at) + self._presence(ev.room_sid, ev.at)
        return blind + ops + s.record_seen([key], ev.at)

    def _left(self, ev: ParticipantLeft) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant_sid)
        self._s.timelines.pause([key], ev.at)
        ops = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        if key in self._open and ev.reason in ("", UNKNOWN_REASON):
            # Not known to be real: the room's numbers change when the server confirms it.
            return ops + self._left_session(ev, key)
        return (
            ops + self._absent(ev.room_sid, ev.participant_sid, ev.at) + self._left_session(ev, key)
        )

    def _absent(self, room_sid: str, participant_sid: str, at: datetime) -> list[Op]:
        """The participant is no longer in the room: its numbers change."""
        self._occupancy.departed(room_sid, participant_sid)
        self._company_changed(room_sid, at)
        return self._presence(room_sid, at)

    def _left_session(self, ev: ParticipantLeft, key: SessionKey) -> list[Op]:
        if key not in self._open:
            return []
        watching = self._watching(ev.room_sid)
        if ev.reason in ("", UNKNOWN_REASON):
            # Not known to be real: may be the SDK's own reconnect. Ask the server.
            fresh = watching and ev.blind_since is None
            ops: list[Op] = self._s.touch([key], ev.at, evidence=False) if fresh else []
            self._suspect.setdefault(key, ev)
            return ops + self._request_listing(ev.room_sid, ev.at)
        if ev.blind_since is not None:
            # The news arrived, but the leave happened while the observer was not running.
            return [self._s.reconciled(key, ev.at, reason=ev.reason)]
        if watching and ev.reason == DUPLICATE_IDENTITY:
            return self._s.replaced_live(key, ev)
        if watching:
            return [self._s.seen_leave(key, ev)]
        # Announced by the server while the observer was reconnecting: real, but the moment
        # it happened is only known to lie in the gap.
        return [self._s.reconciled(key, ev.at, reason=ev.reason)]

    # ---- gaps in the observer's own life --------------------------------------------------

    def _blind_news(
        self, since: datetime | None, at: datetime, room_sid: str | None = None
    ) -> list[Op]:
        """An event that arrived just after a gap in the observer's own life: handle the gap
        first (once), so nothing the gap hid counts as seen."""
        if since is None:
            return []
        if self._gaps.handled(since, room_sid):
            return []
        return self._blind(since, at, None if room_sid is None else frozenset({room_sid}))

    def _blind(self, since: datetime, until: datetime, rooms: frozenset[str] | None) -> list[Op]:
        """The observer saw nothing of `rooms` from `since` to `until`: every session it counts
        as present there becomes a suspect, to be confirmed by the room or the server's
        listing; until then its `last_seen_at` stays where the last evidence put it."""
        self._gaps.mark(since, [None] if rooms is None else rooms)
        self._last_refresh = until  # the next refresh comes a whole period later
        affected = set(self._rooms) if rooms is None else set(rooms) & set(self._rooms)
        ops: list[Op] = []
        for room_sid in sorted(affected):
            if self._s.doubt(room_sid, since, until):
                ops += self._request_listing(room_sid, until)
        return ops

    # ---- rooms ending, and the server's word ------------------------------------------------

    def _room_ended(self, room_sid: str, at: datetime, reason: RoomEndReason | str) -> list[Op]:
        name = self._room_name(room_sid)
        return [] if name is None else [RoomEnded(room_sid, name, at, reason)]

    def _room_closed(self, ev: RoomClosed) -> list[Op]:
        ops: list[Op] = self._blind_news(ev.blind_since, ev.at, ev.room_sid)
        ops += self._room_ended(ev.room_sid, ev.at, ev.reason or ROOM_CLOSED)
        self._forget_room(ev.room_sid)
        self._rooms.pop(ev.room_sid, None)
        return ops + self._s.closed_with_room(ev.room_sid, ev.at, ev.reason)

    def _gone(self, room_sid: str, at: datetime, listed_at: datetime | None) -> list[Op]:
        ops: list[Op] = self._room_ended(room_sid, at, ROOM_GONE)
        self._forget_room(room_sid)
        self._rooms.pop(room_sid, None)
        return ops + self._s.bounded(room_sid, at, listed_at)

    def _server_listing(self, ev: ServerListing) -> list[Op]:
        self._listing_asked.pop(ev.room_sid, None)
        if not ev.exists:
            return self._gone(ev.room_sid, ev.at, ev.requested_at)
        return self._s.listed(
            ev,
            watching=self._watching(ev.room_sid),
            alone=lambda: self._occupancy.alone(ev.room_sid),
            absent=lambda sid: self._absent(ev.room_sid, sid, ev.at),
        )

    # ---- the clock ----------------------------------------------------------------------

    def _tick(self, at: datetime) -> list[Op]:
        ops: list[Op] = self._s.release_replaced(at)
        ops += self._s.release_witnessed(at)
        retry = timedelta(seconds=self.listing_retry_s)
        for room_sid in {k.room_sid for k in self._suspect}:
            asked = self._listing_asked.get(room_sid)
            if asked is None or at - asked >= retry:
                ops += self._request_listing(room_sid, at)
        # an ask older than the retry decides nothing: forgotten, as if never made
        for room_sid in [r for r, asked in self._listing_asked.items() if at - asked >= retry]:
            del self._listing_asked[room_sid]
        self._gaps.prune(self._rooms, at)
        self._s.recently_closed.age(at)
        self._usage.age(at)
        ops += self._stuck(at)
        if self._last_refresh is None:
            self._last_refresh = at
        elif (at - self._last_refresh).total_seconds() >= self.last_seen_refresh_s:
            self._last_refresh = at
            watching = {sid for sid, r in self._rooms.items() if r.state == "watching"}
            keys = [k for k in self._open if k.room_sid in watching and k not in self._suspect]
            ops += self._s.touch(keys, at, evidence=False)
        return ops

    def _stuck(self, at: datetime) -> list[Op]:
        rooms = {sid: WatchedRoom(r.name, r.state == "watching") for sid, r in self._rooms.items()}
        return [*self._occupancy.stuck(at, rooms, self._open, self._suspect)]
