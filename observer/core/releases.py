"""LiveKit server releases: what each can do that the observer relies on, and which it
cannot watch safely. Pure: the release comes in as text (the server's `ServerInfo.version`).

The releases below are read from livekit/livekit and livekit/protocol at their tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Feature = Literal[
    "join_ms", "disconnect_reason", "connection_aborted", "refuses_unknown_preset", "kind_kept"
]


@dataclass(frozen=True, order=True)
class Release:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class Since:
    feature: Feature
    release: Release
    what: str


FEATURES: Final[tuple[Since, ...]] = (
    Since(
        "refuses_unknown_preset",
        Release(1, 8, 2),
        "refuses a join whose token names an unknown room preset, so the observer never"
        " creates a room",
    ),
    Since("disconnect_reason", Release(1, 8, 0), "disconnect reasons on participants"),
    Since("join_ms", Release(1, 8, 4), "join times in milliseconds (joined_at_ms)"),
    Since("connection_aborted", Release(1, 9, 1), "the participant_connection_aborted webhook"),
    # Before it the token refreshed at a rejoin loses the kind claim: an agent that reconnects
    # in full comes back standard, recorded only if it carries lk.agent.* attributes
    # (1.8.4 loses it, 1.9.11 keeps it; the releases between were not run).
    Since(
        "kind_kept",
        Release(1, 9, 11),
        "an agent's kind kept when it reconnects in full (else only lk.agent.* attributes tell)",
    ),
)
# Before it the observer's joins could create rooms (and summon agents into them).
OLDEST_SAFE: Final = next(f.release for f in FEATURES if f.feature == "refuses_unknown_preset")

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse(text: str) -> Release | None:
    """The release in a version string (`1.13.5`, `v1.9.11`, `1.10.0-rc1`); None if the
    text does not start with one."""
    m = _VERSION.match(text.strip())
    return Release(int(m[1]), int(m[2]), int(m[3])) if m else None


def supports(release: Release | None, feature: Feature) -> bool:
    """Whether `release` has `feature`; an unknown release is taken to be current."""
    if release is None:
        return True
    return release >= next(f.release for f in FEATURES if f.feature == feature)


def safe(release: Release | None) -> bool:
    """Whether the observer can watch `release` without ever creating a room."""
    return supports(release, "refuses_unknown_preset")


def refusal(release: Release) -> str:
    """The one line the observer stops with when `release` is not safe to watch."""
    return (
        f"livekit-server {release} would let the observer's joins create rooms;"
        f" the oldest release it watches is {OLDEST_SAFE}"
    )


def summary(version: str) -> list[str]:
    """What the server at `version` supports, one line per feature, for `observer check`
    and the daemon's start."""
    release = parse(version)
    if release is None:
        return ["release not recognised: taken to support all the observer uses"]
    return [
        f"{f.what}: {'yes' if supports(release, f.feature) else f'no (since {f.release})'}"
        for f in FEATURES
    ]
