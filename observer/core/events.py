"""What the tracker takes in: the sessions it follows, and the events that change them
(a room joined with a snapshot of who is there, a participant joined or left, the observer's
own reconnect, a room closed or gone, webhooks, usage reports, the clock). Plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from observer.core.agent_usage import UsageReport


@dataclass(frozen=True)
class SessionKey:
    room_sid: str
    participant_sid: str


@dataclass(frozen=True)
class SeenParticipant:
    """A participant as the observer saw it."""

    sid: str
    identity: str
    name: str
    kind: str
    attributes: Mapping[str, str]
    joined_at: datetime
    kind_details: tuple[str, ...] = ()  # protocol names, or DETAIL_<number> (protocol_values)
    # 1000 when LiveKit gave the join time in whole seconds; None when it gave none and
    # `joined_at` is when the observer first saw the participant
    join_precision_ms: int | None = 1


def agent_name_of(attributes: Mapping[str, str]) -> str | None:
    """The agent's name as LiveKit (`lk.agent_name`) or the agents framework sets it."""
    return attributes.get("lk.agent_name") or attributes.get("lk.agent.name") or None


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
    kind_details: tuple[str, ...] = ()
    join_precision_ms: int | None = 1

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.room_sid, self.participant_sid)


@dataclass(frozen=True)
class RoomJoined:
    """The observer is in the room; `present` is everyone it can see right now, `metadata`
    the room's metadata and `created_at` when the server created the room."""

    room_name: str
    room_sid: str
    present: tuple[SeenParticipant, ...]
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
    participant: SeenParticipant
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
    present: tuple[SeenParticipant, ...]
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
class ServerListing:
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
class StoredOpenSessions:
    """The open rows of a room about to be joined, as the database has them (whichever
    observer wrote them): sessions to continue, and to settle if their participant is gone."""

    room_sid: str
    sessions: tuple[TrackedSession, ...]


@dataclass(frozen=True)
class WebhookJoined:
    """LiveKit's webhook says a participant joined (`at` is the event's createdAt)."""

    room_name: str
    room_sid: str
    participant: SeenParticipant
    at: datetime


@dataclass(frozen=True)
class WebhookLeft:
    """LiveKit's webhook says a participant left; it carries the participant's join time."""

    room_name: str
    room_sid: str
    participant: SeenParticipant
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
    | ServerListing
    | Tick
    | Blind
    | StoredOpenSessions
    | RoomHandedOver
    | WebhookJoined
    | WebhookLeft
    | WebhookRoomFinished
    | UsageReported
    | UsageUndecodable
)
