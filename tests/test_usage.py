"""`observer usage`: standing time per group, clipped to the window and to day/month buckets.

The same hand-made rows and the same expected numbers on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from livekit_server import free_tcp_port

from observer.cli import main
from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db.store import Store
from observer.reports.usage import bucket_edges

pytestmark = pytest.mark.unit

MAR1 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = "2026-03-02T12:00:00Z"
ALPHA_A1: dict[str, Any] = dict(agent="alpha", identity="a1", room="r1")
ALPHA_A2: dict[str, Any] = dict(agent="alpha", identity="a2", room="r2")


def at(day: int, h: int = 0, m: int = 0, s: int = 0, ms: int = 0, us: int = 0) -> datetime:
    """A time on `day` of March 2026 (0 is 28 February, -1 is 27 February)."""
    return MAR1 + timedelta(
        days=day - 1, hours=h, minutes=m, seconds=s, milliseconds=ms, microseconds=us
    )


def add(
    store: Store,
    sid: str,
    joined: datetime,
    left: datetime | None,
    *,
    agent: str | None,
    identity: str,
    room: str,
    kind: str = "agent",
) -> None:
    s = TrackedSession(
        room_name=room,
        room_sid=f"RM_{room}",
        participant_sid=sid,
        identity=identity,
        name="",
        kind=kind,
        agent_name=agent,
        attributes={},
        joined_at=joined,
        last_seen_at=joined,
    )
    ops: list[Any] = [Open(s)]
    if left is not None:
        ops.append(Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s))
    store.apply(ops, "obs")


@pytest.fixture
def usage_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database with hand-made sessions around 1-2 March 2026 (UTC); `main` reads it."""
    store = Store(db_url)
    try:
        # alpha: three 20 s sessions on 1 March (3 billable minutes, 1 minute of time)
        for i, minute in enumerate((0, 1, 2)):
            add(store, f"A{i}", at(1, 10, minute), at(1, 10, minute, 20), **ALPHA_A1)
        # alpha: across midnight 1->2 March: 29.750 s before, 70.500999 s after
        add(store, "B", at(1, 23, 59, 30, 250), at(2, 0, 1, 10, 500, 999), **ALPHA_A2)
        # beta: from 28 February 23:00 to 1 March 00:00:45 (45 s inside March)
        add(store, "C", at(0, 23), at(1, 0, 0, 45), agent="beta", identity="b1", room="r1")
        # beta: open since 2 March 11:58:00.500 (119.5 s up to NOW)
        add(store, "D", at(2, 11, 58, 0, 500), None, agent="beta", identity="b2", room="r3")
        # no agent name: 400 ms on 2 March
        add(store, "E", at(2, 6), at(2, 6, 0, 0, 400), agent=None, identity="x1", room="r2")
        # gamma: open since 27 February 12:00
        add(store, "H", at(-1, 12), None, agent="gamma", identity="g1", room="r4")
        # alpha on 3 March, outside the 1-2 March window
        add(store, "G", at(3, 1), at(3, 1, 1), **ALPHA_A1)
        # not an agent: 10 minutes on 1 March
        add(
            store,
            "F",
            at(1, 9),
            at(1, 9, 10),
            agent=None,
            identity="u1",
            room="r1",
            kind="standard",
        )
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return db_url


DAY_MS = 86_400_000
TWO_DAYS = f"--from 2026-03-01 --to 2026-03-03 --now {NOW}"


def usage_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["usage", *args, "--format", "json"]) == 0
    out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return out


def rows(result: list[dict[str, Any]], *keys: str) -> dict[Any, tuple[int, int, int]]:
    """{group value(s): (sessions, duration_ms, billable_minutes)}"""
    out = {}
    for r in result:
        k = tuple(r[x] for x in keys)
        out[k[0] if len(k) == 1 else k] = (r["sessions"], r["duration_ms"], r["billable_minutes"])
    return out


# (arguments, group keys, expected {group: (sessions, ms, billable minutes)})
CASES: list[tuple[str, tuple[str, ...], dict[Any, tuple[int, int, int]]]] = [
    (
        TWO_DAYS,
        (),
        # A x3, B, C, D, E, H
        {
            (): (
                8,
                60_000 + 100_250 + 45_000 + 119_500 + 400 + 36 * 3_600_000,
                3 + 2 + 1 + 2 + 1 + 2160,
            )
        },
    ),
    (
        f"{TWO_DAYS} --by agent",
        ("agent",),
        {
            None: (1, 400, 1),
            "alpha": (4, 160_250, 5),  # each session rounded up: 1 + 1 + 1 + 2
            "beta": (2, 164_500, 3),
            "gamma": (1, 36 * 3_600_000, 2160),
        },
    ),
    (
        f"{TWO_DAYS} --by agent --by day",
        ("agent", "day"),
        {
            (None, "2026-03-02"): (1, 400, 1),
            ("alpha", "2026-03-01"): (4, 89_750, 4),  # B's 29.75 s before midnight: 1 minute
            ("alpha", "2026-03-02"): (1, 70_500, 2),  # and its 70.5 s after: 2 minutes
            ("beta", "2026-03-01"): (1, 45_000, 1),
            ("beta", "2026-03-02"): (1, 119_500, 2),
            ("gamma", "2026-03-01"): (1, DAY_MS, 1440),
            ("gamma", "2026-03-02"): (1, DAY_MS // 2, 720),
        },
    ),
    (
        f"{TWO_DAYS} --by day,agent --rounding minute",
        ("day", "agent"),
        {
            ("2026-03-01", "alpha"): (4, 240_000, 4),
            ("2026-03-01", "beta"): (1, 60_000, 1),
            ("2026-03-01", "gamma"): (1, DAY_MS, 1440),
            ("2026-03-02", None): (1, 60_000, 1),
            ("2026-03-02", "alpha"): (1, 120_000, 2),
            ("2026-03-02", "beta"): (1, 120_000, 2),
            ("2026-03-02", "gamma"): (1, DAY_MS // 2, 720),
        },
    ),
    (
        f"{TWO_DAYS} --by agent --rounding second",
        ("agent",),
        {
            None: (1, 1000, 1),
            "alpha": (4, 60_000 + 101_000, 5),
            "beta": (2, 45_000 + 120_000, 3),
            "gamma": (1, 36 * 3_600_000, 2160),
        },
    ),
    (
        f"{TWO_DAYS} --by agent --rounding minute",
        ("agent",),
        {
            None: (1, 60_000, 1),
            "alpha": (4, 300_000, 5),
            "beta": (2, 180_000, 3),
            "gamma": (1, 36 * 3_600_000, 2160),
        },
    ),
    (
        f"{TWO_DAYS} --by agent --exclude-open",
        ("agent",),
        {None: (1, 400, 1), "alpha": (4, 160_250, 5), "beta": (1, 45_000, 1)},
    ),
    (
        f"{TWO_DAYS} --by room",
        ("room",),
        {
            "r1": (4, 105_000, 4),
            "r2": (2, 100_650, 3),
            "r3": (1, 119_500, 2),
            "r4": (1, 36 * 3_600_000, 2160),
        },
    ),
    (
        f"{TWO_DAYS} --by room --kind all --exclude-open",
        ("room",),
        {"r1": (5, 705_000, 14), "r2": (2, 100_650, 3)},
    ),
    (
        f"{TWO_DAYS} --by identity --by room",
        ("identity", "room"),
        {
            ("a1", "r1"): (3, 60_000, 3),
            ("a2", "r2"): (1, 100_250, 2),
            ("b1", "r1"): (1, 45_000, 1),
            ("b2", "r3"): (1, 119_500, 2),
            ("g1", "r4"): (1, 36 * 3_600_000, 2160),
            ("x1", "r2"): (1, 400, 1),
        },
    ),
    (
        # a month window split by month: C and H count in February and in March; G counts
        f"--from 2026-02-01 --to 2026-04-01 --now {NOW} --by agent,month",
        ("agent", "month"),
        {
            (None, "2026-03"): (1, 400, 1),
            ("alpha", "2026-03"): (5, 220_250, 6),
            ("beta", "2026-02"): (1, 3_600_000, 60),
            ("beta", "2026-03"): (2, 164_500, 3),
            ("gamma", "2026-02"): (1, 36 * 3_600_000, 2160),
            ("gamma", "2026-03"): (1, 36 * 3_600_000, 2160),
        },
    ),
    (
        # five day buckets (evenly spaced), an open session across all of them
        f"--from 2026-02-26 --to 2026-03-03 --now {NOW} --by agent,day",
        ("agent", "day"),
        {
            (None, "2026-03-02"): (1, 400, 1),
            ("alpha", "2026-03-01"): (4, 89_750, 4),
            ("alpha", "2026-03-02"): (1, 70_500, 2),
            ("beta", "2026-02-28"): (1, 3_600_000, 60),
            ("beta", "2026-03-01"): (1, 45_000, 1),
            ("beta", "2026-03-02"): (1, 119_500, 2),
            ("gamma", "2026-02-27"): (1, DAY_MS // 2, 720),
            ("gamma", "2026-02-28"): (1, DAY_MS, 1440),
            ("gamma", "2026-03-01"): (1, DAY_MS, 1440),
            ("gamma", "2026-03-02"): (1, DAY_MS // 2, 720),
        },
    ),
    (
        # a window that starts and ends inside days: the first 20 s session and C end before
        # it starts, B is cut at its end
        f"--from 2026-03-01T10:00:30 --to 2026-03-02T00:00:30 --now {NOW} --by agent --by day",
        ("agent", "day"),
        {
            ("alpha", "2026-03-01"): (3, 40_000 + 29_750, 3),
            ("alpha", "2026-03-02"): (1, 30_000, 1),
            ("gamma", "2026-03-01"): (1, 50_370_000, 840),  # 13h59m30s: 839.5 minutes
            ("gamma", "2026-03-02"): (1, 30_000, 1),
        },
    ),
    (
        # now after the window: open sessions count up to the window's end; D started later
        "--from 2026-03-01 --to 2026-03-02 --now 2026-03-05 --by agent",
        ("agent",),
        {"alpha": (4, 89_750, 4), "beta": (1, 45_000, 1), "gamma": (1, DAY_MS, 1440)},
    ),
    (
        # relative times count back from --now
        f"--from 36h --to 0h --now {NOW} --by agent --exclude-open",
        ("agent",),
        {None: (1, 400, 1), "alpha": (4, 160_250, 5), "beta": (1, 45_000, 1)},
    ),
]


def test_usage_numbers(usage_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args, keys, expected in CASES:
        got = rows(usage_json(capsys, *args.split()), *keys)
        assert got == expected, f"observer usage {args}"


def test_minute_rounding_differs_from_summing_first(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--from", "2026-03-01T10:00", "--to", "2026-03-01T11:00", "--exclude-open"]
    exact = usage_json(capsys, *args)
    assert exact == [{"sessions": 3, "duration_ms": 60_000, "billable_minutes": 3}]
    rounded = usage_json(capsys, *args, "--rounding", "minute")
    assert rounded == [{"sessions": 3, "duration_ms": 180_000, "billable_minutes": 3}]


def test_csv_and_table(usage_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert (
        main(["usage", *TWO_DAYS.split(), "--by", "agent", "--by", "day", "--format", "csv"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "agent,day,sessions,duration_ms,billable_minutes"
    assert lines[1] == ",2026-03-02,1,400,1"  # no agent name first
    assert "alpha,2026-03-01,4,89750,4" in lines

    assert main(["usage", *TWO_DAYS.split(), "--by", "agent"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["agent", "sessions", "time", "billable_min"]
    assert out[2].split() == ["alpha", "4", "2m40s", "5"]
    assert out[5].split() == ["total", "8", "36h05m25s", "2169"]
    assert "rounding none" in out[-1] and "2026-03-02T12:00:00Z" in out[-1]


def test_empty_window(usage_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--from", "2025-01-01", "--to", "2025-02-01"]
    assert usage_json(capsys, *args) == [{"sessions": 0, "duration_ms": 0, "billable_minutes": 0}]
    assert usage_json(capsys, *args, "--by", "agent") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-13-01"], "not an ISO 8601 time"),
        (["--from", "2026-03-02", "--to", "2026-03-01"], "is not before"),
        (["--from", "2026-03-01", "--to", "2026-03-01"], "is not before"),
        (["--from", "2026-03-01", "--by", "week"], "unknown --by 'week'"),
        (["--from", "2026-03-01", "--by", "agent,hour"], "unknown --by 'hour'"),
        (["--from", "2026-03-01", "--by", "day", "--by", "month"], "cannot be combined"),
        (["--from", "2026-03-01", "--rounding", "hour"], "unknown --rounding"),
        (["--from", "2026-03-01", "--kind", "robot"], "unknown --kind"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert main(["usage", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "none.db").exists()  # bad input is caught before the database


def test_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", f"postgresql://u:pw@127.0.0.1:{free_tcp_port()}/x")
    assert main(["usage", "--from", "7d", "--by", "agent"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "database error" in err
    assert "pw@" not in err


def test_bucket_edges() -> None:
    d = MAR1
    assert bucket_edges(d, d + timedelta(days=2), None) == (d, d + timedelta(days=2))
    assert bucket_edges(d + timedelta(hours=5), d + timedelta(days=2, hours=1), "day") == (
        d + timedelta(hours=5),
        d + timedelta(days=1),
        d + timedelta(days=2),
        d + timedelta(days=2, hours=1),
    )
    dec = datetime(2025, 12, 15, tzinfo=UTC)
    assert bucket_edges(dec, datetime(2026, 2, 2, tzinfo=UTC), "month") == (
        dec,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 2, 2, tzinfo=UTC),
    )
