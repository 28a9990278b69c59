"""Time in each agent state and alone, per session, as the tracker counts it. Pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from observer.core.changes import Close, SpanEnded
from observer.core.events import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomGone,
    RoomJoined,
    RoomLost,
    SeenParticipant,
)
from observer.core.timeline import Timeline, clipped
from observer.core.tracker import SessionTracker

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def t(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def agent(sid: str, joined: float, state: str | None = None) -> SeenParticipant:
    attrs = {"lk.agent.state": state} if state else {}
    return SeenParticipant(sid, f"id-{sid}", "", "agent", attrs, t(joined))


def user(sid: str) -> SeenParticipant:
    return SeenParticipant(sid, f"user-{sid}", "", "standard", {}, t(0))


def state(sid: str, value: str, at: float) -> AttributesChanged:
    return AttributesChanged("RM", sid, {"lk.agent.state": value}, t(at))


def timeline_of(events: list[Event], sid: str = "A") -> Timeline | None:
    """The session's whole timeline, as the store assembles it at the close: the spans
    written as they ended, then what the close carries, cut to the session."""
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    found: list[Close] = []
    written: list[SpanEnded] = []
    for ev in events:
        writes = tr.handle(ev).writes
        found += [w for w in writes if isinstance(w, Close)]
        written += [w for w in writes if isinstance(w, SpanEnded) and w.key.participant_sid == sid]
    (close,) = [c for c in found if c.key.participant_sid == sid]
    if close.timeline is None:
        assert not written
        return None
    start, end = close.timeline.observed_from, max(close.left_at, close.session.joined_at)
    assert all(w.observed_from <= start or start == end for w in written)
    spans = [*clipped([w.span for w in written], start, end), *close.timeline.spans]
    return Timeline(start, tuple(spans))


def ms(tl: Timeline | None) -> dict[str, int]:
    assert tl is not None
    return {k: v for k, v in tl.state_ms().items() if v} | {"alone": tl.alone_ms()}


def test_a_watched_session_counts_each_state_and_alone_to_the_millisecond() -> None:
    tl = timeline_of(
        [
            RoomJoined("r", "RM", (user("U1"),), t(0)),
            ParticipantJoined("r", "RM", agent("A", 1.0, "initializing"), t(1.05)),
            state("A", "listening", 2.0),
            state("A", "thinking", 5.0),
            state("A", "speaking", 6.0),
            ParticipantLeft("RM", "U1", "CLIENT_INITIATED", t(7.0)),  # alone from here
            state("A", "listening", 8.0),
            ParticipantJoined("r", "RM", user("U2"), t(9.0)),
            state("A", "listening", 9.5),  # the same value again changes nothing
            ParticipantLeft("RM", "A", "CLIENT_INITIATED", t(10.0)),
        ]
    )
    assert tl is not None and tl.observed_from == t(1.0)  # the join itself was seen
    # the state the join brought counts from when it was heard: 1.0 to 1.05 s is unknown
    assert ms(tl) == {
        "initializing": 950,
        "listening": 5000,
        "thinking": 1000,
        "speaking": 2000,
        "alone": 2000,
    }


def test_an_agent_there_before_the_observer_counts_from_first_sight() -> None:
    tl = timeline_of(
        [
            RoomJoined("r", "RM", (agent("A", 0.0, "listening"),), t(5.0)),
            state("A", "speaking", 6.5),
            ParticipantLeft("RM", "A", "CLIENT_INITIATED", t(8.0)),
        ]
    )
    assert tl is not None and tl.observed_from == t(5.0)
    assert ms(tl) == {"listening": 1500, "speaking": 1500, "alone": 3000}


def test_a_state_never_set_and_an_unknown_value() -> None:
    tl = timeline_of(
        [
            RoomJoined("r", "RM", (user("U1"),), t(0)),
            ParticipantJoined("r", "RM", agent("A", 1.0), t(1.0)),
            state("A", "dancing", 3.0),
            ParticipantLeft("RM", "A", "CLIENT_INITIATED", t(4.0)),
        ]
    )
    assert ms(tl) == {"other": 1000, "alone": 0}  # 1 to 3 s: no state, unknown


def test_nothing_counts_while_the_observer_reconnects() -> None:
    tl = timeline_of(
        [
            RoomJoined("r", "RM", (user("U1"), agent("A", 0.0, "listening")), t(0)),
            Reconnecting("RM", t(2.0)),
            Reconnected("RM", (user("U1"), agent("A", 0.0, "thinking")), t(5.0)),
            ParticipantLeft("RM", "A", "CLIENT_INITIATED", t(6.0)),
        ]
    )
    assert ms(tl) == {"listening": 2000, "thinking": 1000, "alone": 0}


def test_a_leave_nobody_saw_ends_the_timeline_where_the_agent_was_last_seen() -> None:
    tl = timeline_of(
        [
            RoomJoined("r", "RM", (agent("A", 0.0, "speaking"),), t(0)),
            RoomLost("RM", "gone", t(4.0)),
            RoomGone("RM", t(30.0), None),
        ]
    )
    assert tl is not None
    assert ms(tl) == {"speaking": 4000, "alone": 4000}
    assert max(s.end for s in tl.spans) == t(4.0)


def test_a_session_known_only_from_a_webhook_has_no_timeline() -> None:
    from observer.core.events import WebhookLeft

    tl = timeline_of(
        [WebhookLeft("r", "RM", agent("A", 0.0), "CLIENT_INITIATED", t(3.0))],
    )
    assert tl is None


def test_usage_is_recorded_and_flagged_once_per_session() -> None:
    from observer.core.agent_usage import ModelUsage, UsageReport
    from observer.core.changes import RecordUsage, UsageFlagged
    from observer.core.events import UsageReported

    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    tr.handle(RoomJoined("r", "RM", (user("U1"), agent("A", 0.0)), t(0)))
    realtime = ModelUsage("llm", "openai", "gpt-realtime", input_tokens=5, session_ms=4000)

    def report(sid: str, s: float) -> UsageReported:
        return UsageReported(UsageReport("RM", sid, f"id-{sid}", t(s), t(s), "room", (realtime,)))

    out = tr.handle(report("A", 1.0))
    assert [type(w) for w in out.writes] == [RecordUsage]
    assert [(n.participant_sid, n.flag) for n in out.notices] == [("A", "silent_realtime")]  # type: ignore[union-attr]
    assert tr.handle(report("A", 2.0)).notices == ()  # once per session
    flags = {n.flag for n in tr.handle(report("GHOST", 2.0)).notices if isinstance(n, UsageFlagged)}
    assert flags == {"unseen_session", "silent_realtime"}


def test_unchanged_usage_totals_are_not_written_again() -> None:
    from observer.core.agent_usage import ModelUsage, UsageReport
    from observer.core.changes import RecordUsage
    from observer.core.events import UsageReported

    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    tr.handle(RoomJoined("r", "RM", (user("U1"), agent("A", 0.0)), t(0)))
    llm = ModelUsage("llm", "openai", "gpt-x", input_tokens=5)
    tts = ModelUsage("tts", "acme", "voice", characters=3)

    def writes(s: float, *models: ModelUsage) -> list[tuple[str, ...]]:
        report = UsageReport("RM", "A", "id-A", t(s), t(s), "room", models)
        return [
            tuple(m.model for m in w.report.models)
            for w in tr.handle(UsageReported(report)).writes
            if isinstance(w, RecordUsage)
        ]

    assert writes(1, llm, tts) == [("gpt-x", "voice")]
    assert writes(2, llm, tts) == []  # the same totals again: nothing to write
    more = ModelUsage("tts", "acme", "voice", characters=9)
    assert writes(3, llm, more) == [("voice",)]
