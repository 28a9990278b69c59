"""`observer usage --tokens`: sessions whose agent never reported model usage (an agent that
does not send it to the room) are counted apart, and a group made only of them shows its
counters as unknown, never as 0 tokens. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from test_agent_usage import at, session

from observer.cli import main
from observer.core.agent_usage import COUNTERS, ModelUsage, UsageReport
from observer.core.changes import Close, Open, RecordUsage
from observer.core.vocab import END_RTC
from observer.db.store import Store

pytestmark = pytest.mark.unit


def tokens(sid: str, when: datetime, input_tokens: int) -> RecordUsage:
    model = ModelUsage("llm", "openai", "gpt-x", input_tokens=input_tokens, output_tokens=1)
    return RecordUsage(UsageReport("RM_1", sid, f"id-{sid}", when, when, "room", (model,)))


@pytest.fixture
def usage_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """- talker: S1 on 10 March, reported 100 input tokens;
    - mute: S2 on 10 March and S3 from 11 March 23:59:30 to 12 March 00:01:10, never
      reported usage;
    - mixed: S4 (reported 40) and S5 (never) on 11 March;
    - late: S6 from 13 March 23:58 to 14 March 00:02, reported 7 tokens at 23:59 (14 March
      holds a piece of it, and no usage: a true 0, not unknown)."""
    store = Store(db_url)
    try:
        ops: list[Any] = []
        for sid, agent, joined, left in [
            ("S1", "talker", at(10, 10), at(10, 10, 5)),
            ("S2", "mute", at(10, 11), at(10, 11, 5)),
            ("S3", "mute", at(11, 23, 59, 30), at(12, 0, 1, 10)),
            ("S4", "mixed", at(11, 9), at(11, 9, 5)),
            ("S5", "mixed", at(11, 10), at(11, 10, 5)),
            ("S6", "late", at(13, 23, 58), at(14, 0, 2)),
        ]:
            s = session(sid, agent, joined)
            ops += [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]
        ops += [
            tokens("S1", at(10, 10, 3), 100),
            tokens("S4", at(11, 9, 3), 40),
            tokens("S6", at(13, 23, 59), 7),
        ]
        store.apply(ops, "obs")
    finally:
        store.close()
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return db_url


BASE = ["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--tokens"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main([*BASE, *args]) == 0
    return capsys.readouterr().out


def lines_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    return json.loads(run(capsys, "--format", "json", *args))  # type: ignore[no-any-return]


def test_a_group_that_never_reported_usage_is_unknown_not_zero(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    by_agent = {line["agent"]: line for line in lines_json(capsys, "--by", "agent")}
    mute = by_agent["mute"]
    assert (mute["sessions"], mute["usage_sessions"], mute["no_usage_sessions"]) == (2, 0, 2)
    assert mute["no_usage_reported"] is True
    assert all(mute[c] is None for c in COUNTERS), mute
    talker = by_agent["talker"]
    assert (talker["usage_sessions"], talker["no_usage_sessions"]) == (1, 0)
    assert talker["no_usage_reported"] is False and talker["input_tokens"] == 100
    # some sessions reported, some never did: the sums are those reported, the rest counted
    mixed = by_agent["mixed"]
    assert (mixed["sessions"], mixed["usage_sessions"], mixed["no_usage_sessions"]) == (2, 1, 1)
    assert mixed["no_usage_reported"] is False and mixed["input_tokens"] == 40
    assert by_agent["late"]["no_usage_sessions"] == 0


def test_no_usage_sessions_are_cut_at_days_as_sessions_are(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got = {
        (line["agent"], line["day"]): line
        for line in lines_json(capsys, "--by", "agent", "--by", "day")
    }
    # S3 holds a midnight: a session, and one without usage, on both days
    for day in ("2026-03-11", "2026-03-12"):
        line = got["mute", day]
        assert (line["sessions"], line["no_usage_sessions"], line["no_usage_reported"]) == (
            1,
            1,
            True,
        )
        assert line["input_tokens"] is None
    # S6 reported usage on the 13th; its piece on the 14th has no usage there: a true 0
    late = got["late", "2026-03-14"]
    assert (late["sessions"], late["usage_sessions"], late["no_usage_sessions"]) == (1, 0, 0)
    assert late["no_usage_reported"] is False and late["input_tokens"] == 0
    assert got["late", "2026-03-13"]["input_tokens"] == 7
    # every session without usage counted once a day it is in, as `sessions` counts it
    assert sum(line["no_usage_sessions"] for line in got.values()) == 4


def test_without_a_grouping_the_total_knows_its_counters(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (total,) = lines_json(capsys)
    assert (total["sessions"], total["usage_sessions"], total["no_usage_sessions"]) == (6, 3, 3)
    assert total["no_usage_reported"] is False and total["input_tokens"] == 147


def test_csv_leaves_unknown_counters_empty(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = {
        r["agent"]: r
        for r in csv.DictReader(io.StringIO(run(capsys, "--by", "agent", "--format", "csv")))
    }
    assert rows["mute"]["no_usage_sessions"] == "2" and rows["mute"]["no_usage_reported"] == "true"
    assert all(rows["mute"][c] == "" for c in COUNTERS)
    assert rows["talker"]["input_tokens"] == "100"
    assert rows["talker"]["no_usage_reported"] == "false"
    assert rows["mixed"]["no_usage_sessions"] == "1"


def test_the_table_marks_the_group_and_its_total(
    usage_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "--by", "agent").splitlines()
    head = out[0].split()
    cells = {line.split()[0]: line.split() for line in out[1:] if line.split()}
    mute = dict(zip(head, cells["mute"], strict=False))
    assert mute["input_tokens"] == "-" and mute["no_usage_reported"] == "yes"
    assert mute["no_usage_sessions"] == "2"
    talker = dict(zip(head, cells["talker"], strict=False))
    assert talker["input_tokens"] == "100" and talker["no_usage_reported"] == "no"
    total = cells["total"]
    # the total row leaves the marker empty: one cell fewer, the counts summed
    assert total[head.index("input_tokens")] == "147"
    assert total[head.index("no_usage_sessions")] == "3"


def test_open_sessions_without_usage_count_up_to_now(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(db_url)
    try:
        store.apply([Open(session("S9", "mute", at(20, 10)))], "obs")
    finally:
        store.close()
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    now = (at(20, 10) + timedelta(minutes=3)).isoformat()
    (line,) = lines_json(capsys, "--by", "agent", "--now", now)
    assert (line["sessions"], line["no_usage_sessions"], line["no_usage_reported"]) == (1, 1, True)
    # closed only: the open session is not counted, neither among those without usage
    assert lines_json(capsys, "--by", "agent", "--now", now, "--exclude-open") == []


def test_without_tokens_nothing_changes(usage_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--format", "json"]) == 0
    (total,) = json.loads(capsys.readouterr().out)
    assert set(total) == {"sessions", "duration_ms", "billable_minutes"}
