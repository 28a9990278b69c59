"""What the tracker gives out for one event (`EventChanges`): row writes for the writer, and
notices for the daemon to act on (never written). Plain data, and the one rule for a leave
nobody saw (`missed_leave`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import assert_never

from observer.core.agent_usage import UsageReport
from observer.core.events import SessionKey, TrackedSession
from observer.core.timeline import Span, Timeline
from observer.core.vocab import EndSource


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
    # what this observer saw of it and has not written yet (its `SpanEnded` are written);
    # None: never watched
    timeline: Timeline | None = None


@dataclass(frozen=True)
class SpanEnded:
    """A stretch of an open session's timeline ended: written as it ends, not kept, and
    moved to the session's spans when the session closes. `observed_from`: when this
    observer began watching the session."""

    key: SessionKey
    span: Span
    observed_from: datetime


@dataclass(frozen=True)
class RefreshLastSeen:
    """These open sessions' participants were present at `at`: move their `last_seen_at`."""

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
class RequestListing:
    """Ask the server's API who is in this room; the answer comes back as `ServerListing`.
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
    | RefreshLastSeen
    | UpdateAttributes
    | Witnessed
    | RoomSeen
    | RoomPresence
    | RoomEnded
    | RecordUsage
    | SpanEnded
)  # changes to the rows
Notice = (
    StuckAgents | RequestListing | UsageDropped | UsageFlagged
)  # for the daemon to act on; never written
Op = RowWrite | Notice


@dataclass(frozen=True)
class EventChanges:
    """What one event changes: row writes for the writer, notices for the daemon."""

    writes: tuple[RowWrite, ...] = ()
    notices: tuple[Notice, ...] = ()

    @classmethod
    def of(cls, ops: Iterable[Op]) -> EventChanges:
        writes: list[RowWrite] = []
        notices: list[Notice] = []
        for op in ops:
            match op:
                case (
                    Open()
                    | Close()
                    | RefreshLastSeen()
                    | UpdateAttributes()
                    | Witnessed()
                    | RoomSeen()
                    | RoomPresence()
                    | RoomEnded()
                    | RecordUsage()
                    | SpanEnded()
                ):
                    writes.append(op)
                case StuckAgents() | RequestListing() | UsageDropped() | UsageFlagged():
                    notices.append(op)
                case _:
                    assert_never(op)
        return cls(tuple(writes), tuple(notices))


def missed_leave(last_seen_at: datetime, learned_at: datetime) -> tuple[datetime, int]:
    """The one rule for a leave nobody saw: the session ends at the last time the participant
    was seen, and the gap until its absence was learned is the uncertainty (ms)."""
    return last_seen_at, max(0, round((learned_at - last_seen_at).total_seconds() * 1000))
