"""LiveKit's protocol values as the observer stores them. A newer LiveKit sends values this
version has no word for (a participant kind, a kind detail, a disconnect reason, a webhook
event): each is kept as it came, by its protocol name when the installed protocol package
has one and by its number when not, and never mistaken for a value the observer knows.

The spellings (documented in README, "LiveKit releases"):
- participant kind: the lowercase name (`agent`, `connector`), else `kind_<number>`;
- kind detail: the name (`CLOUD_AGENT`), else `DETAIL_<number>`;
- disconnect reason: the name (`AGENT_ERROR`), else `REASON_<number>`;
- webhook event: its name as LiveKit sent it (the JSON carries a string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal, get_args

from observer.core.events import (
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    RoomJoined,
    SeenParticipant,
    WebhookJoined,
    WebhookLeft,
)
from observer.core.vocab import KINDS

# What `observer_unknown_values_total` counts, by its `field` label.
Field = Literal["participant_kind", "kind_detail", "disconnect_reason", "webhook_event"]
FIELDS: Final[tuple[Field, ...]] = get_args(Field)

KIND_PREFIX: Final = "kind_"
DETAIL_PREFIX: Final = "DETAIL_"
REASON_PREFIX: Final = "REASON_"

_NUMBERED_REASON = re.compile(rf"{REASON_PREFIX}\d+")
_NUMBERED_DETAIL = re.compile(rf"{DETAIL_PREFIX}\d+")


def kind_value(enum_name: str | None, number: int) -> str:
    """The stored kind for a participant kind given as its protocol enum name (`AGENT`,
    `PARTICIPANT_KIND_SIP`; None or "" when the installed package has no name for the
    number) and its number."""
    if enum_name:
        return enum_name.lower().removeprefix("participant_kind_")
    return f"{KIND_PREFIX}{number}"


# Attributes only agents carry: livekit-agents sets `lk.agent.state`, the token of a
# dispatched agent carries `lk.agent.name` (livekit-server 1.9 and later add `lk.agent_name`).
AGENT_ATTRIBUTES: Final = ("lk.agent.state", "lk.agent.name", "lk.agent_name")


def participant_kind(
    enum_name: str | None, number: int, attributes: Mapping[str, str], *, agent_attributes: bool
) -> str:
    """The stored kind of a participant: its kind claim's (`kind_value`), except that, with
    `agent_attributes`, a standard participant carrying an agent's attributes is an agent.
    livekit-server before 1.9 drops the kind claim from the token it refreshes, so an agent
    that reconnects in full (or rejoins with that token) comes back as a standard participant
    with its attributes. On later releases the claim alone decides: a participant allowed
    to set its own attributes could otherwise make itself billed as an agent."""
    kind = kind_value(enum_name, number)
    if agent_attributes and kind == "standard" and any(a in attributes for a in AGENT_ATTRIBUTES):
        return "agent"
    return kind


def detail_value(enum_name: str | None, number: int) -> str:
    """The stored kind detail: its protocol name, else `DETAIL_<number>`."""
    if enum_name:
        return enum_name.upper().removeprefix("PARTICIPANT_KIND_DETAIL_")
    return f"{DETAIL_PREFIX}{number}"


def reason_value(enum_name: str | None, number: int) -> str:
    """The stored disconnect reason: its protocol name, else `REASON_<number>`."""
    return enum_name if enum_name else f"{REASON_PREFIX}{number}"


# The protocol's numbers for the kinds the observer names (livekit.ParticipantInfo.Kind;
# the rtc SDK numbers its own enum differently, which is why the daemon passes names).
KIND_NUMBERS: Final[dict[int, str]] = {
    0: "standard",
    1: "ingress",
    2: "egress",
    3: "sip",
    4: "agent",
    7: "connector",
    8: "bridge",
}


def kind_setting(text: str) -> str | None:
    """A kind as `OBSERVER_TRACK_KINDS` or a report's filter gives it: a name the observer
    knows, a protocol number (`4` is `agent`; `9`, which it cannot name, is `kind_9`), or
    the stored spelling of an unnamed kind (`kind_9`). None when it is none of these."""
    word = text.strip().lower()
    if word in KINDS:
        return word
    number = word.removeprefix(KIND_PREFIX)
    if not (number.isascii() and number.isdigit()):
        return None
    return KIND_NUMBERS.get(int(number), f"{KIND_PREFIX}{int(number)}")


def unknown_in(ev: Event) -> tuple[tuple[Field, str], ...]:
    """The values in an event that the observer has no word for, with their fields: what
    `observer_unknown_values_total` counts. A participant seen again (a snapshot after a
    reconnect) counts again."""
    found: list[tuple[Field, str]] = []
    for seen in _participants(ev):
        if seen.kind not in KINDS:
            found.append(("participant_kind", seen.kind))
        found.extend(("kind_detail", d) for d in seen.kind_details if _NUMBERED_DETAIL.fullmatch(d))
    reason = ev.reason if isinstance(ev, ParticipantLeft | WebhookLeft) else ""
    if _NUMBERED_REASON.fullmatch(reason):
        found.append(("disconnect_reason", reason))
    return tuple(found)


def _participants(ev: Event) -> tuple[SeenParticipant, ...]:
    if isinstance(ev, ParticipantJoined | WebhookJoined | WebhookLeft):
        return (ev.participant,)
    if isinstance(ev, RoomJoined | Reconnected):
        return ev.present
    return ()
