"""What a usage sum asks for (`UsageSpec`) and gives (`UsageTotal`), the names of its
groupings, and which sessions a query reads (`Subset`). No SQL here."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from observer.core.timeline import AGENT_STATES, OTHER_STATE

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS = 60_000
# `UsageSpec.group_by` names -> the sessions column each groups by
USAGE_GROUP_COLUMNS = {
    "agent": "agent_name",
    "identity": "participant_identity",
    "room": "room_name",
}


# ... and the groupings by a key: the agent participant's attribute KEY, the room's metadata
# (whole) or a key of it read as a JSON object. A missing key groups as "".
ATTRIBUTE_PREFIX = "attribute:"
ROOM_METADATA = "room-metadata"
ROOM_METADATA_PREFIX = "room-metadata:"


def is_group_name(g: str) -> bool:
    """Whether `g` names a grouping `UsageSpec.group_by` takes."""
    return (
        g in USAGE_GROUP_COLUMNS
        or g == ROOM_METADATA
        or (
            g.startswith((ATTRIBUTE_PREFIX, ROOM_METADATA_PREFIX))
            and usable_key(g.split(":", 1)[1])
        )
    )


def usable_key(key: str) -> bool:
    """Whether a JSON key can be looked up on both databases: not empty, and no control
    characters (SQLite's JSON paths stop at NUL; PostgreSQL's text holds none) or halves of
    surrogate pairs."""
    return key != "" and not has_control(key)


def has_control(text: str) -> bool:
    """Whether `text` holds control characters (NUL among them) or surrogate halves."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def epoch_ms(at: datetime) -> int:
    """Whole milliseconds since the Unix epoch, truncated as the SQL below truncates."""
    return (at - EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class UsageSpec:
    """What `Store.usage` sums.

    Each session is clipped to [edges[0], edges[-1]) and cut at the inner edges into pieces,
    one per bucket (bucket i is [edges[i], edges[i + 1])). Each piece is rounded up to a
    multiple of `round_to_ms`; for `billable_minutes` each piece is rounded up to a minute.

    `price_cuts` (ascending) tell the sums apart by the prices a session had at its join
    and model usage had when reported: `UsageTotal.priced` and `TokenTotal.priced` count
    the cuts at or before those times. They never change what is summed.
    """

    edges: tuple[datetime, ...]
    group_by: tuple[str, ...] = ()
    open_until: datetime | None = None  # open sessions count up to here; None leaves them out
    round_to_ms: int = 1
    kind: str | None = "agent"
    states: bool = False  # also sum the time in each agent state and alone (`STATE_SUMS`)
    price_cuts: tuple[datetime, ...] = ()
    # only the sessions that never reported model usage (no `agent_usage` row of theirs)
    without_usage: bool = False


# What `UsageSpec.states` sums, in `UsageTotal.states` order: the sessions columns
# state_<name>_ms, then alone_ms. A session counts with its columns when it lies whole in a
# bucket, else with its `session_spans` cut at the edges.
STATE_SUMS = (*AGENT_STATES, OTHER_STATE, "alone")


def state_column(name: str) -> str:
    return "alone_ms" if name == "alone" else f"state_{name}_ms"


class UsageTotal(NamedTuple):  # a tuple: a month by agent and day is 30,000 of them
    keys: tuple[str | None, ...]  # one value per `UsageSpec.group_by` entry
    bucket: int
    sessions: int
    duration_ms: int
    billable_minutes: int
    states: tuple[int, ...] = ()  # with `UsageSpec.states`: ms per `STATE_SUMS` entry
    priced: int = 0  # `UsageSpec.price_cuts` at or before the sessions' join


def key_width(spec: UsageSpec) -> int:
    """How many keys lead each summed row: the groups', then `priced_key`'s."""
    return len(spec.group_by) + len(spec.price_cuts[:1])


def at_midnights(spec: UsageSpec) -> bool:
    """Whether the buckets are cut only at UTC midnights (days, months), so that a closed
    session lies in one bucket when `crosses_day` is false."""
    inner = spec.edges[1:-1]
    return bool(inner) and all(e.astimezone(UTC).time() == datetime.min.time() for e in inner)


def whole_in_join_bucket(spec: UsageSpec) -> bool:
    """Whether a closed session inside the window that holds no midnight lies whole in the
    bucket of its join: with one bucket, or buckets cut at UTC midnights (days, months)."""
    return len(spec.edges) == 2 or at_midnights(spec)


# Which sessions a usage query reads: "all" of them; "whole", only the closed ones that
# lie whole in the window and hold no midnight (each lies whole in the bucket of its join
# when `whole_in_join_bucket`), summed from their columns; "cut", only the others, clipped to the
# window and cut at its edges. "whole" and "cut" add up to "all" for a spec whose
# buckets are cut at midnights.
Subset = Literal["all", "whole", "cut"]
