"""The open sessions, in the order they were opened and indexed by room: most events touch
one room, and the tracker looks at that room's sessions only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

from observer.core.events import SessionKey, TrackedSession


class OpenSessions(Mapping[SessionKey, TrackedSession]):
    """The open sessions, in the order they were opened, and by room."""

    def __init__(self) -> None:
        self._all: dict[SessionKey, TrackedSession] = {}
        self._by_room: dict[str, dict[SessionKey, None]] = {}

    def __getitem__(self, key: SessionKey) -> TrackedSession:
        return self._all[key]

    def __iter__(self) -> Iterator[SessionKey]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def __setitem__(self, key: SessionKey, session: TrackedSession) -> None:
        self._all[key] = session
        self._by_room.setdefault(key.room_sid, {})[key] = None

    def pop(self, key: SessionKey) -> TrackedSession:
        session = self._all.pop(key)
        room = self._by_room[key.room_sid]
        del room[key]
        if not room:
            del self._by_room[key.room_sid]
        return session

    def discard(self, key: SessionKey) -> None:
        if key in self._all:
            self.pop(key)

    def in_room(self, room_sid: str) -> list[SessionKey]:
        """The room's open sessions, in the order they were opened."""
        return list(self._by_room.get(room_sid, ()))

    def rooms(self) -> list[str]:
        """The rooms with open sessions."""
        return list(self._by_room)

    def room_name(self, room_sid: str) -> str | None:
        keys = self._by_room.get(room_sid)
        return self._all[next(iter(keys))].room_name if keys else None

    def later_joins(self, key: SessionKey) -> list[datetime]:
        """When the room's later sessions of this one's identity joined."""
        s = self._all[key]
        return [
            o.joined_at
            for o in (self._all[k] for k in self._by_room.get(key.room_sid, ()))
            if o.identity == s.identity and o.joined_at > s.joined_at
        ]
