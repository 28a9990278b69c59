"""The session tracker, as tables of event sequences. Pure logic: no server, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from observer.core.changes import (
    Close,
    EventChanges,
    Op,
    Open,
    RefreshLastSeen,
    RequestListing,
    RoomEnded,
    RoomPresence,
    RoomSeen,
    StuckAgents,
    UpdateAttributes,
    Witnessed,
)
from observer.core.events import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomClosed,
    RoomGone,
    RoomHandedOver,
    RoomJoined,
    RoomLost,
    RoomMetadataChanged,
    SeenParticipant,
    ServerListing,
    SessionKey,
    StoredOpenSessions,
    Tick,
    TrackedSession,
    WebhookJoined,
    WebhookLeft,
    WebhookRoomFinished,
)
from observer.core.tracker import SessionTracker
from observer.core.vocab import END_RECONCILED, END_ROOM_CLOSED, END_RTC, END_WEBHOOK

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def t(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def agent(
    sid: str, joined: float = 0.0, identity: str | None = None, **attrs: str
) -> SeenParticipant:
    return SeenParticipant(sid, identity or f"id-{sid}", "", "agent", attrs, t(joined))


def user(sid: str) -> SeenParticipant:
    return SeenParticipant(sid, f"user-{sid}", "", "standard", {}, t(0))


def step(tr: SessionTracker, ev: Event) -> list[Op]:
    """One event's session writes, then its notices (witness records and room rows are
    tested on their own)."""
    out = tr.handle(ev)
    aside = (Witnessed, RoomSeen, RoomPresence, RoomEnded)
    return [*(w for w in out.writes if not isinstance(w, aside)), *out.notices]


def run(events: list[Event], tracker: SessionTracker | None = None) -> list[Op]:
    tr = tracker or SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    ops: list[Op] = []
    for ev in events:
        ops += step(tr, ev)
    return ops


def closes(ops: list[Op]) -> list[tuple[str, datetime, str | None, str, int | None]]:
    return [
        (o.key.participant_sid, o.left_at, o.reason, o.end_source, o.uncertainty_ms)
        for o in ops
        if isinstance(o, Close)
    ]


def opens(ops: list[Op]) -> list[str]:
    return [o.session.participant_sid for o in ops if isinstance(o, Open)]


CASES: list[tuple[str, list[Event], list[str], list[tuple[object, ...]]]] = [
    (
        # the node hosting the room died; the observer, connected through another node,
        # went on taking the agent as seen until its own connection noticed (t=20), but
        # the agent had rejoined by then (t=12): the old session ends by t=12, and what
        # the heartbeat claimed in the 20 s before the connection's trouble is no evidence
        "a missed leave never ends after the same identity rejoined",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(20)),
            Reconnecting("RM1", t(20)),
            Reconnected("RM1", (agent("PA2", 12, identity="bot"),), t(22)),
            ServerListing("RM1", True, ("PA2",), t(22), t(23)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 12000)],
    ),
    (
        "the same, when the rejoin is seen before the observer's connection is back",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(20)),
            ParticipantLeft("RM1", "PA1", "", t(20)),
            Reconnecting("RM1", t(20)),
            ParticipantJoined("r", "RM1", agent("PA2", 12, identity="bot"), t(21)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 12000)],
    ),
    (
        "a rejoin inside the gap narrows only the upper bound",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(11)),
            Reconnecting("RM1", t(12)),
            Reconnected("RM1", (agent("PA2", 30, identity="bot"),), t(31)),
            ServerListing("RM1", True, ("PA2",), t(31), t(32)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 30000)],
    ),
    (
        "join then leave",
        [
            RoomJoined("r", "RM1", (), t(0)),
            ParticipantJoined("r", "RM1", agent("PA1", 1), t(1)),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(5)),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_RTC, None)],
    ),
    (
        "non-agents are not recorded",
        [
            RoomJoined("r", "RM1", (user("PU1"),), t(0)),
            ParticipantJoined("r", "RM1", user("PU2"), t(1)),
            ParticipantLeft("RM1", "PU1", "CLIENT_INITIATED", t(2)),
        ],
        [],
        [],
    ),
    (
        "agent already present keeps the server's join time",
        [RoomJoined("r", "RM1", (agent("PA1", -100),), t(0))],
        ["PA1"],
        [],
    ),
    (
        "room deleted closes everyone in it at that moment",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            RoomClosed("RM1", "ROOM_DELETED", t(9)),
        ],
        ["PA1", "PA2"],
        [
            ("PA1", t(9), "ROOM_DELETED", END_ROOM_CLOSED, None),
            ("PA2", t(9), "ROOM_DELETED", END_ROOM_CLOSED, None),
        ],
    ),
    (
        "full reconnect: the SDK's fake leaves are ignored",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(10)),
            Reconnecting("RM1", t(10)),
            Tick(t(20)),
            ParticipantJoined("r", "RM1", agent("PA1"), t(21)),
            Reconnected("RM1", (agent("PA1"),), t(21)),
            Tick(t(30)),
        ],
        ["PA1"],
        [],
    ),
    (
        "an agent that left during the observer's reconnect is closed once the API confirms",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            Reconnecting("RM1", t(10)),
            Reconnected("RM1", (agent("PA1"),), t(13)),
            Tick(t(20)),
            ServerListing("RM1", True, frozenset({"PA1"}), t(14), t(14.2)),
        ],
        ["PA1", "PA2"],
        [("PA2", t(0), None, END_RECONCILED, 14200)],
    ),
    (
        "a leave without a reason never closes on its own",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5)),
            Tick(t(6)),
            Tick(t(60)),
        ],
        ["PA1"],
        [],
    ),
    (
        "a leave without a reason closes, bounded, when the API no longer lists it",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5)),
            ServerListing("RM1", True, frozenset(), t(5.5), t(5.6)),
        ],
        ["PA1"],
        [("PA1", t(5), None, END_RECONCILED, 600)],
    ),
    (
        "a leave without a reason is dropped when the API still lists it afterwards",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5)),
            ServerListing("RM1", True, frozenset({"PA1"}), t(4), t(5.1)),  # asked before the leave
            ServerListing("RM1", True, frozenset({"PA1"}), t(6), t(6.1)),
            ServerListing("RM1", True, frozenset(), t(7), t(7.1)),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(9)),
        ],
        ["PA1"],
        [("PA1", t(9), "CLIENT_INITIATED", END_RTC, None)],
    ),
    (
        "signal cut, resume: leaves the server replays with a reason are bounded, not rtc",
        [
            RoomJoined("r", "RM1", (agent("PA1"), agent("PA2")), t(0)),
            Reconnecting("RM1", t(10)),
            ParticipantLeft("RM1", "PA2", "CLIENT_INITIATED", t(14)),
            Reconnected("RM1", (agent("PA1"),), t(14)),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(30)),
        ],
        ["PA1", "PA2"],
        [
            ("PA2", t(0), "CLIENT_INITIATED", END_RECONCILED, 14000),
            ("PA1", t(30), "CLIENT_INITIATED", END_RTC, None),
        ],
    ),
    (
        "full reconnect: fake leaves, same sids back, nothing closed or reopened",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(10)),
            Reconnecting("RM1", t(10)),
            Tick(t(15)),
            ParticipantJoined("r", "RM1", agent("PA1"), t(16)),
            Reconnected("RM1", (agent("PA1"),), t(16)),
            ServerListing("RM1", True, frozenset({"PA1"}), t(16.5), t(16.6)),
            Tick(t(40)),
        ],
        ["PA1"],
        [],
    ),
    (
        "full reconnect: an agent that rejoined with a new sid during the gap is bounded",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(10)),
            Reconnecting("RM1", t(10)),
            ParticipantJoined("r", "RM1", agent("PA2", 12, identity="bot"), t(16)),
            Reconnected("RM1", (agent("PA2", 12, identity="bot"),), t(16)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 12000)],  # gone by PA2's join
    ),
    (
        "the API says the room is gone: its sessions close, bounded",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            Reconnecting("RM1", t(10)),
            ServerListing("RM1", False, frozenset(), t(12), t(12.1)),
        ],
        ["PA1"],
        [("PA1", t(0), None, END_RECONCILED, 12100)],
    ),
    (
        "same identity, new sid: the old session closes, a new one opens",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5)),
            ParticipantJoined("r", "RM1", agent("PA2", 5, identity="bot"), t(5)),
            Tick(t(8)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(5), "DUPLICATE_IDENTITY", END_RECONCILED, 0)],
    ),
    (
        "a duplicate join of an open session changes nothing",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantJoined("r", "RM1", agent("PA1"), t(1)),
            RoomJoined("r", "RM1", (agent("PA1"),), t(2)),
        ],
        ["PA1"],
        [],
    ),
    (
        "a room lost and then gone closes its sessions reconciled, from last seen",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            RoomLost("RM1", "SIGNAL_CLOSE", t(4)),
            RoomGone("RM1", t(30)),
        ],
        ["PA1"],
        [("PA1", t(4), None, END_RECONCILED, 26000)],
    ),
    (
        "a leave for an unknown session is ignored",
        [
            RoomJoined("r", "RM1", (), t(0)),
            ParticipantLeft("RM1", "PX", "CLIENT_INITIATED", t(1)),
        ],
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("events", "want_opens", "want_closes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_event_sequences(
    events: list[Event], want_opens: list[str], want_closes: list[tuple[object, ...]]
) -> None:
    ops = run(events)
    assert opens(ops) == want_opens
    assert closes(ops) == want_closes


def test_open_row_carries_server_join_time_and_agent_name() -> None:
    ops = run([RoomJoined("r", "RM1", (agent("PA1", -100, **{"lk.agent_name": "bob"}),), t(0))])
    (op,) = ops
    assert isinstance(op, Open)
    assert op.session.joined_at == t(-100)
    assert op.session.agent_name == "bob"
    assert op.session.last_seen_at == t(0)


def test_restart_continues_open_sessions_and_closes_missing_ones() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    seeded = [
        TrackedSession("r", "RM1", sid, f"id-{sid}", "", "agent", None, {}, t(0), t(50))
        for sid in ("PA1", "PA2")
    ]
    tr.seed(seeded)
    assert tr.unwatched_rooms() == {"RM1": "r"}
    ops = step(tr, RoomJoined("r", "RM1", (agent("PA1"),), t(80)))
    assert opens(ops) == []
    assert closes(ops) == []  # absent from the SDK's view: the server's API decides
    assert [o for o in ops if isinstance(o, RefreshLastSeen)] == [
        RefreshLastSeen((SessionKey("RM1", "PA1"),), t(80))
    ]
    assert [o for o in ops if isinstance(o, RequestListing)] == [RequestListing("RM1", "r")]
    ops = step(tr, ServerListing("RM1", True, frozenset({"PA1"}), t(81), t(81.1)))
    assert closes(ops) == [("PA2", t(50), None, END_RECONCILED, 31100)]
    assert tr.unwatched_rooms() == {}


def test_heartbeat_touches_only_watched_rooms() -> None:
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=10)
    run(
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            RoomJoined("q", "RM2", (agent("PB1"),), t(0)),
            Reconnecting("RM2", t(1)),
        ],
        tr,
    )
    assert step(tr, Tick(t(2))) == []  # first tick only starts the clock
    assert step(tr, Tick(t(5))) == []
    ops = step(tr, Tick(t(12.5)))
    assert ops == [RefreshLastSeen((SessionKey("RM1", "PA1"),), t(12.5))]


def test_attribute_change_updates_agent_name() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    run([RoomJoined("r", "RM1", (agent("PA1"),), t(0))], tr)
    ops = step(tr, AttributesChanged("RM1", "PA1", {"lk.agent.name": "eve"}, t(1)))
    assert ops == [UpdateAttributes(SessionKey("RM1", "PA1"), {"lk.agent.name": "eve"}, "eve")]
    assert step(tr, AttributesChanged("RM1", "PA1", {"lk.agent.name": "eve"}, t(2))) == []


def test_tracked_kinds_setting() -> None:
    tr = SessionTracker(frozenset({"agent", "sip"}))
    sip = SeenParticipant("PS1", "caller", "", "sip", {}, t(0))
    ops = run([RoomJoined("r", "RM1", (sip, user("PU1")), t(0))], tr)
    assert opens(ops) == ["PS1"]


def webhook_left(sid: str, at: float, joined: float = 0.0, reason: str = "CLIENT_INITIATED"):
    return WebhookLeft("r", "RM1", agent(sid, joined), reason, t(at))


WEBHOOK_CASES: list[tuple[str, list[Event], list[str], list[tuple[object, ...]]]] = [
    (
        # the node hosting the room died; the observer, connected through another node,
        # went on taking the agent as seen until its own connection noticed (t=20), but
        # the agent had rejoined by then (t=12): the old session ends by t=12, and what
        # the heartbeat claimed in the 20 s before the connection's trouble is no evidence
        "a missed leave never ends after the same identity rejoined",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(20)),
            Reconnecting("RM1", t(20)),
            Reconnected("RM1", (agent("PA2", 12, identity="bot"),), t(22)),
            ServerListing("RM1", True, ("PA2",), t(22), t(23)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 12000)],
    ),
    (
        "the same, when the rejoin is seen before the observer's connection is back",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(20)),
            ParticipantLeft("RM1", "PA1", "", t(20)),
            Reconnecting("RM1", t(20)),
            ParticipantJoined("r", "RM1", agent("PA2", 12, identity="bot"), t(21)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 12000)],
    ),
    (
        "a rejoin inside the gap narrows only the upper bound",
        [
            RoomJoined("r", "RM1", (agent("PA1", identity="bot"),), t(0)),
            Tick(t(1)),
            Tick(t(11)),
            Reconnecting("RM1", t(12)),
            Reconnected("RM1", (agent("PA2", 30, identity="bot"),), t(31)),
            ServerListing("RM1", True, ("PA2",), t(31), t(32)),
        ],
        ["PA1", "PA2"],
        [("PA1", t(0), "DUPLICATE_IDENTITY", END_RECONCILED, 30000)],
    ),
    (
        "a session the observer never saw is recorded from webhooks",
        [WebhookJoined("r", "RM1", agent("PA1", 1), t(1)), webhook_left("PA1", 9, 1)],
        ["PA1"],
        [("PA1", t(9), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "a lone participant_left (join event dropped) still records the session",
        [webhook_left("PA1", 9, 1)],
        ["PA1"],
        [("PA1", t(9), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "seen by both witnesses: one row, the observer's own leave wins",
        [
            RoomJoined("r", "RM1", (), t(0)),
            WebhookJoined("r", "RM1", agent("PA1", 1), t(1)),
            ParticipantJoined("r", "RM1", agent("PA1", 1), t(1.1)),
            webhook_left("PA1", 9, 1),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(8.7)),
            WebhookJoined("r", "RM1", agent("PA1", 1), t(1)),  # redelivered late
        ],
        ["PA1"],
        [("PA1", t(8.7), "CLIENT_INITIATED", END_RTC, None)],
    ),
    (
        # the server sends a non-publisher's leave on its 3 s ticker: news of it that comes
        # after the webhook's second is late, and the webhook's time is the leave's
        "a live leave later than the webhook's second closes at the webhook's time",
        [
            RoomJoined("r", "RM1", (), t(0)),
            ParticipantJoined("r", "RM1", agent("PA1", 1), t(1.1)),
            webhook_left("PA1", 5, 1),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(7.6)),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "a live leave within the webhook's second keeps its own millisecond",
        [
            RoomJoined("r", "RM1", (), t(0)),
            ParticipantJoined("r", "RM1", agent("PA1", 1), t(1.1)),
            webhook_left("PA1", 5, 1),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(5.9)),
        ],
        ["PA1"],
        [("PA1", t(5.9), "CLIENT_INITIATED", END_RTC, None)],
    ),
    (
        "rtc first, webhook after: nothing doubled",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(5)),
            webhook_left("PA1", 5),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_RTC, None)],
    ),
    (
        "while the observer reconnects the webhook closes the session",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            Reconnecting("RM1", t(4)),
            webhook_left("PA1", 5),
            Reconnected("RM1", (), t(8)),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "a leave without a reason is confirmed by the webhook, at its time and reason",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5.4)),
            webhook_left("PA1", 5, reason="CONNECTION_TIMEOUT"),
        ],
        ["PA1"],
        [("PA1", t(5), "CONNECTION_TIMEOUT", END_WEBHOOK, None)],
    ),
    (
        "a webhook leave the observer does not see itself closes after a short hold",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            webhook_left("PA1", 5),
            Tick(t(6)),
            Tick(t(8.5)),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "a webhook leave during the observer's gap gives the time when the API confirms",
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            webhook_left("PA1", 5),
            ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(5.5)),
            ServerListing("RM1", True, frozenset(), t(6), t(6.1)),
        ],
        ["PA1"],
        [("PA1", t(5), "CLIENT_INITIATED", END_WEBHOOK, None)],
    ),
    (
        "room finished closes webhook-only sessions of a room the observer is not in",
        [WebhookJoined("r", "RM1", agent("PA1", 1), t(1)), WebhookRoomFinished("RM1", t(30))],
        ["PA1"],
        [("PA1", t(30), None, END_WEBHOOK, None)],
    ),
    (
        "room finished is ignored for a room the observer is in",
        [RoomJoined("r", "RM1", (agent("PA1"),), t(0)), WebhookRoomFinished("RM1", t(30))],
        ["PA1"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("events", "want_opens", "want_closes"),
    [c[1:] for c in WEBHOOK_CASES],
    ids=[c[0] for c in WEBHOOK_CASES],
)
def test_webhook_sequences(
    events: list[Event], want_opens: list[str], want_closes: list[tuple[object, ...]]
) -> None:
    ops = run(events)
    assert opens(ops) == want_opens
    assert closes(ops) == want_closes


def test_stuck_agent_alerts_once_per_occurrence() -> None:
    tr = SessionTracker(frozenset({"agent"}), stuck_after_s=60)
    run([RoomJoined("r", "RM1", (agent("PA1"), user("PU1")), t(0))], tr)
    assert stucks(tr, [Tick(t(100))]) == []  # company present
    run([ParticipantLeft("RM1", "PU1", "CLIENT_INITIATED", t(101))], tr)
    assert stucks(tr, [Tick(t(102)), Tick(t(150))]) == []
    (alert,) = stucks(tr, [Tick(t(162)), Tick(t(170)), Tick(t(300))])
    assert alert.identities == ("id-PA1",) and alert.alone_since == t(102)
    assert tr.stuck_agents == 1
    run([ParticipantJoined("r", "RM1", user("PU2"), t(301))], tr)
    assert stucks(tr, [Tick(t(302))]) == [] and tr.stuck_agents == 0
    run([ParticipantLeft("RM1", "PU2", "CLIENT_INITIATED", t(303))], tr)
    assert len(stucks(tr, [Tick(t(304)), Tick(t(365))])) == 1  # a new occurrence


def stucks(tr: SessionTracker, events: list[Event]) -> list[StuckAgents]:
    return [o for o in run(events, tr) if isinstance(o, StuckAgents)]


def test_webhook_only_session_in_a_watched_room_closes_by_webhook() -> None:
    """The webhook join arrives after the observer joined, for an agent already gone."""
    ops = run(
        [
            RoomJoined("r", "RM1", (), t(0)),
            WebhookJoined("r", "RM1", agent("PA1", -5), t(-5)),
            webhook_left("PA1", -1, -5),
        ]
    )
    assert opens(ops) == ["PA1"]
    assert closes(ops) == [("PA1", t(-1), "CLIENT_INITIATED", END_WEBHOOK, None)]


def test_room_gone_spares_sessions_seen_after_the_listing() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    run([WebhookJoined("r", "RM1", agent("PA1", 10), t(10))], tr)
    assert step(tr, RoomGone("RM1", t(11), listed_at=t(9))) == []
    assert closes(step(tr, RoomGone("RM1", t(20), listed_at=t(15)))) == [
        ("PA1", t(10), None, END_RECONCILED, 10000)
    ]


def test_notices_are_kept_apart_from_writes() -> None:
    tr = SessionTracker(frozenset({"agent"}), stuck_after_s=5)
    tr.handle(RoomJoined("r", "RM1", (agent("PA1"),), t(0)))
    tr.handle(Tick(t(1)))
    out = tr.handle(Tick(t(7)))
    assert [type(n).__name__ for n in out.notices] == ["StuckAgents"]
    assert all(isinstance(w, (Open, Close, RefreshLastSeen, UpdateAttributes)) for w in out.writes)
    out = tr.handle(ParticipantLeft("RM1", "PA1", "UNKNOWN_REASON", t(8)))
    assert not [w for w in out.writes if isinstance(w, Close)]
    assert out.notices == (RequestListing("RM1", "r"),)


def test_placement_is_even_and_scale_out_moves_a_quarter() -> None:
    from observer.core.placement import assign

    for seed in range(20):
        rooms = [f"room-{seed}-{i}" for i in range(300)]
        three = [f"obs-{seed}-{c}" for c in "abc"]
        before = assign(rooms, three, 1)
        share = {o: sum(1 for r in rooms if before[r] == (o,)) for o in three}
        assert all(abs(n - 100) <= 15 for n in share.values()), share
        four = [*three, f"obs-{seed}-d"]
        after = assign(rooms, four, 1)
        moved = [r for r in rooms if before[r] != after[r]]
        assert 0.15 * len(rooms) <= len(moved) <= 0.35 * len(rooms), len(moved)
        # the same answer whatever order the lists come in
        assert assign(reversed(rooms), list(reversed(four)), 1) == after


def test_placement_with_replicas_keeps_a_watcher_when_one_dies() -> None:
    from observer.core.placement import assign

    rooms = [f"room-{i}" for i in range(300)]
    three = ["obs-a", "obs-b", "obs-c"]
    before = assign(rooms, three, 2)
    assert all(len(set(o)) == 2 for o in before.values())
    after = assign(rooms, ["obs-a", "obs-b"], 2)
    kept = sum(1 for r in rooms if set(before[r]) - {"obs-c"} <= set(after[r]))
    assert kept == len(rooms)  # survivors keep their rooms; only obs-c's move
    assert assign(rooms, ["obs-a"], 2)["room-1"] == ("obs-a",)  # never more than are alive


def test_an_observer_records_once_that_it_saw_a_participant_itself() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    out = tr.handle(RoomJoined("r", "RM1", (agent("PA1"), user("PU1")), t(0)))
    assert [w for w in out.writes if isinstance(w, Witnessed)] == [
        Witnessed((SessionKey("RM1", "PA1"),), t(0))
    ]
    out = tr.handle(ParticipantJoined("r", "RM1", agent("PA2"), t(1)))
    assert Witnessed((SessionKey("RM1", "PA2"),), t(1)) in out.writes
    out = tr.handle(Reconnected("RM1", (agent("PA1"), agent("PA2")), t(2)))
    assert not [w for w in out.writes if isinstance(w, Witnessed)]
    # a join learned only from a webhook is not a witness
    out = tr.handle(WebhookJoined("q", "RM2", agent("PB1"), t(3)))
    assert not [w for w in out.writes if isinstance(w, Witnessed)]


def test_seeded_rows_of_a_room_continue_and_are_settled_when_gone() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    rows = tuple(
        TrackedSession("r", "RM1", sid, f"id-{sid}", "", "agent", None, {}, t(-50), t(-10))
        for sid in ("PA1", "PA2")
    )
    assert tr.handle(StoredOpenSessions("RM1", rows)) == EventChanges()
    ops = step(tr, RoomJoined("r", "RM1", (agent("PA1", -50),), t(0)))
    assert opens(ops) == [] and RequestListing("RM1", "r") in ops
    # seen by another observer 10 s ago: its real leave may still reach that observer (a
    # participant that publishes nothing is announced on the server's 3 s ticker)
    ops = step(tr, ServerListing("RM1", True, frozenset({"PA1"}), t(0.5), t(0.6)))
    assert closes(ops) == []
    assert RequestListing("RM1", "r") in step(tr, Tick(t(3.6)))
    ops = step(tr, ServerListing("RM1", True, frozenset({"PA1"}), t(4.5), t(4.6)))
    assert closes(ops) == [("PA2", t(-10), None, END_RECONCILED, 14600)]


def test_a_row_another_observer_refreshed_a_refresh_ago_waits_for_its_leave() -> None:
    """The other observer writes last_seen_at every `last_seen_refresh_s` (15 s by default):
    a row it last touched 20 s ago may still be a participant it sees, whose leave it is
    about to report."""
    tr = SessionTracker(frozenset({"agent"}))
    row = TrackedSession("r", "RM1", "PA2", "id-PA2", "", "agent", None, {}, t(-90), t(-20))
    tr.handle(StoredOpenSessions("RM1", (row,)))
    step(tr, RoomJoined("r", "RM1", (), t(0)))
    assert closes(step(tr, ServerListing("RM1", True, frozenset(), t(0.5), t(0.6)))) == []
    # its leave, as the other observer writes it, closes the row as rtc; else after 4 s:
    ops = step(tr, ServerListing("RM1", True, frozenset(), t(4.5), t(4.6)))
    assert closes(ops) == [("PA2", t(-20), None, END_RECONCILED, 24600)]


def test_a_row_seen_long_ago_by_another_observer_is_settled_at_once_when_gone() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    row = TrackedSession("r", "RM1", "PA2", "id-PA2", "", "agent", None, {}, t(-90), t(-60))
    tr.handle(StoredOpenSessions("RM1", (row,)))
    step(tr, RoomJoined("r", "RM1", (), t(0)))
    ops = step(tr, ServerListing("RM1", True, frozenset(), t(0.5), t(0.6)))
    assert closes(ops) == [("PA2", t(-60), None, END_RECONCILED, 60600)]


def test_a_room_handed_over_is_forgotten_without_a_write() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    run([RoomJoined("r", "RM1", (agent("PA1"),), t(0))], tr)
    assert tr.handle(RoomHandedOver("RM1", t(5))) == EventChanges()
    assert tr.open_sessions == {} and tr.watched_rooms == {}
    assert tr.unwatched_rooms() == {}
    # the room ending later changes nothing here: its new watcher records that
    assert step(tr, RoomGone("RM1", t(20), listed_at=t(19))) == []


def test_a_listing_that_stays_stale_after_a_fresh_join_ends_the_session() -> None:
    """A cluster node died: its participants stay listed in Redis, but a fresh join of the
    room (now on another node) does not show them. After `stale_listing_s` the session is
    closed, between when it was last seen and then."""
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=100, stale_listing_s=30)
    step(tr, RoomJoined("r", "RM1", (agent("PA1"), user("PU1")), t(0)))
    step(tr, RoomLost("RM1", "", t(5)))  # the observer's connection went with the node
    step(tr, RoomJoined("r", "RM1", (user("PU1"),), t(12)))
    assert (
        closes(step(tr, ServerListing("RM1", True, frozenset({"PA1", "PU1"}), t(12), t(12.1))))
        == []
    )
    assert (
        closes(step(tr, ServerListing("RM1", True, frozenset({"PA1", "PU1"}), t(30), t(30.1))))
        == []
    )
    assert "PA1" in {k.participant_sid for k in tr.suspects}  # still asked about
    got = closes(step(tr, ServerListing("RM1", True, frozenset({"PA1", "PU1"}), t(42), t(42.1))))
    assert got == [("PA1", t(5), None, END_RECONCILED, 37100)]


def test_a_listed_participant_back_in_view_is_not_stale() -> None:
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=100, stale_listing_s=30)
    step(tr, RoomJoined("r", "RM1", (agent("PA1"),), t(0)))
    step(tr, RoomLost("RM1", "", t(5)))
    step(tr, RoomJoined("r", "RM1", (), t(12)))
    step(tr, ParticipantJoined("r", "RM1", agent("PA1"), t(13)))  # it was only slow
    assert closes(step(tr, ServerListing("RM1", True, frozenset({"PA1"}), t(50), t(50.1)))) == []
    assert tr.suspects == {}


def test_the_listing_is_trusted_for_sessions_never_seen_over_rtc() -> None:
    """A session known only from the database or a webhook (a hidden participant, say) is
    not closed because a join does not show it: the server's listing decides."""
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=100, stale_listing_s=30)
    seeded = TrackedSession("r", "RM1", "PA1", "id-PA1", "", "agent", None, {}, t(0), t(0))
    step(tr, StoredOpenSessions("RM1", (seeded,)))
    step(tr, RoomJoined("r", "RM1", (), t(12)))
    assert closes(step(tr, ServerListing("RM1", True, frozenset({"PA1"}), t(50), t(50.1)))) == []
    assert tr.suspects == {}
    assert "PA1" in {k.participant_sid for k in tr.open_sessions}


def room_writes(tr: SessionTracker, events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for ev in events:
        for w in tr.handle(ev).writes:
            if isinstance(w, RoomSeen):
                out.append(("seen", w.metadata, w.created_at, w.agents, w.participants))
            elif isinstance(w, RoomEnded):
                out.append(("ended", w.at, w.reason))
    return out


def test_room_rows_carry_metadata_creation_and_the_most_present() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    got = room_writes(
        tr,
        [
            RoomJoined("r", "RM1", (user("PU1"),), t(1), '{"customer":"acme"}', t(0)),
            ParticipantJoined("r", "RM1", agent("PA1"), t(2)),
            ParticipantJoined("r", "RM1", agent("PA2"), t(3)),
            ParticipantLeft("RM1", "PA2", "CLIENT_INITIATED", t(4)),
            ParticipantJoined("r", "RM1", agent("PA3"), t(5)),  # back to 2 agents: no write
            RoomMetadataChanged("RM1", '{"customer":"globex"}', t(6)),
            RoomClosed("RM1", "ROOM_DELETED", t(9)),
        ],
    )
    assert got == [
        ("seen", '{"customer":"acme"}', t(0), 0, 1),
        ("seen", None, None, 1, 2),
        ("seen", None, None, 2, 3),
        ("seen", '{"customer":"globex"}', None, 2, 3),
        ("ended", t(9), "ROOM_DELETED"),
    ]


def test_a_room_found_gone_ends_as_gone() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    got = room_writes(
        tr,
        [
            RoomJoined("r", "RM1", (agent("PA1"),), t(0)),
            Reconnecting("RM1", t(5)),
            ServerListing("RM1", False, frozenset(), t(8), t(8.1)),
        ],
    )
    assert got[-1] == ("ended", t(8.1), "GONE")


def test_the_same_participant_seen_again_with_a_finer_join_time_is_not_superseded() -> None:
    """A session opened from a webhook (join time in whole seconds) and then seen over rtc
    (milliseconds) is one session: only another participant sid of the identity ends it."""
    tr = SessionTracker(frozenset({"agent"}))
    step(tr, WebhookJoined("r", "RM1", agent("PA1", 10, identity="bot"), t(10.5)))
    ops = step(tr, RoomJoined("r", "RM1", (agent("PA1", 10.25, identity="bot"),), t(11)))
    assert closes(ops) == []
    ops = step(tr, ParticipantJoined("r", "RM1", agent("PA1", 10.25, identity="bot"), t(12)))
    assert closes(ops) == []
    assert [k.participant_sid for k in tr.open_sessions] == ["PA1"]


def test_a_row_listed_again_waits_afresh_when_it_goes_missing_later() -> None:
    tr = SessionTracker(frozenset({"agent"}))
    row = TrackedSession("r", "RM1", "PA2", "id-PA2", "", "agent", None, {}, t(-20), t(-2))
    tr.handle(StoredOpenSessions("RM1", (row,)))
    step(tr, RoomJoined("r", "RM1", (), t(0)))
    assert closes(step(tr, ServerListing("RM1", True, frozenset(), t(0.5), t(0.6)))) == []
    # listed after all (the first listing was wrong, say): no longer a suspect
    assert closes(step(tr, ServerListing("RM1", True, frozenset({"PA2"}), t(3.5), t(3.6)))) == []
    step(tr, Reconnecting("RM1", t(8)))
    step(tr, Reconnected("RM1", (), t(9)))
    # absent again: the 4 s wait starts again, rather than from the first absence
    assert closes(step(tr, ServerListing("RM1", True, frozenset(), t(9.5), t(9.6)))) == []
    ops = step(tr, ServerListing("RM1", True, frozenset(), t(13.5), t(13.7)))
    assert [c[0] for c in closes(ops)] == ["PA2"]
