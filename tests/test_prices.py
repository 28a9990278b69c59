"""`--prices` prices what `observer usage` counts and never changes it: a session's minutes
(each session rounded up to a whole minute) all at the agent-minute price in effect at its
join, a model's usage at the price in effect when it was reported. Price changes before,
inside and after sessions, close together, and across midnight; both databases, every
cost worked out by hand below."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from observer.cli import main
from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import Close, Open, RecordUsage
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db.store import Store

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 3, 11, tzinfo=UTC)
NOW = T + timedelta(minutes=5)  # open sessions count up to here

MINUTE = Decimal("0.0100")  # per agent minute from 1 January
MINUTE_2 = Decimal("0.0125")  # ... and after a change
TOKEN = Decimal("0.00001")  # per LLM output token from 1 January
TOKEN_2 = Decimal("0.00002")  # ... and after a change
TOKENS = 250  # output tokens each report gives
ON_TOKEN = TOKENS * TOKEN  # 0.0025
ON_TOKEN_2 = TOKENS * TOKEN_2  # 0.0050


def s(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Case:
    sessions: list[tuple[str, datetime, datetime | None]]  # (agent, joined, left or open)
    reports: list[tuple[int, datetime]]  # (index of the session, reported at): TOKENS each
    minute_changes: list[datetime]  # MINUTE_2 from each (MINUTE from 1 January)
    token_changes: list[datetime]  # TOKEN_2 from each (TOKEN from 1 January)
    by: tuple[str, ...]
    # {group: (sessions, billable minutes, cost_agent_minutes, cost_llm)}
    expected: dict[tuple[str, ...], tuple[int, int, Decimal, Decimal]]


CASES = {
    # 39 s, the model's price changing inside: 1 session, 1 minute; its tokens (reported
    # after the change) at the new price
    "model change inside": Case(
        [("a", s(0), s(39))],
        [(0, s(30))],
        [],
        [s(20)],
        (),
        {(): (1, 1, 1 * MINUTE, ON_TOKEN_2)},
    ),
    # ... reported before the change: the old price
    "model change after the report": Case(
        [("a", s(0), s(90))],
        [(0, s(30))],
        [],
        [s(60)],
        (),
        {(): (1, 2, 2 * MINUTE, ON_TOKEN)},
    ),
    # 150 s, the minute price changing after 60 s: 3 minutes, all at the price at the join
    "minute change inside": Case(
        [("a", s(0), s(150))],
        [(0, s(140))],
        [s(60)],
        [],
        (),
        {(): (1, 3, 3 * MINUTE, ON_TOKEN)},
    ),
    # the minute price and the model's 2 s apart inside a 39 s session (either order)
    "minute then model change 2 s apart": Case(
        [("a", s(0), s(39))],
        [(0, s(30))],
        [s(10)],
        [s(12)],
        (),
        {(): (1, 1, 1 * MINUTE, ON_TOKEN_2)},
    ),
    "model then minute change 2 s apart": Case(
        [("a", s(0), s(39))],
        [(0, s(30))],
        [s(12)],
        [s(10)],
        (),
        {(): (1, 1, 1 * MINUTE, ON_TOKEN_2)},
    ),
    # both before the session, both after it
    "changes before": Case(
        [("a", s(0), s(61))],
        [(0, s(50))],
        [s(-60)],
        [s(-60)],
        (),
        {(): (1, 2, 2 * MINUTE_2, ON_TOKEN_2)},
    ),
    "changes after": Case(
        [("a", s(0), s(61))],
        [(0, s(50))],
        [s(62)],
        [s(62)],
        (),
        {(): (1, 2, 2 * MINUTE, ON_TOKEN)},
    ),
    # a session that joins as the price changes has the new one; one that left before it,
    # the old; one open across it (up to NOW, 300 s), the price at its join
    "joined at the change, by agent": Case(
        [("a", s(-120), s(-60)), ("b", s(0), s(61)), ("c", s(-10), None)],
        [(0, s(-70)), (1, s(50)), (2, s(100))],
        [s(0)],
        [],
        ("agent",),
        {
            ("a",): (1, 1, 1 * MINUTE, ON_TOKEN),
            ("b",): (1, 2, 2 * MINUTE_2, ON_TOKEN),
            ("c",): (1, 6, 6 * MINUTE, ON_TOKEN),
        },
    ),
    # 23:59:30 to 00:00:40, the minute price changing at midnight: 70 s, 2 minutes at the
    # price at the join; its tokens, reported after midnight, at the model's new price
    "across midnight": Case(
        [("a", MIDNIGHT - timedelta(seconds=30), MIDNIGHT + timedelta(seconds=40))],
        [(0, MIDNIGHT + timedelta(seconds=35))],
        [MIDNIGHT],
        [MIDNIGHT],
        (),
        {(): (1, 2, 2 * MINUTE, ON_TOKEN_2)},
    ),
    # ... by day: 30 s on the 10th and 40 s on the 11th, a minute each (as without prices),
    # both at the price at the join
    "across midnight, by day": Case(
        [("a", MIDNIGHT - timedelta(seconds=30), MIDNIGHT + timedelta(seconds=40))],
        [(0, MIDNIGHT + timedelta(seconds=35))],
        [MIDNIGHT],
        [MIDNIGHT],
        ("day",),
        {
            ("2026-03-10",): (1, 1, 1 * MINUTE, Decimal(0)),
            ("2026-03-11",): (1, 1, 1 * MINUTE, ON_TOKEN_2),
        },
    ),
    # ... with a change 2 s after midnight as well, by agent and day
    "across midnight and a change after it": Case(
        [
            ("a", MIDNIGHT - timedelta(seconds=30), MIDNIGHT + timedelta(seconds=40)),
            ("b", MIDNIGHT + timedelta(seconds=1), MIDNIGHT + timedelta(seconds=3)),
            ("b", MIDNIGHT + timedelta(seconds=2), MIDNIGHT + timedelta(seconds=63)),
        ],
        [(0, MIDNIGHT - timedelta(seconds=1)), (2, MIDNIGHT + timedelta(seconds=60))],
        [MIDNIGHT + timedelta(seconds=2)],
        [MIDNIGHT],
        ("agent", "day"),
        {
            ("a", "2026-03-10"): (1, 1, 1 * MINUTE, ON_TOKEN),
            ("a", "2026-03-11"): (1, 1, 1 * MINUTE, Decimal(0)),
            ("b", "2026-03-11"): (2, 3, 1 * MINUTE + 2 * MINUTE_2, ON_TOKEN_2),
        },
    ),
}


def prices_toml(case: Case) -> str:
    out = ['currency = "USD"']
    for start, price in [(datetime(2026, 1, 1, tzinfo=UTC), MINUTE)] + [
        (c, MINUTE_2) for c in case.minute_changes
    ]:
        out.append(f'[[agent_minute]]\nfrom = {start.isoformat()}\nprice = "{price}"')
    for start, price in [(datetime(2026, 1, 1, tzinfo=UTC), TOKEN)] + [
        (c, TOKEN_2) for c in case.token_changes
    ]:
        out.append(
            f'[[model]]\nkind = "llm"\nprovider = "openai"\nmodel = "gpt-x"\n'
            f'from = {start.isoformat()}\noutput_tokens = "{price}"'
        )
    return "\n\n".join(out) + "\n"


def record(db_url: str, case: Case) -> None:
    store = Store(db_url)
    try:
        ops: list[Any] = []
        for i, (agent, joined, left) in enumerate(case.sessions):
            tracked = TrackedSession(
                room_name="room",
                room_sid="RM_1",
                participant_sid=f"PA_{i}",
                identity=f"id-{i}",
                name="",
                kind="agent",
                agent_name=agent,
                attributes={},
                joined_at=joined,
                last_seen_at=joined,
            )
            ops.append(Open(tracked))
            if left is not None:
                ops.append(
                    Close(tracked.key, left, "CLIENT_INITIATED", END_RTC, None, left, tracked)
                )
        for i, when in case.reports:
            llm = ModelUsage("llm", "openai", "gpt-x", output_tokens=TOKENS)
            ops.append(
                RecordUsage(UsageReport("RM_1", f"PA_{i}", f"id-{i}", when, when, "room", (llm,)))
            )
        store.apply(ops, "obs")
    finally:
        store.close()


def usage_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    window = ["--from", "2026-03-01", "--to", "2026-04-01", "--now", NOW.isoformat()]
    assert main(["usage", *window, "--format", "json", *args]) == 0
    out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize("name", CASES)
def test_prices_by_hand_and_the_same_minutes_as_without(
    name: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    record(db_url, case)
    prices = tmp_path / "prices.toml"
    prices.write_text(prices_toml(case))
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    by = [f"--by={g}" for g in case.by]

    priced = usage_json(capsys, *by, "--prices", str(prices))
    got = {
        tuple(line[g] for g in case.by): (
            line["sessions"],
            line["billable_minutes"],
            Decimal(line["cost_agent_minutes"]),
            Decimal(line["cost_llm"]),
            Decimal(line["cost"]),
        )
        for line in priced
    }
    assert got == {k: (*v, v[2] + v[3]) for k, v in case.expected.items()}

    # the same sessions, time and minutes without prices
    def counted(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        fields = (*case.by, "sessions", "duration_ms", "billable_minutes")
        return [tuple(line[f] for f in fields) for line in lines]

    assert counted(priced) == counted(usage_json(capsys, *by))


def test_reconcile_keeps_the_costs_usage_gives(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A period's rollups: the minutes with and without prices alike, and the cost of the
    minutes at the price at each session's join."""
    case = CASES["joined at the change, by agent"]
    case = Case(
        [
            (a, j, j + timedelta(seconds=61) if left is None else left)
            for a, j, left in case.sessions
        ],
        case.reports,
        case.minute_changes,
        [s(20)],
        case.by,
        {},
    )
    record(db_url, case)
    prices = tmp_path / "prices.toml"
    prices.write_text(prices_toml(case))
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    args = ["reconcile", "--period", "2026-03", "--no-settle", "--now", "2026-04-10T00:00:00Z"]
    assert main([*args, "--prices", str(prices)]) == 0

    store = Store(db_url)
    try:
        with store.rollup_transaction() as tx:
            rows = tx.rollups(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    finally:
        store.close()
    got = {
        r.group_key: (r.sessions, r.billable_minutes, Decimal(r.cost or "nan"))
        for r in rows
        if r.group_kind in ("agent", "total")
    }
    # a: 60 s at MINUTE, tokens before the model change; b: 61 s joined at the change,
    # tokens after the model's; c: 61 s from 10 s before the change, tokens after the model's
    a = 1 * MINUTE + ON_TOKEN
    b = 2 * MINUTE_2 + ON_TOKEN_2
    c = 2 * MINUTE + ON_TOKEN_2
    assert got == {"a": (1, 1, a), "b": (1, 2, b), "c": (1, 2, c), "": (3, 5, a + b + c)}
