"""One identity, one participant: LiveKit replaces an older connection of the same
identity, and the rows of one identity in one room never overlap. Pure logic."""

from __future__ import annotations

import pytest
from test_tracker import agent, closes, opens, run, t

from observer.core.events import Event, ParticipantJoined, ParticipantLeft, RoomJoined, Tick
from observer.core.vocab import END_RECONCILED, END_RTC

pytestmark = pytest.mark.unit

CASES: list[tuple[str, list[Event], list[str], list[tuple[object, ...]]]] = [
    (
        # the server removed the old connection 1 ms before the new one started, but the
        # news of the removal reached the observer 220 ms after the new one's join time
        "the replaced leave after the new join: capped at the new join",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantJoined("r", "RM1", agent("PA2", 10.0, identity="bot"), t(10.1)),
            ParticipantLeft("RM1", "PA1", "DUPLICATE_IDENTITY", t(10.22)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(10.0), "DUPLICATE_IDENTITY", END_RTC, None)],
    ),
    (
        "the replaced leave before the new join: held for it, then capped",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantLeft("RM1", "PA1", "DUPLICATE_IDENTITY", t(10.22)),
            Tick(t(10.5)),
            ParticipantJoined("r", "RM1", agent("PA2", 10.0, identity="bot"), t(10.6)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(10.0), "DUPLICATE_IDENTITY", END_RTC, None)],
    ),
    (
        "the replaced leave with no new join in sight: closed at its own time",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantLeft("RM1", "PA1", "DUPLICATE_IDENTITY", t(10.22)),
            Tick(t(11)),
            Tick(t(14)),
        ],
        ["PA1"],
        [("PA1", t(10.22), "DUPLICATE_IDENTITY", END_RTC, None)],
    ),
    (
        # a leave without a reason says nothing of when: bounded, never past the new join
        "a suspect leave then the same identity's join: bounded by the new join",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantLeft("RM1", "PA1", "", t(10.3)),
            ParticipantJoined("r", "RM1", agent("PA2", 10.0, identity="bot"), t(10.4)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(10.0), "DUPLICATE_IDENTITY", END_RECONCILED, 0)],
    ),
    (
        # the old connection died with its node: the server never says it left
        "a newer connection seen live and no leave of the old: bounded, not rtc",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantJoined("r", "RM1", agent("PA2", 13.0, identity="bot"), t(13.1)),
            Tick(t(14)),
            Tick(t(17)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 13000)],
    ),
]


@pytest.mark.parametrize(
    ("events", "want_opens", "want_closes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_identity_sequences(
    events: list[Event], want_opens: list[str], want_closes: list[tuple[object, ...]]
) -> None:
    ops = run(events)
    assert opens(ops) == want_opens
    assert closes(ops) == want_closes
    # no two rows of one identity overlap
    spans = {o.session.participant_sid: o.session.joined_at for o in ops if hasattr(o, "session")}
    for c in closes(ops):
        later = [j for sid, j in spans.items() if sid != c[0] and j > spans[c[0]]]
        assert all(c[1] <= j for j in later), (c, later)
