"""`observer sessions`: every filter and every format, through the command line."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from observer.cli import main
from observer.core.changes import Close, Open, RoomSeen
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db.store import Store
from observer.reports.sessions import COLUMNS

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 23, 59, 30, 123000, tzinfo=UTC)
NOW = datetime.now(UTC).replace(microsecond=0)


def session(
    sid: str, room: str, identity: str, kind: str, agent: str | None, joined: datetime
) -> TrackedSession:
    return TrackedSession(
        room_name=room,
        room_sid=f"RM_{room}",
        participant_sid=sid,
        identity=identity,
        name=f"name-{sid}",
        kind=kind,
        agent_name=agent,
        attributes={"lk.agent_name": agent} if agent else {},
        joined_at=joined,
        last_seen_at=joined,
    )


@pytest.fixture
def sessions_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    s1 = session("PA_1", "r1", "a1", "agent", "alpha", T0)
    s2 = session("PA_2", "r2", "a2", "agent", "beta", T0 + timedelta(days=1))
    s3 = session("PA_3", "r1", "u1", "standard", None, T0 + timedelta(hours=2))
    s4 = session("PA_4", "r3", "a4", "agent", "alpha", NOW - timedelta(hours=2))

    def close(s: TrackedSession, left: datetime) -> Close:
        return Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)

    store = Store(db_url)
    try:
        store.apply(
            [
                Open(s1),
                Open(s2),
                Open(s3),
                Open(s4),
                close(s1, T0 + timedelta(seconds=75, milliseconds=250)),
                close(s3, T0 + timedelta(hours=2, seconds=3661)),
                close(s4, NOW - timedelta(hours=1)),
            ],
            "obs-1",
        )
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return db_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["sessions", *args]) == 0
    return capsys.readouterr().out


def sids(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    rows: list[dict[str, Any]] = json.loads(run(capsys, *args, "--format", "json"))
    return [r["participant_sid"] for r in rows]


def iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def test_filters(sessions_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    # newest first
    assert sids(capsys) == ["PA_4", "PA_2", "PA_3", "PA_1"]
    assert sids(capsys, "--room", "r1") == ["PA_3", "PA_1"]
    assert sids(capsys, "--identity", "a2") == ["PA_2"]
    assert sids(capsys, "--agent-name", "alpha") == ["PA_4", "PA_1"]
    assert sids(capsys, "--kind", "standard") == ["PA_3"]
    assert sids(capsys, "--open") == ["PA_2"]
    assert sids(capsys, "--closed") == ["PA_4", "PA_3", "PA_1"]
    assert sids(capsys, "--limit", "2") == ["PA_4", "PA_2"]
    assert sids(capsys, "--room", "r1", "--closed", "--kind", "agent") == ["PA_1"]
    # --since: still open, or left at or after it; --until: joined before it
    assert sids(capsys, "--since", iso(T0 + timedelta(hours=1))) == ["PA_4", "PA_2", "PA_3"]
    assert sids(capsys, "--since", "2026-03-02T00:01") == ["PA_4", "PA_2", "PA_3"]
    assert sids(capsys, "--until", iso(T0 + timedelta(hours=1))) == ["PA_1"]
    assert sids(capsys, "--until", "2026-03-02T00:00:00Z") == ["PA_1"]
    both = ["--since", "2026-03-02T01:00:00+01:00", "--until", "2026-03-02T03:00:00+01:00"]
    assert sids(capsys, *both) == ["PA_3", "PA_1"]  # 00:00 to 02:00 UTC
    # relative times
    assert sids(capsys, "--since", "90m") == ["PA_4", "PA_2"]
    assert sids(capsys, "--since", "1d") == ["PA_4", "PA_2"]
    assert sids(capsys, "--until", "3h") == ["PA_2", "PA_3", "PA_1"]


def test_json_is_utc_iso_with_ms(sessions_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["participant_sid"]: r for r in json.loads(run(capsys, "--format", "json"))}
    r1 = rows["PA_1"]
    assert r1["joined_at"] == "2026-03-01T23:59:30.123Z"
    assert r1["left_at"] == "2026-03-02T00:00:45.373Z"
    assert r1["last_seen_at"] == "2026-03-02T00:00:45.373Z"
    assert r1["duration_ms"] == 75250
    assert r1["agent_name"] == "alpha" and r1["attributes"] == {"lk.agent_name": "alpha"}
    assert r1["disconnect_reason"] == "CLIENT_INITIATED" and r1["end_source"] == "rtc"
    assert rows["PA_2"]["left_at"] is None and rows["PA_2"]["duration_ms"] is None
    assert rows["PA_3"]["duration_ms"] == 3_661_000


def test_csv_columns_and_values(sessions_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--format", "csv", "--room", "r1")
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    rows = {r["participant_sid"]: r for r in reader}
    assert set(rows) == {"PA_1", "PA_3"}
    assert rows["PA_1"]["duration_ms"] == "75250"
    assert rows["PA_1"]["joined_at"] == "2026-03-01T23:59:30.123Z"
    assert rows["PA_3"]["left_at"] == "2026-03-02T03:00:31.123Z"
    assert rows["PA_3"]["agent_name"] == ""


def test_table_has_human_durations(sessions_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys).splitlines()
    assert lines[0].split() == [
        "joined_at",
        "room",
        "identity",
        "agent",
        "kind",
        "duration",
        "reason",
        "source",
    ]
    by_identity = {line.split()[2]: line for line in lines[1:-1]}
    assert by_identity["a1"].split()[0] == "2026-03-01T23:59:30.123Z"
    assert "1m15s" in by_identity["a1"].split()
    assert "open" in by_identity["a2"].split()
    assert "1h01m01s" in by_identity["u1"].split()
    assert "1h00m00s" in by_identity["a4"].split()
    assert lines[-1] == "(4 sessions)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "not an ISO 8601 time"),
        (["--until", "2026-02-30"], "not an ISO 8601 time"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since is after --until"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    sessions_db: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sessions", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_exports_are_not_cut_at_the_table_limit(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(db_url)
    try:
        store.apply(
            [Open(session(f"PA_{i}", "r", f"a{i}", "agent", "x", T0)) for i in range(130)], "obs"
        )
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    assert main(["sessions", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 130
    assert main(["sessions"]) == 0
    assert "(100 sessions)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", ""], "--since: not an ISO 8601 time"),
        (["--until", " "], "--until: not an ISO 8601 time"),
        (["--since", "0001-01-01"], "--since: '0001-01-01' is out of range"),
        (["--since", "99999999999d"], "--since: not an ISO 8601 time"),
        (["--limit", "1e23"], "--limit must be a whole number"),
        (["--limit", "100000000000000000000000"], "--limit must be at most"),
        (["--limit", "-3"], "--limit must be at least 1"),
    ],
)
def test_edges_name_the_flag(
    sessions_db: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sessions", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Error" not in err  # no exception class names, just the flag and the rule


HOSTILE = [
    ('=HYPERLINK("http://x","y")', "a1"),
    ("+cmd", "-2+3"),
    ("@SUM(A1)", "\tx"),
    ("\rroom", "line\rbreak"),
    ("esc\x1b[31mred", "new\nline"),
]


@pytest.fixture
def hostile_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    store = Store(db_url)
    try:
        store.apply(
            [
                Open(session(f"PA_{i}", room, ident, "agent", room, T0 + timedelta(seconds=i)))
                for i, (room, ident) in enumerate(HOSTILE)
            ],
            "obs-1",
        )
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return db_url


def test_csv_neutralises_formulas_and_keeps_rows_whole(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "--format", "csv")
    # RFC 4180: records end with CRLF; a CR or LF inside a field is quoted, never a break
    records = list(csv.reader(io.StringIO(out, newline="")))
    assert len(records) == 1 + len(HOSTILE)
    assert out.endswith("\r\n") and out.count("\r\n") == 1 + len(HOSTILE)
    rows = {r["participant_sid"]: r for r in csv.DictReader(io.StringIO(out, newline=""))}
    assert rows["PA_0"]["room_name"] == "'" + HOSTILE[0][0]
    assert rows["PA_0"]["agent_name"] == "'" + HOSTILE[0][0]
    assert rows["PA_1"]["room_name"] == "'+cmd" and rows["PA_1"]["participant_identity"] == "'-2+3"
    assert (
        rows["PA_2"]["room_name"] == "'@SUM(A1)" and rows["PA_2"]["participant_identity"] == "'\tx"
    )
    assert rows["PA_3"]["room_name"] == "'\rroom"
    assert rows["PA_3"]["participant_identity"] == "line\rbreak"
    assert rows["PA_4"]["participant_identity"] == "new\nline"
    for r in rows.values():  # no cell a spreadsheet would evaluate
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in r.values())
    # JSON stays exact
    exact = {r["participant_sid"]: r for r in json.loads(run(capsys, "--format", "json"))}
    assert [
        (exact[f"PA_{i}"]["room_name"], exact[f"PA_{i}"]["participant_identity"])
        for i in range(len(HOSTILE))
    ] == HOSTILE


def test_table_escapes_control_characters(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys)
    assert "\x1b" not in out and "\r" not in out and "\t" not in out
    lines = out.splitlines()
    assert len(lines) == 2 + len(HOSTILE)  # no row split by a newline in a field
    assert any("esc\\x1b[31mred" in line and "new\\nline" in line for line in lines)
    assert any("line\\rbreak" in line for line in lines)


def test_usage_exports_follow_the_same_rules(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    window = ["--from", "2026-03-01", "--to", "2026-03-03", "--by", "agent,identity"]
    capsys.readouterr()
    assert main(["usage", *window, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    records = list(csv.reader(io.StringIO(out, newline="")))
    assert len(records) == 1 + len(HOSTILE)
    cells = [c for r in records[1:] for c in r[:2]]
    assert "'" + HOSTILE[0][0] in cells and "line\rbreak" in cells
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert main(["usage", *window]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and "\r" not in table
    assert len(table.splitlines()) == 1 + len(HOSTILE) + 2  # header, groups, total, footer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "0001-01-01", "--to", "9999-12-31"], "--from: '0001-01-01' is out of range"),
        (["--from", "2026-01-01", "--to", "9999-12-31"], "--to: '9999-12-31' is out of range"),
        (["--from", ""], "--from: not an ISO 8601 time"),
        (["--from", "2026-01-01", "--to", ""], "--to: not an ISO 8601 time"),
        (["--from", "2026-01-01", "--now", ""], "--now: not an ISO 8601 time"),
    ],
)
def test_usage_edges_name_the_flag(
    sessions_db: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["usage", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_rooms_are_listed_newest_first_by_the_time_shown(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rooms an observer found at its start share one first_seen_at; they are listed by the
    server's creation time, the one the table shows (or first seen, for a room without it)."""
    found = NOW - timedelta(minutes=1)
    created = {"old": NOW - timedelta(days=3), "new": NOW - timedelta(hours=1), "mid": None}
    store = Store(db_url)
    try:
        store.apply(
            [
                RoomSeen(f"RM_{name}", name, "", when, found, 0, 0)
                for name, when in (("new", created["new"]), ("old", created["old"]))
            ],
            "obs",
        )
        store.apply([RoomSeen("RM_mid", "mid", "", None, NOW - timedelta(days=1), 0, 0)], "obs")
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    capsys.readouterr()
    assert main(["rooms", "--format", "json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["new", "mid", "old"]
    assert main(["rooms"]) == 0
    table = capsys.readouterr().out.splitlines()[1:4]
    assert [line.split()[1] for line in table] == ["new", "mid", "old"], table
    shown = [datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")) for line in table]
    assert shown == sorted(shown, reverse=True)
