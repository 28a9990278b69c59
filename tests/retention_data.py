"""Sessions with the details the daemon writes beside them (spans, witnesses, webhook
events), through the store's own write path, for the retention and erasure tests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from observer.core.changes import Close, Open, Witnessed
from observer.core.events import TrackedSession
from observer.core.timeline import Span, Timeline
from observer.core.vocab import END_RTC
from observer.db.store import Store
from observer.db.writes import WebhookRecord


def tracked(
    sid: str, joined: datetime, *, identity: str | None = None, room_sid: str = "RM1", **kw: Any
) -> TrackedSession:
    base: dict[str, Any] = dict(
        room_name="room",
        room_sid=room_sid,
        participant_sid=sid,
        identity=identity or f"id-{sid}",
        name="Agent",
        kind="agent",
        agent_name="bob",
        attributes={},
        joined_at=joined,
        last_seen_at=joined,
    )
    base.update(kw)
    return TrackedSession(**base)


def webhook(s: TrackedSession, event: str, at: datetime, n: int) -> WebhookRecord:
    body = {
        "event": event,
        "id": f"EV_{s.participant_sid}_{n}",
        "createdAt": str(int(at.timestamp())),
        "room": {"sid": s.room_sid, "name": s.room_name},
        "participant": {"sid": s.participant_sid, "identity": s.identity, "name": s.name},
    }
    return WebhookRecord(
        id=f"EV_{s.participant_sid}_{n}",
        event=event,
        room_name=s.room_name,
        room_sid=s.room_sid,
        participant_sid=s.participant_sid,
        participant_identity=s.identity,
        created_at=at,
        received_at=at,
        body=json.dumps(body),
    )


def record(
    store: Store,
    s: TrackedSession,
    left: datetime | None,
    *,
    spans: int = 4,
    observers: tuple[str, ...] = ("obs",),
) -> None:
    """A session as the daemon writes it: opened and witnessed, its join webhook, and when
    it has left, its close with `spans` state spans and the leave webhook."""
    joined = s.joined_at
    ops: list[Any] = [
        Open(s),
        Witnessed((s.key,), joined),
        webhook(s, "participant_joined", joined, 0),
    ]
    store.apply(ops, observers[0])
    for other in observers[1:]:
        store.apply([Witnessed((s.key,), joined)], other)
    if left is None:
        return
    step = (left - joined) / max(spans, 1)
    states = ("listening", "thinking", "speaking")
    timeline = Timeline(
        joined,
        tuple(
            Span("state", states[i % 3], joined + step * i, joined + step * (i + 1))
            for i in range(spans)
        ),
    )
    close = Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s, timeline)
    store.apply([close, webhook(s, "participant_left", left, 1)], observers[0])


def finalize(store: Store, start: datetime, end: datetime, *, final: bool = True) -> None:
    """A period's `total` rollup, finalized or provisional, as reconcile writes it."""
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO period_rollups (period_start, period_end, group_kind, group_key,"
                " sessions, duration_ms, billable_minutes, finalized_at, computed_at)"
                " VALUES (:s, :e, 'total', '', 0, 0, 0, :f, :e)"
            ),
            {
                "s": _stored(store, start),
                "e": _stored(store, end),
                "f": _stored(store, end + timedelta(hours=2)) if final else None,
            },
        )


def _stored(store: Store, at: datetime) -> Any:
    return at.replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else at


def count(store: Store, table: str, where: str = "1=1", **params: Any) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one()
        )
