"""The words stored in rows and shown in reports, each defined once."""

from __future__ import annotations

from typing import Final, Literal, get_args

# A participant's kind, as the token's kind claim gives it (stored in `participant_kind`).
Kind = Literal["standard", "ingress", "egress", "sip", "agent", "connector", "bridge"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)

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
