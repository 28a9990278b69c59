"""Gaps in the observer's own life (its process stopped: SIGSTOP, a paused VM, a stalled
host): nothing counts as seen meanwhile. Tables of event sequences; pure logic."""

from __future__ import annotations

import pytest
from test_tracker import agent, closes, opens, run, stucks, t, user

from observer.core.changes import RefreshLastSeen, RequestListing
from observer.core.events import (
    Blind,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomClosed,
    RoomJoined,
    ServerListing,
    Tick,
)
from observer.core.tracker import SessionTracker
from observer.core.vocab import END_RECONCILED, END_ROOM_CLOSED, END_RTC

pytestmark = pytest.mark.unit

GAP_CASES: list[tuple[str, list[Event], list[str], list[tuple[object, ...]]]] = [
    (
        # stopped at 10.2, resumed at 40: the buffered leave arrives at 40.01 with its
        # reason; it happened somewhere in the gap, so it ends at the last evidence (the
        # heartbeat at 10), bounded by the news
        "a leave read from the socket just after a gap is bounded, not rtc",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            Tick(t(40), blind_since=t(10.2)),
            ParticipantLeft("RM1", "PA2", "CLIENT_INITIATED", t(40.01), blind_since=t(10.2)),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(45)),
        ],
        ["PA1", "PA2"],
        [
            ("PA2", t(10), "CLIENT_INITIATED", END_RECONCILED, 30010),
            ("PA1", t(45), "CLIENT_INITIATED", END_RTC, None),
        ],
    ),
    (
        "the first tick after a gap touches nothing; the listing confirms who stayed",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            Tick(t(40), blind_since=t(10.2)),
            Tick(t(55)),
            ServerListing("RM1", True, frozenset({"PA1"}), t(41), t(41.1)),
        ],
        ["PA1", "PA2"],
        [("PA2", t(10), None, END_RECONCILED, 31100)],
    ),
    (
        # the server dropped the stopped observer; on resuming the SDK reconnects in full:
        # fake leaves, reconnecting, then the room as it is now
        "a full reconnect after a gap: gone agents end at the last evidence",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(40.0), blind_since=t(10.2)),
            ParticipantLeft("RM1", "PA2", "UNKNOWN_REASON", t(40.0), blind_since=t(10.2)),
            Reconnecting("RM1", t(40.0)),
            Tick(t(40.1), blind_since=t(10.2)),
            Reconnected("RM1", (agent("PA1"),), t(42)),
            ServerListing("RM1", True, frozenset({"PA1"}), t(42), t(42.2)),
        ],
        ["PA1", "PA2"],
        [("PA2", t(10), None, END_RECONCILED, 32200)],
    ),
    (
        "a join and a leave both from inside the gap: bounded by the join",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            ParticipantJoined("r", "RM1", agent("PA3", 20), t(40.0), blind_since=t(10.2)),
            ParticipantLeft("RM1", "PA3", "CLIENT_INITIATED", t(40.01), blind_since=t(10.2)),
        ],
        ["PA1", "PA3"],
        [("PA3", t(20), "CLIENT_INITIATED", END_RECONCILED, 20010)],
    ),
    (
        "a room that closed during the gap: its sessions end at the last evidence",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            RoomClosed("RM1", "ROOM_CLOSED", t(40.0), blind_since=t(10.2)),
        ],
        ["PA1"],
        [("PA1", t(10), "ROOM_CLOSED", END_RECONCILED, 30000)],
    ),
    (
        "a gap reported by a room process covers its rooms only",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            RoomJoined("q", "RM2", (agent("PB1"),), t(0)),
            Tick(t(0)),
            Tick(t(10)),
            Blind(t(10.2), t(40), frozenset({"RM2"})),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(41)),
            ServerListing("RM2", True, frozenset(), t(41), t(41.2)),
        ],
        ["PA1", "PB1"],
        [
            ("PA1", t(41), "CLIENT_INITIATED", END_RTC, None),
            ("PB1", t(10), None, END_RECONCILED, 31200),
        ],
    ),
    (
        "a room closed while watching, no gap: closed at once",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            RoomClosed("RM1", "ROOM_CLOSED", t(9)),
        ],
        ["PA1"],
        [("PA1", t(9), "ROOM_CLOSED", END_ROOM_CLOSED, None)],
    ),
]


@pytest.mark.parametrize(
    ("events", "want_opens", "want_closes"),
    [c[1:] for c in GAP_CASES],
    ids=[c[0] for c in GAP_CASES],
)
def test_gap_sequences(
    events: list[Event], want_opens: list[str], want_closes: list[tuple[object, ...]]
) -> None:
    ops = run(events)
    assert opens(ops) == want_opens
    assert closes(ops) == want_closes


def test_last_seen_moves_only_on_evidence_after_a_gap() -> None:
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    ops = run([RoomJoined("r", "RM1", (agent("PA1"),), t(0)), Tick(t(0.5)), Tick(t(10.5))], tr)
    assert [o.at for o in ops if isinstance(o, RefreshLastSeen)] == [t(10.5)]
    ops = run([Tick(t(40), blind_since=t(10.6))], tr)
    assert not [o for o in ops if isinstance(o, RefreshLastSeen)]
    assert [o for o in ops if isinstance(o, RequestListing)] == [RequestListing("RM1", "r")]
    # the heartbeat leaves an unconfirmed session alone, however long
    ops = run([Tick(t(40.5)), Tick(t(55)), Tick(t(70))], tr)
    assert not [o for o in ops if isinstance(o, RefreshLastSeen)]
    # a listing asked before the gap ended is no evidence; one asked after is
    ops = run([ServerListing("RM1", True, frozenset({"PA1"}), t(39), t(41))], tr)
    assert not [o for o in ops if isinstance(o, RefreshLastSeen)]
    ops = run([ServerListing("RM1", True, frozenset({"PA1"}), t(71), t(71.1))], tr)
    assert [o.at for o in ops if isinstance(o, RefreshLastSeen)] == [t(71)]
    assert tr.open_sessions[next(iter(tr.open_sessions))].last_seen_at == t(71)


def test_reconnecting_is_no_evidence() -> None:
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    ops = run([RoomJoined("r", "RM1", (agent("PA1"),), t(0)), Reconnecting("RM1", t(25))], tr)
    assert not [o for o in ops if isinstance(o, RefreshLastSeen)]
    (s,) = tr.open_sessions.values()
    assert s.last_seen_at == t(0)


def test_one_stuck_alert_per_spell_through_a_gap_and_a_full_reconnect() -> None:
    tr = SessionTracker(frozenset({"agent"}), stuck_after_s=60)
    run([RoomJoined("r", "RM1", (agent("PA1"),), t(0)), Tick(t(1))], tr)
    (alert,) = stucks(tr, [Tick(t(62))])
    assert alert.alone_since == t(1)
    # stopped for 30 s; on resuming, the SDK's fake leaves, a reconnect, the room again
    events: list[Event] = [
        Tick(t(100), blind_since=t(70)),
        ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(100.1), blind_since=t(70)),
        Reconnecting("RM1", t(100.1)),
        Tick(t(101)),
        Reconnected("RM1", (agent("PA1"),), t(102)),
        ServerListing("RM1", True, frozenset({"PA1"}), t(102), t(102.1)),
    ]
    events += [Tick(t(102 + i)) for i in range(1, 200, 10)]
    assert stucks(tr, events) == []
    assert tr.stuck_agents == 1
    # company ends the spell; a new one alerts anew
    run([ParticipantJoined("r", "RM1", user("PU1"), t(400)), Tick(t(401))], tr)
    assert tr.stuck_agents == 0
    run([ParticipantLeft("RM1", "PU1", "CLIENT_INITIATED", t(402))], tr)
    assert len(stucks(tr, [Tick(t(403)), Tick(t(470))])) == 1


def test_an_unconfirmed_leave_changes_no_room_numbers() -> None:
    """The SDK's fake leaves around its own reconnect must not tell the database that the
    room's agents are gone (that would end a stuck-agent spell another observer alerted)."""
    from observer.core.changes import RoomPresence

    tr = SessionTracker(frozenset({"agent"}))
    run([RoomJoined("r", "RM1", (agent("PA1"),), t(0))], tr)
    out = tr.handle(ParticipantLeft("RM1", "PA1", "", t(5)))
    assert not [w for w in out.writes if isinstance(w, RoomPresence)]
    out = tr.handle(ServerListing("RM1", True, frozenset(), t(6), t(6.1)))
    (presence,) = [w for w in out.writes if isinstance(w, RoomPresence)]
    assert presence.agents == 0


def test_the_sdk_announcing_everyone_again_after_a_gap_ends_nobody() -> None:
    """After a full reconnect the SDK announces every participant again; right after a gap
    those joins are news from inside it, and must not read as anyone replacing anyone."""
    present = (agent("PA1", identity="a"), agent("PA2", identity="b"))
    ops = run(
        [
            RoomJoined("r", "RM1", present, t(0)),
            Tick(t(0)),
            Tick(t(10)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(40.0), blind_since=t(10.2)),
            ParticipantLeft("RM1", "PA2", "UNKNOWN_REASON", t(40.0), blind_since=t(10.2)),
            Reconnecting("RM1", t(40.0)),
            Reconnected("RM1", (*present, agent("PA3", 20, identity="c")), t(40.5)),
            ParticipantJoined("r", "RM1", present[0], t(40.5), blind_since=t(10.2)),
            ParticipantJoined("r", "RM1", present[1], t(40.5), blind_since=t(10.2)),
            ParticipantJoined("r", "RM1", agent("PA3", 20, identity="c"), t(40.5), t(10.2)),
            ServerListing("RM1", True, frozenset({"PA1", "PA2", "PA3"}), t(41), t(41.1)),
        ]
    )
    assert opens(ops) == ["PA1", "PA2", "PA3"]
    assert closes(ops) == []


def test_a_broken_connection_vouches_for_nothing_in_its_window() -> None:
    """The heartbeat says only that the connection did not report anyone gone; when the
    connection turns out broken, what it claimed in the `trouble_window_s` before is no
    evidence. Events from the room are."""
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=1, trouble_window_s=20)
    events: list[Event] = [RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0))]
    events += [Tick(t(i)) for i in range(0, 41)]
    events.append(ParticipantJoined("r", "RM1", agent("PA2"), t(25)))  # evidence for PA2
    events.append(Reconnecting("RM1", t(40)))
    run(events, tr)
    seen = {k.participant_sid: s.last_seen_at for k, s in tr.open_sessions.items()}
    assert seen == {"PA1": t(20), "PA2": t(25)}
    ops = run(
        [Reconnected("RM1", (), t(45)), ServerListing("RM1", True, frozenset(), t(45), t(46))], tr
    )
    assert closes(ops) == [
        ("PA1", t(20), None, END_RECONCILED, 26000),
        ("PA2", t(25), None, END_RECONCILED, 21000),
    ]


def test_a_room_no_live_node_hosts_ends_its_sessions_at_their_last_evidence() -> None:
    from observer.core.events import RoomUnreachable

    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=1, trouble_window_s=20)
    events: list[Event] = [RoomJoined("r", "RM1", (agent("PA1"),), t(0))]
    events += [Tick(t(i)) for i in range(0, 31)]
    events.append(Reconnecting("RM1", t(30)))  # the node died at about 28
    ops = run([*events, RoomUnreachable("RM1", t(45))], tr)
    assert closes(ops) == [("PA1", t(10), None, END_RECONCILED, 35000)]
    assert tr.open_sessions == {}
