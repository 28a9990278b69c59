"""Which rooms to join and which rooms are gone, decided from a room listing. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class ListedRoom:
    sid: str
    name: str


@dataclass(frozen=True)
class Plan:
    join: tuple[ListedRoom, ...]
    gone: tuple[str, ...]  # room sids with open sessions that no longer exist


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def plan(
    listed: Iterable[ListedRoom],
    *,
    patterns: Iterable[str],
    busy: Set[str],
    ended: Set[str],
    with_open_sessions: Mapping[str, str],
    mine: Set[str] | None = None,
) -> Plan:
    """Decide from one listing what to do.

    `busy`: sids being joined or watched. `ended`: sids seen closing or deleted, never
    joined again (joining a room that just ended would create it anew and could summon an
    agent into it). A room with open sessions is joined even if it no longer matches the
    patterns, so that its sessions can be finished. `mine`: the room names the placement
    gives this observer when several share the fleet (None: all of them).
    """
    patterns = tuple(patterns)
    listed = list(listed)
    live = {r.sid for r in listed}
    join = tuple(
        r
        for r in listed
        if r.sid not in busy
        and r.sid not in ended
        and (matches(r.name, patterns) or r.sid in with_open_sessions)
        and (mine is None or r.name in mine)
    )
    gone = tuple(sid for sid in with_open_sessions if sid not in live and sid not in busy)
    return Plan(join=join, gone=gone)
