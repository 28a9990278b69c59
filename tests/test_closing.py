"""Closing a session row: the one function both the daemon's writes and `observer reconcile`
close through, as a table of ends and the values written; and the row each path leaves,
with the values the database derives, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.timeline import Span, Timeline
from observer.core.vocab import END_RECONCILED, END_ROOM_CLOSED, END_RTC, END_WEBHOOK
from observer.db.closing import Ending, closed_columns, ending_of, reconciled
from observer.db.schema import SessionRow
from observer.db.store import Store

pytestmark = pytest.mark.unit

JOINED = datetime(2026, 3, 1, 23, 50, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return JOINED + timedelta(minutes=minutes)


SEEN = Timeline(
    observed_from=at(1),
    spans=(
        Span("state", "listening", at(1), at(3)),
        Span("state", "speaking", at(3), at(4)),
        Span("state", "dancing", at(4), at(5)),  # not an agent state: other
        Span("alone", "", at(2), at(5)),
    ),
)
QUIET = {f"state_{n}_ms": 0 for n in ("initializing", "idle", "thinking")}

# (what happened, the ending, the values written besides updated_at)
CASES: list[tuple[str, Ending, dict[str, Any]]] = [
    (
        "a leave seen live",
        Ending(at(5), END_RTC, "CLIENT_INITIATED", None, at(5)),
        dict(
            left_at=at(5),
            disconnect_reason="CLIENT_INITIATED",
            end_source=END_RTC,
            end_uncertainty_ms=None,
            last_seen_at=at(5),
        ),
    ),
    (
        "a leave heard before the join (clocks that disagree): never before it",
        Ending(at(-2), END_WEBHOOK, None, None, at(-3)),
        dict(
            left_at=JOINED,
            disconnect_reason=None,
            end_source=END_WEBHOOK,
            end_uncertainty_ms=None,
            last_seen_at=JOINED,
        ),
    ),
    (
        "a room closed with the participant in it, with what the observer saw",
        Ending(at(5), END_ROOM_CLOSED, "ROOM_DELETED", None, at(5), SEEN),
        dict(
            left_at=at(5),
            disconnect_reason="ROOM_DELETED",
            end_source=END_ROOM_CLOSED,
            end_uncertainty_ms=None,
            last_seen_at=at(5),
            state_listening_ms=120_000,
            state_speaking_ms=60_000,
            state_other_ms=60_000,
            **QUIET,
            observed_from=at(1),
            alone_ms=180_000,
        ),
    ),
    (
        "settled by reconcile: at the last time seen, the gap as the uncertainty",
        reconciled(at(7), at(10)),
        dict(
            left_at=at(7),
            disconnect_reason=None,
            end_source=END_RECONCILED,
            end_uncertainty_ms=180_000,
            # (its last_seen_at stays: the settling is conditional on it)
        ),
    ),
    (
        "settled by reconcile, last seen before the join",
        reconciled(at(-1), at(10)),
        dict(
            left_at=JOINED,
            disconnect_reason=None,
            end_source=END_RECONCILED,
            end_uncertainty_ms=660_000,
        ),
    ),
]


@pytest.mark.parametrize(("ending", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_values_a_close_writes(ending: Ending, want: dict[str, Any]) -> None:
    assert closed_columns(JOINED, ending, NOW) == {**want, "updated_at": NOW}


def test_the_daemon_s_close_is_the_tracker_s_end() -> None:
    s = session("PA_a")
    op = Close(s.key, at(5), "CLIENT_INITIATED", END_RTC, 250, at(4), s, SEEN)
    assert ending_of(op) == Ending(at(5), END_RTC, "CLIENT_INITIATED", 250, at(4), SEEN)


def session(sid: str) -> TrackedSession:
    """An agent that joined at 23:50 and was last seen at 00:05."""
    seen = JOINED + timedelta(minutes=15)
    return TrackedSession("room", "RM_room", sid, f"id-{sid}", "", "agent", "bot", {}, JOINED, seen)


def test_both_paths_leave_the_row_the_database_derives_from(db_url: str) -> None:
    """A session over midnight closed by the daemon and one settled by reconcile, at the
    same times: the same end, duration and midnight, derived by the database."""
    store = Store(db_url)
    try:
        live, stale = session("PA_live"), session("PA_stale")
        left = stale.last_seen_at
        store.apply([Open(live), Open(stale)], "obs")
        store.apply([Close(live.key, left, None, END_RTC, 180_000, left, live)], "obs")
        with store.rollup_transaction() as tx:
            assert tx.settle(store.stale_open_sessions(NOW), left + timedelta(minutes=3)) == 1
            # once only: the row is closed now
            assert tx.settle(store.stale_open_sessions(NOW), NOW) == 0
        cols = (
            SessionRow.participant_sid,
            SessionRow.left_at,
            SessionRow.duration_ms,
            SessionRow.crosses_day,
            SessionRow.end_uncertainty_ms,
            SessionRow.end_source,
        )
        with store.engine.connect() as conn:
            rows = {r[0]: r[1:] for r in conn.execute(select(*cols))}
        assert rows["PA_live"] == (left, 900_000, True, 180_000, END_RTC)
        assert rows["PA_stale"] == (left, 900_000, True, 180_000, END_RECONCILED)
    finally:
        store.close()
