"""What the daemon remembers of rooms and participants that are gone stays bounded over a
run of months: ended rooms are forgotten once the server has not listed them for ten
minutes (and never more than a cap are kept), the rooms' bookkeeping goes with the rooms,
and the tracker's own marks (listings asked, gaps handled, a handed-over room's sessions)
go when they can decide nothing more. Virtual time; no server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from observer.config import LiveKitSettings, Settings
from observer.core import gaps
from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import Open
from observer.core.discovery import ListedRoom
from observer.core.events import (
    Blind,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomHandedOver,
    RoomJoined,
    SeenParticipant,
    ServerListing,
    Tick,
    UsageReported,
    WebhookJoined,
)
from observer.core.recent import Recent
from observer.core.tracker import SessionTracker
from observer.daemon import ended_rooms, rooms, webhooks
from observer.daemon.ended_rooms import EndedRooms
from observer.daemon.fleet import Fleet
from observer.daemon.telemetry import Metrics
from observer.db.fleet import Member
from observer.livekit_api import Client

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_ended_room_is_forgotten_ten_minutes_after_its_last_listing() -> None:
    assert (ended_rooms.FORGET_AFTER_S, ended_rooms.MAX_ENDED) == (600.0, 100_000)
    clock = Clock()
    ended = EndedRooms(clock=clock)
    ended.add("RM_a")
    ended.add("RM_b")
    for _ in range(9):  # RM_b stays listed (a listing taken before it ended, a dead node)
        clock.now += 60
        ended.listed({"RM_b", "RM_live"})
    assert {"RM_a", "RM_b"} <= ended and "RM_live" not in ended
    clock.now += 60  # RM_a unlisted for 600 s
    ended.listed({"RM_b"})
    assert "RM_a" not in ended and "RM_b" in ended
    clock.now += 599
    ended.listed(set())
    assert "RM_b" in ended
    clock.now += 1
    ended.listed(set())
    assert len(ended) == 0


def test_ended_rooms_are_capped_longest_unlisted_first() -> None:
    clock = Clock()
    ended = EndedRooms(clock=clock, max_rooms=1000)
    for i in range(5000):
        clock.now += 0.01
        ended.add(f"RM_{i}")
        if i == 100:
            ended.listed({"RM_0"})  # listed again: kept longer than those after it
    assert len(ended) == 1000
    assert "RM_4999" in ended and "RM_4000" in ended and "RM_3999" not in ended
    assert "RM_0" not in ended  # listed at 100, long before the last thousand


class NoApi(Client):
    def __init__(self) -> None:
        super().__init__(LiveKitSettings("ws://a.invalid:7880", "key", "s" * 32), 1)


async def test_the_rooms_bookkeeping_of_a_month_of_rooms_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(rooms, "EndedRooms", lambda: EndedRooms(clock=clock))
    settings = Settings.from_mapping(
        {
            "LIVEKIT_URL": "ws://a.invalid:7880",
            "LIVEKIT_API_KEY": "key",
            "LIVEKIT_API_SECRET": "s" * 32,
            "OBSERVER_HTTP_ADDR": "off",
            "OBSERVER_ROOM_PATTERN": "watched-*",  # the listed rooms below are not joined
        },
        need_livekit=True,
    )
    events: list[Event] = []
    client = NoApi()
    r = rooms.Rooms(
        settings,
        settings.require_livekit(),
        client,
        "observer",
        emit=events.append,
        spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name),
        unwatched_with_sessions=dict,
    )
    most = 0
    # a month of rooms, 30 a minute, each listed for a few minutes, then ended and gone
    for minute in range(30 * 24 * 60 // 10):  # (a tenth of the month keeps the test short)
        clock.now += 60
        new = [f"RM_{minute}_{i}" for i in range(30)]
        for sid in new:
            # the room seen by a join that failed, and the node it went through
            r._first_seen[sid] = clock.now
            r._joined_via[sid] = "ws://a.invalid:7880"
        listed = [
            ListedRoom(f"RM_{m}_{i}", f"room-{m}-{i}")
            for m in range(minute - 3, minute + 1)
            for i in range(30)
        ]
        for sid in [f"RM_{minute - 3}_{i}" for i in range(30)]:
            r.emit(RoomClosed(sid, "ROOM_DELETED", T0))
        r.poll_once(listed, T0)
        most = max(most, len(r.ended), len(r._first_seen), len(r._joined_via))
    await client.aclose()
    # ended: listed for up to 1 minute more, then 10 minutes remembered
    assert len(r.ended) <= 30 * 12
    assert len(r._first_seen) <= 30 * 4 and not r._joined_via
    assert most <= 30 * 12
    assert not r.unreachable and not r.watchers  # nothing joined
    assert events and all(isinstance(e, RoomClosed) for e in events)


def agent(sid: str, at: datetime) -> SeenParticipant:
    return SeenParticipant(sid, f"agent-{sid}", "", "agent", {"lk.agent.state": "idle"}, at)


def test_the_tracker_s_bookkeeping_of_rooms_that_come_and_go_stays_bounded() -> None:
    tracker = SessionTracker(frozenset({"agent"}))
    book = tracker._s
    at = T0
    most_asked = most_gaps = most_closed = 0
    for n in range(3000):  # a room a minute for two days
        room = f"RM_{n}"
        at += timedelta(seconds=60)
        tracker.handle(RoomJoined(f"room-{n}", room, (agent(f"PA_{n}", at),), at))
        # a leave without a reason: a suspect, and the server's listing asked for
        tracker.handle(ParticipantLeft(room, f"PA_{n}", "", at + timedelta(seconds=1)))
        tracker.handle(Blind(at, at + timedelta(seconds=2), frozenset({room})))
        for s in range(3, 10):
            tracker.handle(Tick(at + timedelta(seconds=s)))
        if n % 2:
            # the listing never answered: the room was handed to another observer
            tracker.handle(RoomHandedOver(room, at + timedelta(seconds=10)))
        else:
            later = at + timedelta(seconds=10)
            tracker.handle(ServerListing(room, True, frozenset(), later, later))
            tracker.handle(RoomClosed(room, "ROOM_DELETED", later))
        # a room process's gap reported after its room was gone
        tracker.handle(
            Blind(at + timedelta(seconds=5), at + timedelta(seconds=11), frozenset({room}))
        )
        if n % 100 == 0:
            tracker.handle(Blind(at, at + timedelta(seconds=1)))  # the whole process paused
        most_asked = max(most_asked, len(tracker._listing_asked))
        most_gaps = max(most_gaps, len(tracker._gaps))
        most_closed = max(most_closed, len(book.recently_closed))
    tracker.handle(Tick(at + timedelta(hours=1)))
    tracker.handle(Tick(at + timedelta(hours=2)))
    assert most_asked <= 2
    # a gone room's mark lasts an hour: at a room a minute, an hour of rooms at most
    assert most_gaps <= gaps.UNWATCHED_MARK_S / 60 + 2
    assert len(tracker._listing_asked) == 0 and len(tracker._gaps) <= 1
    assert not tracker.open_sessions and not tracker.suspects and tracker.watched_count == 0
    for kept in (
        book.suspect,
        book.witness,
        book.doubted,
        book.in_view,
        book.witnessed,
        book.seen_live,
        book.evidence,
        book.absent_at_join,
        book.absent_listed,
        book.replaced_leaves,
        book.superseded_by,
    ):
        assert not kept, kept
    assert len(book.timelines) == 0
    # a session a minute: the keys of one to two hours of closed sessions, then none
    assert 60 <= most_closed <= 122
    assert len(book.recently_closed) == 0


def test_a_key_is_remembered_an_hour_at_least_and_two_at_most() -> None:
    r = Recent[str, int](timedelta(hours=1), 5)
    r.age(T0)
    r.add("a", 1)
    r.age(T0 + timedelta(minutes=59))
    assert "a" in r and r.get("a") == 1
    r.age(T0 + timedelta(minutes=60))  # a generation begins; "a" is in the old one
    r.add("b", 2)
    r.age(T0 + timedelta(minutes=119))
    assert r.get("a") == 1 and r.get("b") == 2
    r.age(T0 + timedelta(minutes=120))
    assert "a" not in r and "b" in r and len(r) == 1
    r.add("x", 3)
    r.age(T0 + timedelta(minutes=300))  # no clock for hours: "x" is kept one more period
    assert "b" not in r and "x" in r
    r.age(T0 + timedelta(minutes=359))
    assert "x" in r
    r.age(T0 + timedelta(minutes=360))
    assert len(r) == 0
    for k in "cdefgh":
        r.add(k, 0)
    assert len(r) == 5 and "c" not in r and "h" in r  # the cap: the oldest go first
    r.age(T0 + timedelta(minutes=420))
    r.add("i", 0)
    r.add("j", 0)
    assert (
        len(r) == 5
        and "d" not in r
        and "e" not in r
        and {"f", "g", "h", "i", "j"} <= {k for k in "cdefghij" if k in r}
    )
    r.add("f", 6)  # moved to the new generation
    r.age(T0 + timedelta(minutes=480))
    assert r.get("f") == 6 and r.get("g") is None
    r.discard("f")
    assert "f" not in r


def test_closed_sessions_are_remembered_by_the_hour_not_by_a_cap() -> None:
    """Two sessions a second, each reporting usage, closing for six hours: the tracker
    remembers the keys (and the usage totals written) of two hours of them at most, and a
    late sighting of a session closed 59 minutes before, by webhook or a room's snapshot,
    does not open it again."""
    tracker = SessionTracker(frozenset({"agent"}))
    at = T0
    room = "RM_busy"
    tracker.handle(RoomJoined("busy", room, (), at))
    most = most_usage = 0
    for n in range(6 * 3600 * 2):
        at += timedelta(seconds=0.5)
        p = agent(f"PA_{n}", at)
        tracker.handle(ParticipantJoined("busy", room, p, at))
        usage = ModelUsage("llm", "openai", "gpt-x", input_tokens=n)
        tracker.handle(
            UsageReported(UsageReport(room, p.sid, p.identity, at, at, "room", (usage,)))
        )
        tracker.handle(ParticipantLeft(room, p.sid, "CLIENT_INITIATED", at))
        if n % 2:
            tracker.handle(Tick(at))
        most = max(most, len(tracker._s.recently_closed))
        most_usage = max(most_usage, len(tracker._usage._written))
    assert 3600 * 2 <= most <= 2 * 3600 * 2 + 2
    assert 3600 * 2 <= most_usage <= 2 * 3600 * 2 + 2  # the totals last written, likewise
    assert not tracker.open_sessions
    closed_lately = agent(f"PA_{6 * 3600 * 2 - 59 * 60 * 2}", T0)
    late = at + timedelta(seconds=1)
    for ev in (
        WebhookJoined("busy", room, closed_lately, late),
        ParticipantJoined("busy", room, closed_lately, late),
    ):
        assert not [w for w in tracker.handle(ev).writes if isinstance(w, Open)]
    assert not tracker.open_sessions


def test_webhook_ids_are_remembered_for_minutes_not_by_a_cap() -> None:
    """Eight webhook events a second for three hours: the ids of ten to twenty minutes of
    them are kept, a redelivery within LiveKit's five minutes of retrying is answered
    `duplicate` without the database, and an id forgotten is new again (for the database to
    decide); an event not kept is forgotten at once."""
    seen = webhooks.SeenIds()
    at = T0
    most = 0
    for n in range(3 * 3600 * 8):
        at += timedelta(seconds=0.125)
        assert seen.first(f"EV_{n}", at)
        if n >= 5 * 60 * 8:
            assert not seen.first(f"EV_{n - 5 * 60 * 8}", at)  # redelivered 5 minutes on
        most = max(most, len(seen))
    assert 10 * 60 * 8 <= most <= 20 * 60 * 8 + 1
    assert seen.first("EV_0", at)  # three hours on: the database decides
    seen.forget("EV_0")
    assert seen.first("EV_0", at)


class Heartbeats:
    """A store whose heartbeat answers with the live observers it is given."""

    def __init__(self) -> None:
        self.live: list[Member] = []
        self.heartbeat = object()

    async def run(self, fn: object, **_: object) -> list[Member]:
        assert fn is self.heartbeat
        return self.live


async def test_observers_that_died_leave_no_series_behind() -> None:
    """A fleet whose observers come and go for months (a pod's name each) shows the rooms of
    the live ones only: a dead observer's series goes with it, not kept at its last value."""
    settings = Settings.from_mapping(
        {"OBSERVER_ID": "obs-0", "OBSERVER_HTTP_ADDR": "off"}, need_livekit=False
    )
    metrics = Metrics()
    store = Heartbeats()
    fleet = Fleet(
        settings,
        store,  # type: ignore[arg-type]
        metrics,
        run_id="run",
        rooms_inside=lambda: ["a"],
        on_change=lambda: None,
        on_id_taken=lambda: None,
    )

    def member(observer_id: str, rooms: int) -> Member:
        inside = tuple(f"room-{i}" for i in range(rooms))
        return Member(observer_id, "host", 1, T0, T0, False, inside, "run")

    def shown() -> dict[str, float]:
        return {
            s.labels["observer"]: s.value
            for metric in metrics.registry.collect()
            if metric.name == "observer_fleet_rooms_per_observer"
            for s in metric.samples
        }

    for n in range(1, 1001):  # a thousand pods, three alive at a time
        store.live = [member("obs-0", 5), member(f"pod-{n}", n % 7), member(f"pod-{n + 1}", 2)]
        await fleet.beat()
        assert shown() == {"obs-0": 5.0, f"pod-{n}": float(n % 7), f"pod-{n + 1}": 2.0}
    store.live = [member("obs-0", 9)]
    await fleet.beat()
    assert shown() == {"obs-0": 9.0}
