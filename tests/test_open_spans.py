"""Open sessions' spans written as they end (`open_session_spans`), and moved to
`session_spans` by the close, by `observer reconcile`'s settling and after a restart, on
SQLite and PostgreSQL. What the closed row and its spans say is what they said when the
daemon kept the spans until the close."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from observer.core.changes import Close, Open, RefreshLastSeen, RowWrite, SpanEnded
from observer.core.events import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomJoined,
    SeenParticipant,
    SessionKey,
    TrackedSession,
)
from observer.core.timeline import Span, Timeline, clipped, watched_from
from observer.core.tracker import SessionTracker
from observer.core.vocab import END_RECONCILED, END_RTC
from observer.db.closing import Ending, closed_columns, reconciled
from observer.db.reads import StaleSession
from observer.db.schema import OpenSessionSpanRow, SessionRow, SessionSpanRow
from observer.db.store import Store

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 23, 55, tzinfo=UTC)
STATES = ("listening", "thinking", "speaking", "idle")
STATE_COLUMNS = [f"state_{n}_ms" for n in (*("initializing", "idle"), *STATES[:3], "other")]
KEY = SessionKey("RM1", "PA1")


def t(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def agent(joined: float, state: str = "listening") -> SeenParticipant:
    return SeenParticipant("PA1", "agent-1", "", "agent", {"lk.agent.state": state}, t(joined))


def user() -> SeenParticipant:
    return SeenParticipant("PU1", "user-1", "", "standard", {}, t(0))


def talk(start: float, stop: float, every: float = 3.0) -> list[Event]:
    """The agent's state changing every `every` seconds from `start` to `stop`, and the
    caller leaving the room for a while in between (time alone)."""
    out: list[Event] = []
    n, at = 0, start
    while at < stop:
        state = {"lk.agent.state": STATES[n % len(STATES)]}
        out.append(AttributesChanged("RM1", "PA1", state, t(at)))
        if n == 7:
            out.append(ParticipantLeft("RM1", "PU1", "CLIENT_INITIATED", t(at + 0.5)))
        if n == 12:
            out.append(ParticipantJoined("room", "RM1", user(), t(at + 0.5)))
        n, at = n + 1, at + every
    return out


def run(tracker: SessionTracker, events: Iterable[Event]) -> list[RowWrite]:
    writes: list[RowWrite] = []
    for ev in events:
        writes += tracker.handle(ev).writes
    return writes


def tracker() -> SessionTracker:
    return SessionTracker(frozenset({"agent"}))


def rows(store: Store, model: Any) -> list[Any]:
    with Session(store.engine) as db:
        return list(db.scalars(select(model).order_by(model.id)).all())


def spans_of(store: Store) -> list[tuple[str, str, datetime, datetime]]:
    return [(r.kind, r.value, r.started_at, r.ended_at) for r in rows(store, SessionSpanRow)]


def whole(written: Sequence[RowWrite], close: Close) -> Timeline:
    """The session's timeline as the daemon kept it before spans were written as they end:
    every span the tracker handed out, then the close's, cut to the session."""
    assert close.timeline is not None
    end = max(close.left_at, close.session.joined_at)
    froms = [w.observed_from for w in written if isinstance(w, SpanEnded)]
    start = watched_from(min([close.timeline.observed_from, *froms]), close.session.joined_at, end)
    ended = [w.span for w in written if isinstance(w, SpanEnded) and w.key == close.key]
    return Timeline(start, (*clipped(ended, start, end), *close.timeline.spans))


def as_rows(tl: Timeline) -> list[tuple[str, str, datetime, datetime]]:
    return [(s.kind, s.value, s.start, s.end) for s in tl.spans]


def the_row(store: Store) -> SessionRow:
    (row,) = rows(store, SessionRow)
    return row


def seen_values(row: SessionRow) -> dict[str, Any]:
    return {c: getattr(row, c) for c in [*STATE_COLUMNS, "observed_from", "alone_ms"]}


def expected_values(tl: Timeline, joined: datetime, left: datetime) -> dict[str, Any]:
    values = closed_columns(joined, Ending(left, END_RTC, timeline=tl), T0)
    return {c: values[c] for c in [*STATE_COLUMNS, "observed_from", "alone_ms"]}


def test_spans_are_written_as_they_end_and_moved_by_the_close(db_url: str) -> None:
    store = Store(db_url)
    try:
        tr = tracker()
        before = run(tr, [RoomJoined("room", "RM1", (agent(0), user()), t(1)), *talk(2, 600)])
        store.apply(before, "obs-1")
        written = [w for w in before if isinstance(w, SpanEnded)]
        assert len(written) > 190  # a span per state change, and the time alone
        assert len(rows(store, OpenSessionSpanRow)) == len(written)
        assert spans_of(store) == []

        after = run(tr, [ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(601.25))])
        store.apply(after, "obs-1")
        (close,) = [w for w in after if isinstance(w, Close)]
        tl = whole(before + after, close)
        assert rows(store, OpenSessionSpanRow) == []
        assert spans_of(store) == as_rows(tl)
        row = the_row(store)
        assert seen_values(row) == expected_values(tl, row.joined_at, t(601.25))
        assert row.state_listening_ms and row.alone_ms and row.state_unknown_ms == 1000
    finally:
        store.close()


def test_a_retried_batch_writes_each_span_once(db_url: str) -> None:
    store = Store(db_url)
    try:
        tr = tracker()
        batch = run(tr, [RoomJoined("room", "RM1", (agent(0), user()), t(1)), *talk(2, 60)])
        store.apply(batch, "obs-1")
        store.apply(batch, "obs-1")  # a commit whose answer was lost, retried whole
        assert len(rows(store, OpenSessionSpanRow)) == sum(isinstance(w, SpanEnded) for w in batch)
    finally:
        store.close()


def open_session(store: Store, observer_id: str = "obs-1") -> TrackedSession:
    s = TrackedSession("room", "RM1", "PA1", "agent-1", "", "agent", "bob", {}, t(0), t(0))
    store.apply([Open(s)], observer_id)
    return s


def ended(kind: str, value: str, start: float, end: float, since: float = 0) -> SpanEnded:
    return SpanEnded(KEY, Span(kind, value, t(start), t(end)), t(since))  # type: ignore[arg-type]


def test_a_close_cuts_the_written_spans_to_the_session(db_url: str) -> None:
    """A leave nobody saw ends the session at the last evidence, before some written spans
    ended (the observer's connection went on counting): they are cut there, or left out."""
    store = Store(db_url)
    try:
        s = open_session(store)
        store.apply(
            [
                ended("state", "listening", 1, 10, since=1),
                ended("alone", "", 4, 12, since=1),
                ended("state", "speaking", 10, 20, since=1),
                ended("state", "idle", 20, 30, since=1),
            ],
            "obs-1",
        )
        tail = Timeline(t(1), ())
        store.apply([Close(KEY, t(15), None, END_RECONCILED, 5000, t(15), s, tail)], "obs-1")
        assert spans_of(store) == [
            ("state", "listening", t(1), t(10)),
            ("alone", "", t(4), t(12)),
            ("state", "speaking", t(10), t(15)),
        ]
        row = the_row(store)
        assert (row.state_listening_ms, row.state_speaking_ms, row.state_idle_ms) == (
            9000,
            5000,
            0,
        )
        assert (row.alone_ms, row.observed_from, row.state_unknown_ms) == (8000, t(1), 1000)
        assert rows(store, OpenSessionSpanRow) == []
    finally:
        store.close()


def test_only_the_spans_of_the_observer_whose_end_counted_are_kept(db_url: str) -> None:
    store = Store(db_url)
    try:
        s = open_session(store)
        open_session(store, "obs-2")  # a second watcher of the same room writes the same row
        store.apply([ended("state", "listening", 1, 10, since=1)], "obs-1")
        store.apply([ended("state", "speaking", 2, 11, since=2)], "obs-2")
        closing = Close(KEY, t(12), "CLIENT_INITIATED", END_RTC, None, t(12), s, Timeline(t(1), ()))
        store.apply([closing], "obs-1")
        assert spans_of(store) == [("state", "listening", t(1), t(10))]
        assert rows(store, OpenSessionSpanRow) == []
        # the second watcher's span that ended as the session closed, then its own close
        store.apply([ended("state", "idle", 11, 12, since=2)], "obs-2")
        store.apply([closing], "obs-2")  # the row is closed: nothing it saw is kept
        assert spans_of(store) == [("state", "listening", t(1), t(10))]
        assert rows(store, OpenSessionSpanRow) == []
        assert the_row(store).state_listening_ms == 9000
    finally:
        store.close()


def test_reconcile_settling_moves_the_written_spans(db_url: str) -> None:
    """A daemon killed for good: `observer reconcile` closes its session at its last
    evidence, with the spans it wrote before it died, cut there."""
    store = Store(db_url)
    try:
        open_session(store)
        store.apply(
            [
                ended("state", "listening", 1, 10, since=1),
                ended("state", "speaking", 10, 20, since=1),
                SpanEnded(SessionKey("RM1", "PA1"), Span("state", "idle", t(20), t(25)), t(1)),
            ],
            "obs-1",
        )
        store.apply([ended("state", "thinking", 3, 9, since=3)], "obs-2")
        (stale,) = store.stale_open_sessions(t(3600))
        assert isinstance(stale, StaleSession)
        with store.rollup_transaction() as tx:
            assert tx.settle([stale], t(3600)) == 1
        row = the_row(store)
        assert (row.left_at, row.end_source) == (t(0), END_RECONCILED)  # last seen at the join
        # everything lies after its end: the observer's time is kept, nothing of its spans
        assert spans_of(store) == []
        assert (row.observed_from, row.state_listening_ms, row.alone_ms) == (t(0), 0, 0)
        assert rows(store, OpenSessionSpanRow) == []
    finally:
        store.close()


def test_reconcile_settling_cuts_at_the_last_evidence(db_url: str) -> None:
    store = Store(db_url)
    try:
        s = open_session(store)
        store.apply(
            [ended("state", "listening", 1, 10, since=1), ended("state", "speaking", 10, 20, 1)],
            "obs-1",
        )
        store.apply([ended("state", "thinking", 3, 9, since=3)], "obs-2")  # not kept
        store.apply([RefreshLastSeen((s.key,), t(14))], "obs-1")
        (stale,) = store.stale_open_sessions(t(3600))
        with store.rollup_transaction() as tx:
            assert tx.settle([stale], t(3600)) == 1
        row = the_row(store)
        want = closed_columns(row.joined_at, reconciled(t(14), t(3600)), t(3600))
        assert (row.left_at, row.end_uncertainty_ms) == (want["left_at"], 3_586_000)
        assert spans_of(store) == [
            ("state", "listening", t(1), t(10)),
            ("state", "speaking", t(10), t(14)),
        ]
        assert (row.observed_from, row.state_listening_ms, row.state_speaking_ms) == (
            t(1),
            9000,
            4000,
        )
        assert row.state_thinking_ms == 0 and row.state_unknown_ms == 1000
        assert rows(store, OpenSessionSpanRow) == []
    finally:
        store.close()


def test_spans_written_before_a_restart_are_kept_once(db_url: str) -> None:
    """The daemon is killed mid-session and started again: the session continues, and at
    its close the spans written before the kill are there, once, with those after."""
    store = Store(db_url)
    first = tracker()
    before = run(first, [RoomJoined("room", "RM1", (agent(0), user()), t(1)), *talk(2, 300)])
    store.apply(before, "obs-1")
    last_batch = before[-5:]
    store.close()  # SIGKILL: nothing more of the first run is written

    store = Store(db_url)
    try:
        store.apply(last_batch, "obs-1")  # the writer's last batch retried: no doubles
        again = tracker()
        again.seed(store.open_sessions("obs-1"))
        after = run(
            again,
            [
                RoomJoined("room", "RM1", (agent(0, "thinking"), user()), t(340)),
                *talk(341, 500),
                ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(500.5)),
            ],
        )
        store.apply(after, "obs-1")
        (close,) = [w for w in after if isinstance(w, Close)]
        spans = spans_of(store)
        assert len(spans) == len(set(spans))
        pre = [w.span for w in before if isinstance(w, SpanEnded)]
        post = [w.span for w in after if isinstance(w, SpanEnded)]
        assert close.timeline is not None
        assert spans == as_rows(Timeline(t(0), (*pre, *post, *close.timeline.spans)))
        assert all(s[3] <= t(300) or s[2] >= t(340) for s in spans)  # nothing in the gap
        row = the_row(store)
        assert row.observed_from == t(1)  # where the first run began watching
        want = {n: 0 for n in STATE_COLUMNS}
        for kind, value, start, end in spans:
            if kind == "state":
                want[f"state_{value}_ms"] += round((end - start).total_seconds() * 1000)
        assert {c: getattr(row, c) for c in STATE_COLUMNS} == want
        assert row.state_unknown_ms and row.state_unknown_ms >= 40_000  # the gap
        assert rows(store, OpenSessionSpanRow) == []
    finally:
        store.close()
