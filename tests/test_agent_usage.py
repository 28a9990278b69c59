"""Model usage per agent session: how totals are kept, decoded from the agents framework's
messages, reported by `observer usage --tokens`, and priced by `--prices`. Both databases;
the costs below are worked out by hand."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol.agent_pb import agent_session as pb

from observer.cli import main
from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import Close, Open, RecordUsage, RoomSeen
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.daemon import session_messages
from observer.db.schema import AgentUsageRow
from observer.db.store import Store

pytestmark = pytest.mark.unit

MAR = datetime(2026, 3, 1, tzinfo=UTC)


def at(day: int, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(2026, 3, day, hh, mm, ss, tzinfo=UTC)


def session(sid: str, agent: str, joined: datetime) -> TrackedSession:
    return TrackedSession(
        room_name="room",
        room_sid="RM_1",
        participant_sid=sid,
        identity=f"id-{sid}",
        name="",
        kind="agent",
        agent_name=agent,
        attributes={},
        joined_at=joined,
        last_seen_at=joined,
    )


def report(sid: str, when: datetime, *models: ModelUsage) -> UsageReport:
    return UsageReport("RM_1", sid, f"id-{sid}", when, when, "room", models)


def llm(**counts: int) -> ModelUsage:
    return ModelUsage("llm", "openai", "gpt-x", **counts)


def kept(store: Store) -> list[AgentUsageRow]:
    from sqlalchemy.orm import Session

    with Session(store.engine) as db:
        return list(db.query(AgentUsageRow).order_by(AgentUsageRow.kind))


def test_totals_are_kept_once_newer_ones_replace_them_and_going_back_is_flagged(
    db_url: str,
) -> None:
    store = Store(db_url)
    try:
        store.apply([RecordUsage(report("PA_1", at(2), llm(input_tokens=10)))], "obs")
        (row,) = kept(store)
        first_update = row.updated_at
        # the same totals again, and older totals arriving late (another observer's copy)
        store.apply([RecordUsage(report("PA_1", at(2), llm(input_tokens=10)))], "obs")
        store.apply([RecordUsage(report("PA_1", at(1), llm(input_tokens=3)))], "obs")
        (row,) = kept(store)
        assert (row.input_tokens, row.updated_at, row.went_backwards) == (10, first_update, False)
        # newer and higher: replaced
        store.apply(
            [RecordUsage(report("PA_1", at(3), llm(input_tokens=25, output_tokens=4)))], "obs"
        )
        (row,) = kept(store)
        assert (row.input_tokens, row.output_tokens, row.reported_at) == (25, 4, at(3))
        # newer but lower: the larger of each is kept, and flagged
        notes = store.apply(
            [RecordUsage(report("PA_1", at(4), llm(input_tokens=5, output_tokens=9)))], "obs"
        )
        (row,) = kept(store)
        assert (row.input_tokens, row.output_tokens, row.went_backwards) == (25, 9, True)
        assert notes and "gpt-x" in notes[0]
        assert row.first_reported_at == at(2)
    finally:
        store.close()


def test_the_framework_message_is_decoded_and_everything_else_ignored() -> None:
    usage = pb.AgentSessionUsage(
        model_usage=[
            pb.ModelUsage(
                llm=pb.LLMModelUsage(
                    provider="openai",
                    model="gpt-realtime",
                    input_tokens=120,
                    input_cached_tokens=20,
                    input_audio_tokens=100,
                    output_tokens=80,
                    output_audio_tokens=0,
                    session_duration=12.5,
                )
            ),
            pb.ModelUsage(
                tts=pb.TTSModelUsage(
                    provider="cartesia", model="sonic", characters_count=42, audio_duration=3.25
                )
            ),
            pb.ModelUsage(
                stt=pb.STTModelUsage(provider="deepgram", model="nova", audio_duration=9)
            ),
        ]
    )
    event = pb.AgentSessionEvent(
        session_usage_updated=pb.AgentSessionEvent.SessionUsageUpdated(usage=usage)
    )
    event.created_at.FromDatetime(datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC))
    found = session_messages.usage_in(pb.AgentSessionMessage(event=event).SerializeToString())
    assert found is not None
    when, models = found
    assert when == datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
    assert models == (
        ModelUsage(
            "llm",
            "openai",
            "gpt-realtime",
            input_tokens=120,
            input_cached_tokens=20,
            input_audio_tokens=100,
            output_tokens=80,
            session_ms=12_500,
        ),
        ModelUsage("tts", "cartesia", "sonic", characters=42, audio_ms=3250),
        ModelUsage("stt", "deepgram", "nova", audio_ms=9000),
    )
    # a conversation item is not usage: nothing is taken from it
    chat = pb.AgentSessionEvent(
        conversation_item_added=pb.AgentSessionEvent.ConversationItemAdded()
    )
    assert session_messages.usage_in(pb.AgentSessionMessage(event=chat).SerializeToString()) is None
    with pytest.raises(session_messages.Undecodable):
        session_messages.usage_in(b"\xff\xff\xff not a message")


PRICES = """
currency = "EUR"

[[agent_minute]]
from = 2026-01-01
price = "0.01"

[[agent_minute]]
from = 2026-03-15
price = "0.02"

[[model]]
kind = "llm"
provider = "openai"
model = "gpt-x"
from = 2026-01-01
input_uncached_tokens = "0.000001"
input_cached_tokens = "0.0000005"
output_tokens = 0.000002

[[model]]
kind = "tts"
provider = "acme"
model = "voice-1"
from = 2026-01-01
characters = "0.00001"
"""


@pytest.fixture
def priced_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three agents in March:
    - agent-a, 10 March 10:00:00-10:02:30: 3 billable minutes at 0.01 = 0.03; its LLM used
      1000 input tokens (200 cached) and 500 output tokens:
      800 x 0.000001 + 200 x 0.0000005 + 500 x 0.000002 = 0.0019; in all 0.0319.
    - agent-b, 20 March 12:00-12:05: 5 minutes at 0.02 = 0.10; TTS 1000 characters at
      0.00001 = 0.01; and an STT model without a price: its cost and the total are empty.
    - agent-c, 14 March 23:59 to 15 March 00:01, across the price change: 2 minutes at the
      price at its join, 0.01 = 0.02.
    - usage reported for a session never recorded (no row): counted, flagged, priced.
    """
    store = Store(db_url)
    try:
        ops: list[Any] = []
        for sid, agent, joined, left in [
            ("PA_a", "agent-a", at(10, 10), at(10, 10, 2, 30)),
            ("PA_b", "agent-b", at(20, 12), at(20, 12, 5)),
            ("PA_c", "agent-c", at(14, 23, 59), at(15, 0, 1)),
        ]:
            s = session(sid, agent, joined)
            ops += [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]
        ops += [
            RecordUsage(
                report(
                    "PA_a",
                    at(10, 10, 2),
                    llm(input_tokens=1000, input_cached_tokens=200, output_tokens=500),
                )
            ),
            RecordUsage(
                report(
                    "PA_b",
                    at(20, 12, 4),
                    ModelUsage("tts", "acme", "voice-1", characters=1000, audio_ms=60_000),
                    ModelUsage("stt", "nobody", "unpriced-stt", audio_ms=300_000),
                )
            ),
            RecordUsage(report("PA_ghost", at(21), llm(input_tokens=100, output_tokens=100))),
        ]
        store.apply(ops, "obs")
    finally:
        store.close()
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return prices


def usage_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    base = ["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--format", "json"]
    assert main([*base, *args]) == 0
    out = capsys.readouterr()
    print(out.err, end="", file=sys.stderr)  # for the caller to read
    return json.loads(out.out)  # type: ignore[no-any-return]


def test_costs_per_agent_by_hand(priced_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = usage_json(capsys, "--by", "agent", "--prices", str(priced_db), "--tokens")
    err = capsys.readouterr().err
    got = {
        line["agent"]: (
            line["cost_agent_minutes"],
            line["cost_llm"],
            line["cost_tts"],
            line["cost_stt"],
            line["cost"],
        )
        for line in lines
    }
    assert {k: tuple(None if v is None else Decimal(v) for v in c) for k, c in got.items()} == {
        None: (Decimal(0), Decimal("0.0003"), Decimal(0), Decimal(0), Decimal("0.0003")),
        "agent-a": (Decimal("0.03"), Decimal("0.0019"), Decimal(0), Decimal(0), Decimal("0.0319")),
        "agent-b": (Decimal("0.10"), Decimal(0), Decimal("0.01"), None, None),
        "agent-c": (Decimal("0.02"), Decimal(0), Decimal(0), Decimal(0), Decimal("0.02")),
    }
    # money is exact decimal text, never a float
    assert all(isinstance(v, str | None) for c in got.values() for v in c)
    # one warning, naming the model without a price
    assert err.count("unpriced-stt") == 1 and "nobody" in err
    ghost = next(line for line in lines if line["agent"] is None)
    assert ghost["usage_unseen_sessions"] == 1 and ghost["sessions"] == 0
    a = next(line for line in lines if line["agent"] == "agent-a")
    assert (a["input_tokens"], a["input_cached_tokens"], a["output_tokens"]) == (1000, 200, 500)
    assert a["billable_minutes"] == 3 and a["usage_sessions"] == 1


def test_tokens_by_day_and_the_table(priced_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = usage_json(capsys, "--by", "day", "--tokens")
    by_day = {line["day"]: line for line in lines}
    assert by_day["2026-03-10"]["input_tokens"] == 1000  # when it was reported
    assert (
        by_day["2026-03-20"]["characters"] == 1000 and by_day["2026-03-20"]["audio_ms"] == 360_000
    )
    assert by_day["2026-03-21"]["usage_unseen_sessions"] == 1
    capsys.readouterr()
    assert (
        main(["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--prices", str(priced_db)])
        == 0
    )
    out = capsys.readouterr().out
    assert "cost_llm" in out and "costs in EUR" in out


@pytest.fixture
def models_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sessions that each reported several models:
    - S1: alpha, attribute customer=acme, room A (metadata customer acme), 10 March: LLM,
      TTS and STT, the LLM's and the TTS's totals once went backwards;
    - S2: alpha, customer=globex, room B (customer globex), 10 March: LLM and TTS;
    - S3: beta, customer=acme, room A, 11 March: LLM and STT;
    - a session without a row in room B, 12 March: two realtime LLMs that never spoke.
    """
    store = Store(db_url)
    try:
        ops: list[Any] = [
            RoomSeen(f"RM_{r}", r, json.dumps({"customer": c}), MAR, MAR, 0, 0)
            for r, c in (("A", "acme"), ("B", "globex"))
        ]
        for sid, agent, customer, room, joined in [
            ("S1", "alpha", "acme", "A", at(10, 10)),
            ("S2", "alpha", "globex", "B", at(10, 11)),
            ("S3", "beta", "acme", "A", at(11, 9)),
        ]:
            s = replace(
                session(sid, agent, joined),
                room_name=room,
                room_sid=f"RM_{room}",
                attributes={"customer": customer},
            )
            left = joined + timedelta(minutes=5)
            ops += [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]
        tts = ModelUsage("tts", "acme", "voice-1", characters=100)
        stt = ModelUsage("stt", "acme", "ears-1", audio_ms=1000)
        ops += [
            usage("A", "S1", at(10, 10, 3), llm(output_tokens=10), tts, stt),
            usage("A", "S1", at(10, 10, 4), llm(output_tokens=5), replace(tts, characters=50)),
            usage("B", "S2", at(10, 11, 4), llm(output_tokens=20), tts),
            usage("A", "S3", at(11, 9, 4), llm(output_tokens=40), stt),
            usage(
                "B",
                "GHOST",
                at(12),
                ModelUsage("llm", "rt", "one", session_ms=1000),
                ModelUsage("llm", "rt", "two", session_ms=1000),
            ),
        ]
        store.apply(ops, "obs")
    finally:
        store.close()
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return db_url


def usage(room: str, sid: str, when: datetime, *models: ModelUsage) -> RecordUsage:
    return RecordUsage(UsageReport(f"RM_{room}", sid, f"id-{sid}", when, when, room, models))


@pytest.mark.parametrize(
    "by, expected",
    [
        # {group: (usage_sessions, unseen, went_backwards, silent_realtime)}
        ((), {(): (4, 1, 1, 1)}),
        (("agent",), {(None,): (1, 1, 0, 1), ("alpha",): (2, 0, 1, 0), ("beta",): (1, 0, 0, 0)}),
        (
            ("attribute:customer",),
            {("",): (1, 1, 0, 1), ("acme",): (2, 0, 1, 0), ("globex",): (1, 0, 0, 0)},
        ),
        (("room-metadata:customer",), {("acme",): (2, 0, 1, 0), ("globex",): (2, 1, 0, 1)}),
        (
            ("room-metadata",),
            {('{"customer": "acme"}',): (2, 0, 1, 0), ('{"customer": "globex"}',): (2, 1, 0, 1)},
        ),
        (
            ("day",),
            {
                ("2026-03-10",): (2, 0, 1, 0),
                ("2026-03-11",): (1, 0, 0, 0),
                ("2026-03-12",): (1, 1, 0, 1),
            },
        ),
        (
            ("agent", "day"),
            {
                (None, "2026-03-12"): (1, 1, 0, 1),
                ("alpha", "2026-03-10"): (2, 0, 1, 0),
                ("beta", "2026-03-11"): (1, 0, 0, 0),
            },
        ),
    ],
)
def test_tokens_count_each_session_once_however_many_models_it_reported(
    models_db: str, capsys: pytest.CaptureFixture[str], by: tuple[str, ...], expected: Any
) -> None:
    lines = usage_json(capsys, "--tokens", *(f"--by={g}" for g in by))
    flags = ("usage_sessions", "usage_unseen_sessions", "usage_went_backwards")
    got = {
        tuple(line[g] for g in by): tuple(line[f] for f in (*flags, "usage_silent_realtime"))
        for line in lines
    }
    assert got == expected
    # the models' counters are summed as before: every one once
    assert sum(line["output_tokens"] for line in lines) == 10 + 20 + 40
    assert sum(line["characters"] for line in lines) == 200
    assert sum(line["audio_ms"] for line in lines) == 2000
    assert sum(line["session_ms"] for line in lines) == 2000


@pytest.mark.parametrize(
    "text, words",
    [
        ("[[agent_minute]]\nfrom = 2026-01-01\nprice = 'abc'\n", "not a number"),
        ("[[agent_minute]]\nprice = '1'\n", "from"),
        ("[[model]]\nkind = 'llm'\nmodel = 'm'\nfrom = 2026-01-01\n", "no price"),
        ("[[model]]\nkind = 'video'\nmodel = 'm'\nfrom = 2026-01-01\noutput_tokens = 1\n", "kind"),
        ("this is not toml = = \n", "not TOML"),
        ("[[agent_minute]]\nfrom = 2026-01-01\nprice = '-1'\n", ">= 0"),
    ],
)
def test_a_bad_prices_file_is_one_line_and_exit_2(
    priced_db: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    priced_db.write_text(text)
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--prices", str(priced_db)]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert captured.out == ""


def test_a_missing_prices_file_is_one_line(
    priced_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-04-01", "--prices", "/nonexistent.toml"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prices" in err[0]


def test_usage_before_its_session_row_links_once_the_row_exists(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.apply([RecordUsage(report("PA_late", at(5), llm(output_tokens=7)))], "obs")
        from observer.db.usage import UsageSpec

        spec = UsageSpec(edges=(MAR, MAR + timedelta(days=31)), group_by=("agent",))
        ((before,), (unseen,)) = store.tokens(spec)
        assert (before.keys, unseen.keys, unseen.unseen) == ((None,), (None,), 1)
        s = session("PA_late", "agent-l", at(5) - timedelta(minutes=1))
        store.apply([Open(s)], "obs")
        ((after,), (seen,)) = store.tokens(spec)
        assert (after.keys, seen.unseen, after.counters[4]) == (("agent-l",), 0, 7)
    finally:
        store.close()


def test_reconcile_keeps_each_groups_cost_and_a_run_without_prices_leaves_them(
    priced_db: Path, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    from observer.db.rollups import Rollup

    args = ["reconcile", "--period", "2026-03", "--no-settle", "--now", "2026-04-02T12:00:00Z"]
    capsys.readouterr()
    assert main([*args, "--prices", str(priced_db)]) == 0
    out = capsys.readouterr()
    assert "cost unknown" in out.out and "unpriced-stt" in out.err

    def stored() -> dict[tuple[str, str], str | None]:
        from observer.db.rollups import RollupTx

        store = Store(db_url)
        try:
            with store.rollup_transaction() as tx:
                assert isinstance(tx, RollupTx)
                rows: list[Rollup] = tx.rollups(MAR, datetime(2026, 4, 1, tzinfo=UTC))
                return {(r.group_kind, r.group_key): r.cost for r in rows}
        finally:
            store.close()

    costs = stored()
    assert Decimal(costs[("agent", "agent-a")] or "nan") == Decimal("0.0319")
    assert Decimal(costs[("agent", "agent-c")] or "nan") == Decimal("0.02")
    assert costs[("agent", "agent-b")] is None and costs[("total", "")] is None
    # finalized now; run again without prices: nothing drifts, the costs stay
    assert main(args) == 0
    assert stored() == costs


def test_the_migration_marks_closed_sessions_that_hold_a_midnight(empty_db_url: str) -> None:
    from sqlalchemy import select

    from observer.db import migrate
    from observer.db.schema import Base

    migrate.upgrade(empty_db_url, "0009")
    cases = [
        (at(1, 10), at(1, 11)),
        (at(1, 23, 59), at(2, 0, 1)),
        (at(1, 10), at(2)),  # ends exactly at midnight: holds none
        (at(1, 10), at(3)),
        (at(1, 10), None),  # open
    ]
    t = Base.metadata.tables["sessions"]
    store = Store(empty_db_url)
    try:
        with store.engine.begin() as conn:
            for n, (joined, left) in enumerate(cases):
                conn.execute(
                    t.insert().values(
                        room_name="r",
                        room_sid="RM",
                        participant_sid=f"PA_{n}",
                        participant_identity=f"id-{n}",
                        participant_kind="agent",
                        attributes={},
                        joined_at=joined,
                        left_at=left,
                        last_seen_at=joined,
                        observer_id="obs",
                        created_at=joined,
                        updated_at=joined,
                    )
                )
        migrate.upgrade(empty_db_url)
        with store.engine.connect() as conn:
            got = [bool(v) for (v,) in conn.execute(select(t.c.crosses_day).order_by(t.c.id))]
        assert got == [False, True, False, True, False]
    finally:
        store.close()
