"""The messages between the daemon and a room process: one frozen dataclass each.

The daemon sends `Join`, `Leave`, `Recovered` and `Renew`; a worker answers each join with
`Joined`, `JoinMismatch` or `JoinFailedReply`, each leave with `Left`, each renewal with
`Renewed`, and sends its watchers' tracker events as `RoomEvent` and their reconnects as
`Reconnected`.
"""

from __future__ import annotations

from dataclasses import dataclass

from observer.core.events import Event


@dataclass(frozen=True, slots=True)
class Join:
    """Join this room (one join at a time in a worker)."""

    room_name: str
    room_sid: str
    ws_url: str
    token: str
    connect_timeout_s: float
    agent_attributes: bool  # see RoomWatcher


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave this room; answered by `Left` whether or not the worker held it."""

    room_sid: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """The daemon checked the room after the SDK's reconnect (see `RoomWatcher.recovered`)."""

    room_sid: str
    same_room: bool


@dataclass(frozen=True, slots=True)
class Renew:
    """Join this room afresh, in turn (see `RoomWatcher.renew`); answered by `Renewed`."""

    room_sid: str
    ws_url: str
    token: str
    connect_timeout_s: float


@dataclass(frozen=True, slots=True)
class Joined:
    room_sid: str


@dataclass(frozen=True, slots=True)
class JoinMismatch:
    """The join landed in another room of the same name (`RoomMismatchError`)."""

    room_sid: str
    joined_sid: str


@dataclass(frozen=True, slots=True)
class JoinFailedReply:
    """The join failed; `detail` is the error in one line."""

    room_sid: str
    detail: str


@dataclass(frozen=True, slots=True)
class Left:
    room_sid: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The SDK reconnected this room's connection: the daemon is to check the room."""

    room_sid: str


@dataclass(frozen=True, slots=True)
class Renewed:
    """The worker is done with a `Renew` (its outcome came as the room's events)."""

    room_sid: str


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """A tracker event from one of the worker's watchers."""

    event: Event


ToWorker = Join | Leave | Recovered | Renew
JoinReply = Joined | JoinMismatch | JoinFailedReply
FromWorker = JoinReply | Left | Renewed | Reconnected | RoomEvent
Message = ToWorker | FromWorker
