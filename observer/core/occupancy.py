"""Who is in each watched room, as the observer sees it: the numbers of agents and of
company (people, phone lines, ingresses, ...), the most the room ever held, since when its
agents have been alone, and the alert for agents alone too long. Pure logic."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from observer.core.changes import RoomPresence, RoomSeen, StuckAgents
from observer.core.events import SeenParticipant, SessionKey, TrackedSession
from observer.core.open_sessions import OpenSessions
from observer.core.vocab import keeps_company


@dataclass(frozen=True)
class WatchedRoom:
    """A room as `Occupancy.stuck` needs it: its name and whether the observer sees it now
    (not while its connection recovers)."""

    name: str
    watching: bool


@dataclass
class Occupancy:
    """The participants present in each room (by sid, with their kind), and what was last
    said about them."""

    stuck_after_s: float = 300.0
    _present: dict[str, dict[str, str]] = field(default_factory=dict)  # room -> sid -> kind
    _company: dict[str, set[str]] = field(default_factory=dict)
    _peak: dict[str, tuple[int, int]] = field(default_factory=dict)  # room -> agents, all
    # room -> (agents, company, alone since) as last written
    _presence_shown: dict[str, tuple[int, int, datetime | None]] = field(default_factory=dict)
    _alone_since: dict[str, datetime] = field(default_factory=dict)
    _alerted: set[str] = field(default_factory=set)
    _stuck_count: int = 0

    @property
    def stuck_count(self) -> int:
        """Agents in rooms flagged as stuck, as of the last check."""
        return self._stuck_count

    def snapshot(self, room_sid: str, present: Sequence[SeenParticipant]) -> None:
        """Everyone in the room, as a (re)join shows it."""
        self._company[room_sid] = {p.sid for p in present if keeps_company(p.kind)}
        self._present[room_sid] = {p.sid: p.kind for p in present}

    def arrived(self, room_sid: str, participant_sid: str, kind: str) -> None:
        if keeps_company(kind):
            self._company.setdefault(room_sid, set()).add(participant_sid)
        self._present.setdefault(room_sid, {})[participant_sid] = kind

    def departed(self, room_sid: str, participant_sid: str) -> None:
        self._company.get(room_sid, set()).discard(participant_sid)
        self._present.get(room_sid, {}).pop(participant_sid, None)

    def alone(self, room_sid: str) -> bool:
        """No company in the room."""
        return not self._company.get(room_sid)

    def forget(self, room_sid: str) -> None:
        """The observer is out of the room: what it knew of it is stale."""
        self._present.pop(room_sid, None)
        self._presence_shown.pop(room_sid, None)
        self._peak.pop(room_sid, None)
        self._company.pop(room_sid, None)
        self._alone_since.pop(room_sid, None)
        self._alerted.discard(room_sid)

    def room_seen(
        self,
        room_sid: str,
        name: str,
        at: datetime,
        metadata: str | None = None,
        created_at: datetime | None = None,
        *,
        force: bool = False,
    ) -> list[RoomSeen]:
        """A `RoomSeen` when asked to, or when the room holds more than it ever did."""
        present = self._present.get(room_sid, {})
        agents = sum(1 for kind in present.values() if kind == "agent")
        now = (agents, len(present))
        peak = self._peak.get(room_sid, (0, 0))
        if not force and now[0] <= peak[0] and now[1] <= peak[1]:
            return []
        self._peak[room_sid] = (max(now[0], peak[0]), max(now[1], peak[1]))
        return [RoomSeen(room_sid, name, metadata, created_at, at, *now)]

    def presence(self, room_sid: str, name: str, at: datetime) -> list[RoomPresence]:
        """A `RoomPresence` when the numbers of agents or company in the room change."""
        present = self._present.get(room_sid)
        if present is None:
            return []
        agents = sum(1 for kind in present.values() if kind == "agent")
        company = sum(1 for kind in present.values() if keeps_company(kind))
        last = self._presence_shown.get(room_sid)
        if last is not None and (last[0], last[1]) == (agents, company):
            return []
        alone_since = None
        if agents and not company:
            alone_since = last[2] if last is not None and last[2] is not None else at
        self._presence_shown[room_sid] = (agents, company, alone_since)
        return [RoomPresence(room_sid, name, agents, company, alone_since, at)]

    def stuck(
        self,
        at: datetime,
        rooms: Mapping[str, WatchedRoom],
        sessions: OpenSessions,
        suspects: Container[SessionKey],
    ) -> list[StuckAgents]:
        """One alert per spell of agents alone in the watched `rooms`. A spell ends when
        company comes, the agents are gone or the room ends; while the observer cannot tell
        (its connection recovers, or its agents are `suspects`), it neither ends nor starts."""
        agents_by_room: dict[str, list[TrackedSession]] = {}
        unsure: set[str] = set()
        for room_sid in rooms:
            for key in sessions.in_room(room_sid):
                s = sessions[key]
                if s.kind != "agent":
                    continue
                if key in suspects:
                    unsure.add(room_sid)
                else:
                    agents_by_room.setdefault(room_sid, []).append(s)
        alerts: list[StuckAgents] = []
        for room_sid, room in rooms.items():
            agents = agents_by_room.get(room_sid)
            if self._company.get(room_sid) or not (agents or room_sid in unsure):
                self._alone_since.pop(room_sid, None)
                self._alerted.discard(room_sid)
                continue
            if not room.watching or not agents:
                continue
            since = self._alone_since.setdefault(room_sid, at)
            if (at - since).total_seconds() >= self.stuck_after_s and room_sid not in self._alerted:
                self._alerted.add(room_sid)
                ids = tuple(sorted(s.identity for s in agents))
                alerts.append(StuckAgents(room.name, room_sid, ids, since))
        self._stuck_count = sum(len(agents_by_room.get(sid, ())) for sid in self._alerted)
        return alerts
