"""Who an observer is to others: a participant identity in rooms that no other process
shares, and the one live run that holds an `OBSERVER_ID` in a database.

LiveKit keeps one participant per identity in a room and removes the older one
(`DUPLICATE_IDENTITY`). Two observers with one `OBSERVER_ID` (it defaults to the hostname)
would push each other out of every room, so each run joins as
`lk-observer-<OBSERVER_ID>-<run id>`, with a run id new at each start.

With a shared database, one `OBSERVER_ID` is one observer: its row in `observers` names the
run holding it. A run that finds the id held by another run whose heartbeat is current
watches the row: if the holder beats again, it is alive and this run refuses to start; if
its heartbeat goes stale (a run that died, a SIGKILL just before this restart) or its row
goes (a clean stop), this run takes the id over. A holder's process cannot be told dead
from its host and pid alone (containers on one host share a hostname and reuse pids), so
only its heartbeat speaks for it.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

from observer.config import Settings
from observer.core.times import utcnow
from observer.db import fleet as fleet_db
from observer.db.store import Store

# Webhooks about participants whose identity starts with this are the observers' own.
IDENTITY_PREFIX = "lk-observer-"

Verdict = Literal["take", "wait", "held"]


def new_run_id() -> str:
    """A run id: random, so that no two processes share one."""
    return secrets.token_hex(4)


def participant_identity(observer_id: str, run_id: str) -> str:
    """The identity a run of this observer joins rooms with."""
    return f"{IDENTITY_PREFIX}{observer_id}-{run_id}"


class IdHeld(Exception):
    """Another live run holds this observer id."""

    def __init__(self, observer_id: str, holder: fleet_db.Member) -> None:
        super().__init__(
            f"OBSERVER_ID {observer_id!r} is held by another live observer"
            f" (host {holder.host}, pid {holder.pid}); give each observer its own OBSERVER_ID"
        )
        self.holder = holder


def judge(
    row: fleet_db.Member | None,
    *,
    run_id: str,
    first: fleet_db.Member | None,
    now: datetime,
    dead_after_s: float,
) -> Verdict:
    """What to do about the row of this observer id, `first` being the row as this run
    first found it held (None before that): take the id, watch the row a little longer, or
    give up because another run is alive."""
    if row is None or row.run_id == run_id:
        return "take"
    if now - row.heartbeat_at > timedelta(seconds=dead_after_s):
        return "take"  # its holder stopped beating: dead
    if first is None:
        return "wait"  # a current heartbeat: alive, or killed a moment ago
    if row.run_id != first.run_id:
        return "held"  # another run took it meanwhile, and it is current
    if row.heartbeat_at > first.heartbeat_at and not row.stopping:
        return "held"  # it beat again
    return "wait"  # not beating yet, or stopping cleanly (its row goes when it is done)


def hold(
    store: Store,
    settings: Settings,
    run_id: str,
    *,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Make run `run_id` the holder of the observer id, waiting while an earlier holder may
    be dead (at most about OBSERVER_FAILOVER_S / 2, as long as the others take to count it
    dead); raises `IdHeld` if another run is alive. On SQLite nothing else can use the
    database (`observer run` holds a lock on it), so a row there is a dead run's."""
    observer_id = settings.observer_id
    exclusive = not settings.database_url.startswith("postgresql")
    dead_after_s = settings.failover_s / 2  # as the fleet counts it (daemon/fleet.py)
    poll_s = settings.failover_s / 20
    host, pid = socket.gethostname(), os.getpid()
    first: fleet_db.Member | None = None
    while True:
        row = store.id_holder(observer_id)
        now = clock()
        verdict = (
            "take"
            if exclusive
            else judge(row, run_id=run_id, first=first, now=now, dead_after_s=dead_after_s)
        )
        if verdict == "held":
            assert row is not None
            raise IdHeld(observer_id, row)
        if verdict == "take":
            replacing = None if row is None else row.run_id
            if store.take_id(
                observer_id=observer_id,
                run_id=run_id,
                host=host,
                pid=pid,
                replacing=replacing,
                now=now,
            ):
                return
            first = None  # another run changed the row meanwhile: look at it afresh
            continue
        if first is None:
            first = row
        sleep(poll_s)
