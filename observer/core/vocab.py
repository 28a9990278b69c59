"""The words stored in rows and shown in reports, each defined once."""

from __future__ import annotations

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
