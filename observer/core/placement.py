"""Which observers watch which room: rendezvous (highest random weight) hashing with
bounded loads.

Each room ranks the live observers by a hash of (observer, room) and is watched by the
first `replicas` of them that still have room under a cap of (1 + SLACK) times the mean
load. Every observer computes the same answer from the same list of observers and rooms,
with no coordination beyond that list. Adding an observer moves about 1/N of the rooms
(those that now rank it first, plus the few a lower cap pushes on); losing one moves only
the rooms it watched. The cap keeps every observer within SLACK of the mean, which plain
rendezvous hashing does not (a share of 300 rooms over 3 is often 15 % off).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping

SLACK = 0.05


def weight(observer_id: str, room_name: str) -> int:
    digest = hashlib.blake2b(f"{observer_id}\0{room_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _order(room_name: str) -> int:
    return int.from_bytes(hashlib.blake2b(room_name.encode(), digest_size=8).digest(), "big")


def replicas_for(alive: int, wanted: int) -> int:
    """How many observers watch each room: as many as wanted, but never more than are alive."""
    return max(1, min(wanted, alive))


def assign(
    rooms: Iterable[str], observers: Collection[str], replicas: int
) -> Mapping[str, tuple[str, ...]]:
    """room name -> the observers that watch it, first the one that raises its alerts."""
    members = sorted(set(observers))
    if not members:
        return {}
    names = sorted(set(rooms), key=lambda r: (_order(r), r))
    r = replicas_for(len(members), replicas)
    cap = max(1, math.ceil((1 + SLACK) * len(names) * r / len(members)))
    load = dict.fromkeys(members, 0)
    out: dict[str, tuple[str, ...]] = {}
    for room in names:
        ranked = sorted(members, key=lambda o: (weight(o, room), o), reverse=True)
        chosen = [o for o in ranked if load[o] < cap][:r]
        if len(chosen) < r:  # only when the cap rounds below the need; never leave a gap
            chosen += [o for o in ranked if o not in chosen][: r - len(chosen)]
        for o in chosen:
            load[o] += 1
        out[room] = tuple(chosen)
    return out
