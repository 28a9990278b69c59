"""The words stored in rows and shown in reports, each defined once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

# A participant's kind, as the token's kind claim gives it (stored in `participant_kind`).
Kind = Literal["standard", "ingress", "egress", "sip", "agent", "connector", "bridge"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)


def kind_named(enum_name: str) -> Kind:
    """The kind for a protocol enum name (`AGENT`, `PARTICIPANT_KIND_SIP`, ...); kinds this
    version does not know count as standard participants."""
    name = enum_name.lower().removeprefix("participant_kind_")
    for kind in KINDS:
        if name == kind:
            return kind
    return "standard"


# Attributes only agents carry: livekit-agents sets `lk.agent.state`, the token of a
# dispatched agent carries `lk.agent.name` (livekit-server 1.9 and later add `lk.agent_name`).
AGENT_ATTRIBUTES: Final = ("lk.agent.state", "lk.agent.name", "lk.agent_name")


def participant_kind(enum_name: str, attributes: Mapping[str, str]) -> Kind:
    """The kind of a participant: its kind claim's, except that a standard participant
    carrying an agent's attributes is an agent. livekit-server before 1.9 drops the kind
    claim from the token it refreshes, so an agent that reconnects in full (or rejoins with
    that token) comes back as a standard participant with its attributes."""
    kind = kind_named(enum_name)
    if kind == "standard" and any(a in attributes for a in AGENT_ATTRIBUTES):
        return "agent"
    return kind


# Participants that keep an agent company; an agent alone with none of these is "stuck".
COMPANY_KINDS: Final[frozenset[Kind]] = frozenset(
    {"standard", "sip", "ingress", "connector", "bridge"}
)

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
    "OBSERVER_REJOINING",  # a connection stuck reconnecting through a dead node, given up
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
