"""The words stored in rows and shown in reports, each defined once."""

from __future__ import annotations

from typing import Final, Literal, get_args

# A participant's kind, as the token's kind claim gives it (stored in `participant_kind`).
# A kind a newer LiveKit adds is stored as it came (`protocol_values.kind_value`).
Kind = Literal["standard", "ingress", "egress", "sip", "agent", "connector", "bridge"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)

# Participants that never keep an agent company; an agent alone with only these is "stuck".
# Every other kind does, a kind this version does not know included.
NO_COMPANY_KINDS: Final[frozenset[str]] = frozenset({"agent", "egress"})


def keeps_company(kind: str) -> bool:
    """Whether a participant of `kind` keeps an agent in its room company."""
    return kind not in NO_COMPANY_KINDS


# How `left_at` was learned (stored in `end_source`).
EndSource = Literal["rtc", "room_closed", "reconciled", "webhook"]
END_RTC: Final = "rtc"  # the leave was seen live by the observer in the room
END_ROOM_CLOSED: Final = "room_closed"  # the room was deleted or closed with the participant in it
END_RECONCILED: Final = "reconciled"  # the leave happened while the observer could not see it
END_WEBHOOK: Final = "webhook"  # learned from LiveKit's webhook, not seen by the observer
END_SOURCES: Final[tuple[EndSource, ...]] = get_args(EndSource)

# Why a participant's connection ended: LiveKit's `DisconnectReason` name, passed on as it
# is (stored in `disconnect_reason`). These two the tracker acts on.
UNKNOWN_REASON: Final = "UNKNOWN_REASON"  # none given; the SDK says so around its reconnects
DUPLICATE_IDENTITY: Final = "DUPLICATE_IDENTITY"  # the identity joined again: the older is out

# Why a room ended (stored in `rooms.end_reason`): the server's reason when the observer saw
# the room end, else how the observer learned of it.
RoomEndReason = Literal["ROOM_DELETED", "ROOM_CLOSED", "ROOM_FINISHED", "GONE"]
ROOM_DELETED: Final = "ROOM_DELETED"
ROOM_CLOSED: Final = "ROOM_CLOSED"  # closed by the server's timeouts
ROOM_FINISHED: Final = "ROOM_FINISHED"  # LiveKit's `room_finished` webhook
ROOM_GONE: Final = "GONE"  # missing from the server's listing
# The disconnect reasons that mean the room itself ended.
ROOM_ENDED: Final[frozenset[RoomEndReason]] = frozenset({ROOM_DELETED, ROOM_CLOSED})

# Why the observer is out of a room that goes on, when it was its own doing (`RoomLost`;
# otherwise the reason is the server's `DisconnectReason` name).
ObserverLeft = Literal[
    "OBSERVER_STOPPED",  # the daemon stops
    "OBSERVER_PROCESS_EXITED",  # the room process holding the room died
    # a connection left for a join afresh: stuck reconnecting through a dead node,
    # overtaken by a newer join of its room, or replaced after the SDK's reconnect by a
    # fresh join that failed
    "OBSERVER_REJOINING",
    "OBSERVER_OVERFLOW",  # too many events held while reconnecting
]
OBSERVER_STOPPED: Final = "OBSERVER_STOPPED"
OBSERVER_PROCESS_EXITED: Final = "OBSERVER_PROCESS_EXITED"
OBSERVER_REJOINING: Final = "OBSERVER_REJOINING"
OBSERVER_OVERFLOW: Final = "OBSERVER_OVERFLOW"
OBSERVER_LEFT: Final[tuple[ObserverLeft, ...]] = get_args(ObserverLeft)

# Whether a session is still open, for filters.
SessionState = Literal["open", "closed"]

# What a reconcile run rolls up per period: one row per agent name, per room, and a total.
GroupKind = Literal["agent", "room", "total"]
GROUP_KINDS: Final[tuple[GroupKind, ...]] = get_args(GroupKind)

# A period's rollup after a run: recomputed until the finalize delay passes ("provisional"),
# finalized by this run, finalized before and kept ("final"), or rewritten with --force.
RollupState = Literal["provisional", "finalized", "final", "forced"]

# How a statement line and the observer's numbers differ.
DifferenceStatus = Literal["missing_in_statement", "missing_in_observer", "minutes_differ"]
