"""Who an observer is: a participant identity no other process shares, one live run per
OBSERVER_ID on a database, and being put out of a room as an alarm that closes nothing.
No server: pure logic, and the database functions on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from livekit import api

from observer.config import Settings
from observer.core.changes import Close
from observer.core.events import (
    ParticipantLeft,
    RoomJoined,
    RoomLost,
    SeenParticipant,
    ServerListing,
    Tick,
)
from observer.core.tracker import SessionTracker
from observer.daemon import telemetry, webhooks
from observer.daemon.identity import (
    IDENTITY_PREFIX,
    IdHeld,
    hold,
    judge,
    new_run_id,
    participant_identity,
)
from observer.daemon.service import Observer
from observer.daemon.telemetry import Metrics
from observer.db import fleet as fleet_db
from observer.db.store import Store

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAILOVER_S = 10.0  # dead after 5 s without a heartbeat; the fleet beats every 2 s


def t(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def settings(db_url: str = "sqlite://", observer_id: str = "same-host") -> Settings:
    return Settings.from_mapping(
        {
            "LIVEKIT_URL": "ws://127.0.0.1:9",
            "LIVEKIT_API_KEY": "k",
            "LIVEKIT_API_SECRET": "s",
            "OBSERVER_DATABASE_URL": db_url,
            "OBSERVER_ID": observer_id,
            "OBSERVER_FAILOVER_S": str(FAILOVER_S),
        },
        need_livekit=True,
    )


# ---- the participant identity -------------------------------------------------------------


def test_two_runs_with_one_observer_id_join_rooms_as_different_participants() -> None:
    s = settings()
    assert s.livekit is not None
    a = Observer(s, Store("sqlite://"), s.livekit)
    b = Observer(s, Store("sqlite://"), s.livekit)
    try:
        assert a.identity != b.identity
        for obs in (a, b):
            assert obs.identity == participant_identity("same-host", obs.run_id)
            assert obs.identity.startswith(f"{IDENTITY_PREFIX}same-host-")
    finally:
        a.store.close()
        b.store.close()
    assert len({new_run_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("event", ["participant_joined", "participant_left"])
def test_webhooks_about_an_observer_run_are_ignored(event: str) -> None:
    def webhook(identity: str) -> api.WebhookEvent:
        return api.WebhookEvent(
            event=event,
            id="EV_1",
            created_at=1_772_366_400,
            room=api.Room(sid="RM_1", name="r"),
            participant=api.ParticipantInfo(
                sid="PA_1",
                identity=identity,
                kind=api.ParticipantInfo.Kind.STANDARD,
                joined_at_ms=1_772_366_400_000,
            ),
        )

    own = participant_identity("same-host", new_run_id())
    assert webhooks.translate(webhook(own), IDENTITY_PREFIX, agent_attributes=True) == []
    assert len(webhooks.translate(webhook("agent-7"), IDENTITY_PREFIX, agent_attributes=True)) == 1


# ---- one live run per observer id: the rule ---------------------------------------------


def member(run_id: str, beat: float, *, stopping: bool = False) -> fleet_db.Member:
    return fleet_db.Member("obs", "host", 7, t(0), t(beat), stopping, (), run_id)


JUDGE_CASES = [
    ("no row", None, None, 10, "take"),
    ("this run's own row", member("me", 9), None, 10, "take"),
    ("a heartbeat older than the failover half: dead", member("old", 4.9), None, 10, "take"),
    ("a current heartbeat, first seen: watch it", member("old", 8), None, 10, "wait"),
    ("not beating since: still watching", member("old", 8), member("old", 8), 12, "wait"),
    ("not beating for the failover half: dead", member("old", 8), member("old", 8), 13.1, "take"),
    ("it beat again: alive", member("old", 10), member("old", 8), 10.5, "held"),
    (
        "stopping cleanly and beating: wait",
        member("old", 10, stopping=True),
        member("old", 8),
        11,
        "wait",
    ),
    ("another run took it meanwhile", member("new", 11), member("old", 8), 11, "held"),
]


@pytest.mark.parametrize(
    ("row", "first", "now", "want"), [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES]
)
def test_judge(
    row: fleet_db.Member | None, first: fleet_db.Member | None, now: float, want: str
) -> None:
    assert judge(row, run_id="me", first=first, now=t(now), dead_after_s=FAILOVER_S / 2) == want


# ---- one live run per observer id: on the database ----------------------------------------


class VirtualTime:
    """The clock `hold` reads and the sleep it waits with; `during_sleep` plays the others."""

    def __init__(self, during_sleep=lambda _now: None) -> None:  # type: ignore[no-untyped-def]
        self.now = t(0)
        self.slept = 0.0
        self.during_sleep = during_sleep

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += timedelta(seconds=seconds)
        self.during_sleep(self.now)


def beat(store: Store, run_id: str, at: datetime, *, stopping: bool = False) -> None:
    fleet_db.heartbeat(
        store.engine,
        observer_id="obs",
        run_id=run_id,
        host="other-host",
        pid=4242,
        started_at=t(-60),
        stopping=stopping,
        rooms=["room-a"],
        dead_after_s=FAILOVER_S / 2,
        now=at,
    )


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    yield s
    s.close()


def shared(store: Store) -> bool:
    return store.engine.dialect.name == "postgresql"


def test_a_free_id_and_a_dead_runs_id_are_taken_at_once(db_url: str, store: Store) -> None:
    vt = VirtualTime()
    hold(store, settings(db_url, "obs"), "run-1", clock=vt.clock, sleep=vt.sleep)
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "run-1" and row.heartbeat_at == t(0)

    fleet_db.leave(store.engine, "obs", "run-1")
    beat(store, "run-0", t(-5.1))  # a run that died 5.1 s ago
    hold(store, settings(db_url, "obs"), "run-2", clock=vt.clock, sleep=vt.sleep)
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "run-2" and vt.slept == 0


def test_a_live_run_keeps_its_id(db_url: str, store: Store) -> None:
    """Another run beats every FAILOVER_S / 5: a new run with its id refuses to start (on
    SQLite, where `observer run` holds a lock on the file, no other run can be alive)."""
    beat(store, "live", t(-1))
    vt = VirtualTime(lambda now: beat(store, "live", now) if vt.slept >= 2 else None)
    if not shared(store):
        hold(store, settings(db_url, "obs"), "me", clock=vt.clock, sleep=vt.sleep)
        row = fleet_db.holder(store.engine, "obs")
        assert row is not None and row.run_id == "me"
        return
    with pytest.raises(IdHeld) as err:
        hold(store, settings(db_url, "obs"), "me", clock=vt.clock, sleep=vt.sleep)
    assert "'obs' is held by another live observer (host other-host, pid 4242)" in str(err.value)
    assert "\n" not in str(err.value)
    assert vt.slept <= FAILOVER_S / 5 + FAILOVER_S / 20
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "live"  # untouched


def test_a_run_killed_a_moment_ago_is_replaced_once_its_heartbeat_is_stale(
    db_url: str, store: Store
) -> None:
    beat(store, "killed", t(-1))  # SIGKILL right after this beat; restarted 1 s later
    vt = VirtualTime()
    hold(store, settings(db_url, "obs"), "restarted", clock=vt.clock, sleep=vt.sleep)
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "restarted"
    if shared(store):
        assert FAILOVER_S / 2 - 1 < vt.slept <= FAILOVER_S / 2 - 1 + FAILOVER_S / 20
    else:
        assert vt.slept == 0


def test_a_run_stopping_cleanly_is_waited_for(db_url: str, store: Store) -> None:
    """A clean stop beats as `stopping` while it hands its rooms over, then deletes its row."""
    beat(store, "stopping", t(-1), stopping=True)

    def others(now: datetime) -> None:
        if now < t(4):
            beat(store, "stopping", now, stopping=True)
        else:
            fleet_db.leave(store.engine, "obs", "stopping")

    vt = VirtualTime(others)
    hold(store, settings(db_url, "obs"), "next", clock=vt.clock, sleep=vt.sleep)
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "next"
    assert vt.slept <= (4.5 if shared(store) else 0)


def test_taking_an_id_is_compare_and_set(store: Store) -> None:
    common = {"observer_id": "obs", "host": "h", "pid": 1, "now": t(0)}
    assert fleet_db.take(store.engine, run_id="a", replacing=None, **common)
    assert not fleet_db.take(store.engine, run_id="b", replacing=None, **common)  # not absent
    assert not fleet_db.take(store.engine, run_id="b", replacing="x", **common)  # not x's
    assert fleet_db.take(store.engine, run_id="b", replacing="a", **common)
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "b"


def test_a_run_whose_id_was_taken_over_learns_it_at_its_heartbeat(store: Store) -> None:
    """Its heartbeat was stale (a frozen process, a long database outage) and another run
    took the id over: its heartbeat neither flips the row back nor deletes it at its stop."""
    beat(store, "first", t(0))
    common = {"observer_id": "obs", "host": "h", "pid": 2, "now": t(6)}
    assert fleet_db.take(store.engine, run_id="second", replacing="first", **common)
    with pytest.raises(fleet_db.IdTaken):
        beat(store, "first", t(7))
    fleet_db.leave(store.engine, "obs", "first")
    row = fleet_db.holder(store.engine, "obs")
    assert row is not None and row.run_id == "second" and row.pid == 2


# ---- put out of a room: an alarm, never the agents' leave --------------------------------


def agent(sid: str, joined: float = 0.0) -> SeenParticipant:
    return SeenParticipant(sid, f"agent-{sid}", "", "agent", {}, t(joined))


def user(sid: str) -> SeenParticipant:
    return SeenParticipant(sid, f"user-{sid}", "", "standard", {}, t(0))


@pytest.mark.parametrize("reason", ["DUPLICATE_IDENTITY", "PARTICIPANT_REMOVED"])
def test_being_removed_from_a_room_closes_nothing(reason: str) -> None:
    """Removed, out of the room for a long while (ticks past every heartbeat and stuck
    limit), joined again with the agents still there: no session is closed or shortened,
    and each later leave is the agent's own."""
    tr = SessionTracker(frozenset({"agent"}), last_seen_refresh_s=1, stuck_after_s=5)
    writes = []
    for ev in [
        RoomJoined("r", "RM1", (agent("PA1"), agent("PA2"), user("PU1")), t(0)),
        Tick(t(1)),
        RoomLost("RM1", reason, t(2)),
        *(Tick(t(2 + s)) for s in range(1, 120)),
        RoomJoined("r", "RM1", (agent("PA1"), agent("PA2"), user("PU1")), t(125)),
        ServerListing("RM1", True, frozenset({"PA1", "PA2", "PU1"}), t(125), t(125.1)),
        Tick(t(126)),
    ]:
        writes += tr.handle(ev).writes
    assert [w for w in writes if isinstance(w, Close)] == []
    assert {k.participant_sid for k in tr.open_sessions} == {"PA1", "PA2"}

    out = tr.handle(ParticipantLeft("RM1", "PA1", "CLIENT_INITIATED", t(130.25))).writes
    (close,) = [w for w in out if isinstance(w, Close)]
    assert (close.key.participant_sid, close.left_at, close.reason, close.end_source) == (
        "PA1",
        t(130.25),
        "CLIENT_INITIATED",
        "rtc",
    )
    assert close.uncertainty_ms is None
    assert close.session.joined_at == t(0)


def test_being_put_out_of_a_room_is_an_error_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    names = {"RM1": "support-42"}
    with caplog.at_level(logging.INFO, logger="observer"):
        telemetry.record_room_lost(m, RoomLost("RM1", "DUPLICATE_IDENTITY", t(0)), lambda: names)
        telemetry.record_room_lost(m, RoomLost("RM1", "DUPLICATE_IDENTITY", t(1)), lambda: names)
        telemetry.record_room_lost(m, RoomLost("RM1", "PARTICIPANT_REMOVED", t(2)), lambda: names)
        for own in ("OBSERVER_STOPPED", "OBSERVER_PROCESS_EXITED", "OBSERVER_OVERFLOW"):
            telemetry.record_room_lost(m, RoomLost("RM1", own, t(3)), lambda: names)
    name = "observer_rooms_lost_total"
    assert m.value(name, {"reason": "DUPLICATE_IDENTITY"}) == 2
    assert m.value(name, {"reason": "PARTICIPANT_REMOVED"}) == 1
    assert m.value(name, {"reason": "OBSERVER_STOPPED"}) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [(r.room, r.reason) for r in errors] == [  # type: ignore[attr-defined]
        ("support-42", "DUPLICATE_IDENTITY"),
        ("support-42", "DUPLICATE_IDENTITY"),
        ("support-42", "PARTICIPANT_REMOVED"),
    ]
