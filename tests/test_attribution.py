"""Who to bill: `observer usage --by attribute:KEY / room-metadata[:KEY]`, and `observer
rooms`. Generated sessions on both databases; the expected numbers are computed here, in
Python, one session piece at a time, independently of the SQL."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from databases import copy_of

from observer.cli import main
from observer.core.changes import Close, Open, RoomEnded, RoomSeen
from observer.core.events import TrackedSession
from observer.core.timeline import AGENT_STATES, Span, Timeline
from observer.core.vocab import END_RTC
from observer.db.store import Store

pytestmark = pytest.mark.unit

MAR1 = datetime(2026, 3, 1, tzinfo=UTC)
START, END, NOW = MAR1, MAR1 + timedelta(days=3), MAR1 + timedelta(days=2, hours=12)
CUSTOMERS = ["acme", "globex", "=cmd", None]  # None: the attribute is not set
METADATA = [
    '{"customer": "acme", "plan": "pro"}',
    '{"customer": "initech"}',
    '{"plan": "free"}',  # no customer key
    "not json",
    "",
    '["a", "list"]',
    '{"customer": 42}',
]


def build(store: Store, seed: int = 3) -> list[dict[str, Any]]:
    """Sessions in 12 rooms over 1-3 March (some across midnight, some open); returns
    what the reference needs of each."""
    rnd = random.Random(seed)
    rooms = {f"room-{i}": METADATA[i % len(METADATA)] for i in range(12)}
    for name, metadata in rooms.items():
        if name != "room-11":  # never seen: its sessions known only from a webhook, say
            store.apply([RoomSeen(f"RM_{name}", name, metadata, MAR1, MAR1, 0, 0)], "obs")
    store.apply([RoomEnded("RM_room-0", "room-0", END, "ROOM_DELETED")], "obs")
    out = []
    for n in range(160):
        room = f"room-{rnd.randrange(12)}"
        customer = rnd.choice(CUSTOMERS)
        joined = MAR1 - timedelta(hours=2) + timedelta(seconds=rnd.randrange(3 * 86_400))
        joined += timedelta(microseconds=rnd.randrange(1_000_000))
        is_open = rnd.random() < 0.05
        left = None if is_open else joined + timedelta(milliseconds=rnd.randrange(1, 7_200_000))
        s = TrackedSession(
            room_name=room,
            room_sid=f"RM_{room}",
            participant_sid=f"PA_{n}",
            identity=f"id-{n}",
            name="",
            kind="agent",
            agent_name=f"agent-{n % 3}",
            attributes={"customer": customer} if customer is not None else {"other": "x"},
            joined_at=joined,
            last_seen_at=joined,
        )
        ops: list[Any] = [Open(s)]
        timeline = (
            None if left is None or rnd.random() < 0.05 else random_timeline(rnd, joined, left)
        )
        if left is not None:
            ops.append(Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s, timeline))
        store.apply(ops, "obs")
        out.append(
            dict(
                joined=joined,
                left=left,
                agent=s.agent_name,
                customer=customer or "",
                metadata=rooms[room] if room != "room-11" else "",
                spans=timeline.spans if timeline is not None else (),
            )
        )
    return out


def random_timeline(rnd: random.Random, joined: datetime, left: datetime) -> Timeline:
    """What an observer might have seen: from the join or a later first sight, states one
    after another with gaps (no state), some unknown to the framework, and stretches alone."""
    seen = joined if rnd.random() < 0.7 else joined + (left - joined) * rnd.random()
    spans: list[Span] = []
    for kind in ("state", "alone"):
        at = seen
        while at < left:
            end = min(left, at + timedelta(milliseconds=rnd.randrange(1, 1_200_000)))
            value = rnd.choice([*AGENT_STATES, "dancing", None])
            if kind == "alone":
                value = "" if rnd.random() < 0.4 else None
            if value is not None:
                spans.append(Span(kind, value, at, end))  # type: ignore[arg-type]
            at = end
    return Timeline(seen, tuple(spans))


def reference_key(session: dict[str, Any], by: str) -> str:
    if by == "agent":
        return str(session["agent"])
    if by == "attribute:customer":
        return str(session["customer"])
    if by == "room-metadata":
        return str(session["metadata"])
    assert by == "room-metadata:customer"
    try:
        value = json.loads(session["metadata"])
    except ValueError:
        return ""
    if not isinstance(value, dict) or "customer" not in value:
        return ""
    return str(value["customer"])


def ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def reference(
    sessions: list[dict[str, Any]], by: list[str], *, split_days: bool = True
) -> dict[tuple[str, ...], list[int]]:
    """{(keys..., day): [sessions, ms, billable minutes]} piece by piece, per UTC day (or
    one piece for the whole window)."""
    out: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in sessions:
        start = max(ms(s["joined"]), ms(START))
        end = min(ms(s["left"] or NOW), ms(END))
        day = MAR1
        while day < END:
            lo, hi = max(start, ms(day)), min(end, ms(day + timedelta(days=1)))
            if not split_days:
                lo, hi, day = start, end, END - timedelta(days=1)
            if hi > lo:
                keys = tuple(reference_key(s, g) for g in by if g != "day")
                if "day" in by:
                    keys += (day.strftime("%Y-%m-%d"),)
                got = out[keys]
                got[0] += 1
                got[1] += hi - lo
                got[2] += math.ceil((hi - lo) / 60_000)
            day += timedelta(days=1)
    return dict(out)


def reference_states(
    sessions: list[dict[str, Any]], by: list[str]
) -> dict[tuple[str, ...], dict[str, int]]:
    """{(keys..., day): {field: ms}} from every session's spans, cut at days and the window;
    unknown is the rest of each group's standing time."""
    out: dict[tuple[str, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in sessions:
        for sp in s["spans"]:
            day = MAR1
            while day < END:
                lo = max(ms(sp.start), ms(day), ms(START))
                hi = min(ms(sp.end), ms(day + timedelta(days=1)), ms(END))
                if "day" not in by:
                    lo, hi = max(ms(sp.start), ms(START)), min(ms(sp.end), ms(END))
                    day = END - timedelta(days=1)
                if hi > lo:
                    keys = tuple(reference_key(s, g) for g in by if g != "day")
                    if "day" in by:
                        keys += (day.strftime("%Y-%m-%d"),)
                    if sp.kind == "alone":
                        field = "alone_ms"
                    elif sp.value in AGENT_STATES:
                        field = f"state_{sp.value}_ms"
                    else:
                        field = "state_other_ms"
                    out[keys][field] += hi - lo
                day += timedelta(days=1)
    standing = reference(sessions, by, split_days="day" in by)
    result = {}
    for keys, (_, duration, _) in standing.items():
        got = dict(out.get(keys, {}))
        known = sum(v for k, v in got.items() if k != "alone_ms")
        got["state_unknown_ms"] = duration - known
        result[keys] = got
    return result


@pytest.fixture(scope="module")
def billed(
    run_template: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict[str, Any]]]:
    """The sessions written once per database kind: (the database's URL, what build says)."""
    url = copy_of(run_template, request, tmp_path_factory.mktemp("billed"))
    store = Store(url)
    try:
        return url, build(store)
    finally:
        store.close()


@pytest.fixture(scope="module")
def db_template(billed: tuple[str, list[dict[str, Any]]]) -> str:
    """Every test here gets a copy of the billed database as its `db_url`."""
    return billed[0]


@pytest.fixture
def billed_db(
    billed: tuple[str, list[dict[str, Any]]],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> list[dict[str, Any]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    return billed[1]


@pytest.mark.parametrize(
    "by",
    [
        ["attribute:customer", "day"],
        ["room-metadata:customer", "day"],
        ["room-metadata", "day"],
        ["agent", "attribute:customer", "day"],
        ["room-metadata:customer", "attribute:customer", "day"],
    ],
    ids=lambda by: "+".join(by),
)
def test_usage_by_attribute_and_room_metadata(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], by: list[str]
) -> None:
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-03-04", "--now", "2026-03-03T12:00:00Z"]
    for g in by:
        args += ["--by", g]
    assert main([*args, "--format", "json"]) == 0
    got = {
        tuple(str(line[g]) for g in by): [
            line["sessions"],
            line["duration_ms"],
            line["billable_minutes"],
        ]
        for line in json.loads(capsys.readouterr().out)
    }
    want = reference(billed_db, by)
    assert got == want
    # sessions without the key form their own group, never vanish
    assert sum(v[1] for v in got.values()) == sum(v[1] for v in reference(billed_db, []).values())
    assert any("" in k for k in got)


@pytest.mark.parametrize(
    "by",
    [["attribute:customer", "day"], ["room-metadata:customer"], []],
    ids=lambda by: "+".join(by) or "total",
)
def test_usage_states_and_alone_per_group(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], by: list[str]
) -> None:
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-03-04", "--now", "2026-03-03T12:00:00Z"]
    for g in by:
        args += ["--by", g]
    assert main([*args, "--states", "--format", "json"]) == 0
    fields = [f"state_{n}_ms" for n in (*AGENT_STATES, "other", "unknown")] + ["alone_ms"]
    got = {
        tuple(str(line[g]) for g in by): {f: line[f] for f in fields if line[f]}
        for line in json.loads(capsys.readouterr().out)
    }
    want = {
        k: {f: v for f, v in d.items() if v} for k, d in reference_states(billed_db, by).items()
    }
    assert got == want
    assert sum(d.get("state_speaking_ms", 0) for d in got.values()) > 0
    # the table and CSV carry the same columns
    assert main([*args, "--states"]) == 0
    head = capsys.readouterr().out.splitlines()[0].split()
    assert head[-8:] == [
        "initializing",
        "idle",
        "listening",
        "thinking",
        "speaking",
        "other",
        "unknown",
        "alone",
    ]


def test_csv_neutralises_a_formula_in_a_key(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-03-04", "--by", "attribute:customer"]
    assert main([*args, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "'=cmd," in out and "\r\n=cmd" not in out


@pytest.mark.parametrize("bad", ["attribute:", "room-metadata:", "attributes:x", "metadata"])
def test_a_bad_key_grouping_is_one_line_exit_2(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    capsys.readouterr()
    assert main(["usage", "--from", "2026-03-01", "--to", "2026-03-04", "--by", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--by" in err[0], err


def test_rooms_command(billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["rooms", "--format", "json"]) == 0
    rooms = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rooms) == {f"room-{i}" for i in range(11)}
    assert rooms["room-0"]["ended_at"] == "2026-03-04T00:00:00.000Z"
    assert rooms["room-0"]["end_reason"] == "ROOM_DELETED"
    assert rooms["room-0"]["duration_ms"] == 3 * 86_400_000
    assert rooms["room-1"]["metadata"] == METADATA[1] and rooms["room-1"]["ended_at"] is None
    assert main(["rooms", "--open", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10
    assert main(["rooms", "--room", "room-3"]) == 0
    table = capsys.readouterr().out
    assert "room-3" in table and "(1 rooms)" in table
    assert main(["rooms", "--since", "nonsense"]) == 2


def test_reconcile_rolls_up_and_compares_by_keyed_groupings(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    period = ["--from", "2026-03-01", "--to", "2026-03-04", "--now", "2026-03-05T00:00:00Z"]
    want = reference(
        [dict(s, left=s["left"] or datetime(2026, 3, 5, tzinfo=UTC)) for s in billed_db],
        ["attribute:customer"],
        split_days=False,
    )
    statement = tmp_path / "statement.csv"
    lines = ["group_kind,group_key,minutes"] + [
        f"attribute:customer,{key},{v[2]}" for (key,), v in sorted(want.items())
    ]
    statement.write_text("\n".join(lines) + "\n")
    base = ["reconcile", *period, "--no-settle"]
    assert main([*base, "--statement", str(statement)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert f"{len(want)} group(s) compared, 0 difference(s)" in out
    # the same period again with one number off: exit 1, the difference named
    statement.write_text("\n".join([*lines[:-1], lines[-1].rsplit(",", 1)[0] + ",1"]) + "\n")
    assert main([*base, "--statement", str(statement)]) == 1
    assert "attribute:customer" in capsys.readouterr().out
    # rolled up by room metadata too, on a period now finalized: new rows, not drift
    assert main([*base, "--by", "room-metadata:customer"]) == 0, capsys.readouterr()
    assert main([*base, "--by", "identity"]) == 2


def test_usage_states_by_month_count_sessions_holding_a_midnight_once(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Months are cut at a midnight: a session that holds another midnight lies in one
    month, yet its states come from its spans rather than its own columns."""
    capsys.readouterr()
    args = ["usage", "--from", "2026-02-20", "--to", "2026-03-04", "--now", "2026-03-03T12:00:00Z"]
    args += ["--by", "attribute:customer", "--by", "month", "--states", "--format", "json"]
    assert main(args) == 0
    fields = [f"state_{n}_ms" for n in (*AGENT_STATES, "other", "unknown")] + ["alone_ms"]
    lines = [line for line in json.loads(capsys.readouterr().out) if line["month"] == "2026-03"]
    got = {(line["attribute:customer"],): {f: line[f] for f in fields if line[f]} for line in lines}
    want = {
        k: {f: v for f, v in d.items() if v}
        for k, d in reference_states(billed_db, ["attribute:customer"]).items()
    }
    assert got == want
    assert any(
        START <= s["joined"] and s["left"] and s["joined"].date() < s["left"].date() < END.date()
        for s in billed_db
    )  # some lie in March and hold a midnight


@pytest.mark.parametrize("states", [False, True], ids=["standing", "states"])
def test_usage_summed_in_stretches_at_once_equals_one_query(
    billed_db: list[dict[str, Any]], db_url: str, states: bool
) -> None:
    """The window split by join time over several connections gives the sums of one query,
    whatever the number of slices, with open sessions and sessions holding the cuts."""
    from concurrent.futures import ThreadPoolExecutor

    from observer.db.usage import Fanout, UsageSpec, usage_totals
    from observer.reports.usage import bucket_edges

    window = [
        (bucket_edges(START, END, "day"), ("attribute:customer",)),
        ((START - timedelta(hours=5), END), ("agent", "room-metadata:customer")),
        (bucket_edges(START - timedelta(days=20), END, "month"), ("room-metadata",)),
    ]
    store = Store(db_url)
    try:
        # sessions that join right on a cut (2 and 3 slices of the day window cut there)
        for n, at in enumerate((MAR1 + timedelta(days=1), MAR1 + timedelta(days=1, hours=12))):
            s = TrackedSession(
                room_name="room-1",
                room_sid="RM_room-1",
                participant_sid=f"PA_cut-{n}",
                identity=f"id-cut-{n}",
                name="",
                kind="agent",
                agent_name="agent-0",
                attributes={"customer": "acme"},
                joined_at=at,
                last_seen_at=at,
            )
            left = at + timedelta(minutes=3)
            store.apply(
                [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)], "obs"
            )
        for edges, by in window:
            spec = UsageSpec(edges=edges, group_by=by, open_until=NOW, states=states)
            with store.engine.connect() as conn:
                one = sorted(usage_totals(conn, spec))
                assert one and sum(t.sessions for t in one) > 20
                for parts in (2, 3, 7):
                    with ThreadPoolExecutor(max_workers=parts) as threads:
                        fanout = Fanout(parts, threads, store.engine.connect)
                        got = sorted(usage_totals(conn, spec, fanout))
                    assert got == one, (edges, by, parts)
    finally:
        store.close()


@pytest.mark.parametrize("states", [False, True], ids=["standing", "states"])
def test_windows_summed_together_equal_each_alone(
    billed_db: list[dict[str, Any]], db_url: str, states: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Days and months that end together (the page's chart and month table) read the
    sessions once, and give what each query gives alone: with sessions across midnights,
    a month's end, the windows' starts and `now`, open ones, and in slices."""
    from observer.db.usage import totals
    from observer.reports import usage

    read: list[str] = []
    sum_rows = totals.sum_rows

    def spy(*args: Any) -> Any:
        read.append(args[-1])
        return sum_rows(*args)

    monkeypatch.setattr(totals, "sum_rows", spy)

    def q(start: datetime, unit: str, by: str) -> usage.UsageQuery:
        return usage.UsageQuery(start, NOW, NOW, by=(unit, by), states=states)

    store = Store(db_url)
    try:
        for by in ("attribute:customer", "agent", "room-metadata:customer"):
            queries = [
                q(START, "day", by),
                q(START - timedelta(days=29), "month", by),
                q(START - timedelta(days=1), "day", by),
            ]
            for parts in (1, 3):
                store.usage_parts = parts
                alone = [usage.compute(store, x) for x in queries]
                assert sum(line.sessions for line in alone[1]) > 100
                read.clear()
                assert usage.compute_together(store, queries) == alone, (by, parts)
                assert sorted(read) == ["cut", "cut", "cut", "whole"]  # the bulk read once
        # what cannot be read together (a window not starting at a midnight, or not ending
        # with the others) is read alone, with the same result
        odd = [q(START + timedelta(hours=3), "day", "agent"), q(START, "month", "agent")]
        odd.append(usage.UsageQuery(START, END, NOW, by=("day", "agent"), states=states))
        read.clear()
        assert usage.compute_together(store, odd) == [usage.compute(store, x) for x in odd]
        assert "whole" not in read
    finally:
        store.close()


def test_usage_states_cut_at_a_price_change_add_up(
    billed_db: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A price change in the middle of a day cuts every session that holds it (edges that
    are not midnights): the time and the states of each group still add up to the window's."""
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'currency = "EUR"\n\n[[agent_minute]]\nfrom = 2026-01-01\nprice = "0.01"\n\n'
        '[[agent_minute]]\nfrom = 2026-03-02T07:30:00Z\nprice = "0.02"\n'
    )
    capsys.readouterr()
    args = ["usage", "--from", "2026-03-01", "--to", "2026-03-04", "--now", "2026-03-03T12:00:00Z"]
    args += ["--by", "attribute:customer", "--states", "--prices", str(prices), "--format", "json"]
    assert main(args) == 0
    fields = [f"state_{n}_ms" for n in (*AGENT_STATES, "other", "unknown")] + ["alone_ms"]
    lines = json.loads(capsys.readouterr().out)
    got = {(line["attribute:customer"],): {f: line[f] for f in fields if line[f]} for line in lines}
    want = {
        k: {f: v for f, v in d.items() if v}
        for k, d in reference_states(billed_db, ["attribute:customer"]).items()
    }
    assert got == want
    standing = reference(billed_db, ["attribute:customer"], split_days=False)
    assert {(x["attribute:customer"],): x["duration_ms"] for x in lines} == {
        k: v[1] for k, v in standing.items()
    }
    cut = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
    assert any(s["joined"] < cut < (s["left"] or NOW) for s in billed_db)  # some hold it


def test_the_minutes_view_follows_late_writes_to_days_that_are_over(
    billed_db: list[dict[str, Any]], db_url: str
) -> None:
    """The page's sums (the days of a chart and the months of a table read together) of
    days that are over follow a session of such a day closed late (at an observer's start,
    by `reconcile`'s settling), given attributes, or its room's new metadata: the numbers
    are always those of `observer usage`, each query on its own."""
    from observer.core.changes import UpdateAttributes
    from observer.reports import usage

    queries = [
        usage.UsageQuery(START - timedelta(days=3), NOW, NOW, by=("day", by))
        for by in ("agent", "attribute:customer", "room-metadata:customer")
    ] + [usage.UsageQuery(START - timedelta(days=28), NOW, NOW, by=("month", "agent"))]

    def check() -> dict[str, set[tuple[str, str]]]:
        """The (day, group) of each grouping's chart, once `compute_together` is checked."""
        month = queries[-1]
        seen = {}
        for q in queries:
            pair = [q, replace(month, by=("month", q.by[1]))] if q is not month else [queries[0], q]
            together = usage.compute_together(store, pair)
            assert together == [usage.compute(store, x) for x in pair], q.by
            seen[q.by[1]] = {(str(x.groups[0]), str(x.groups[1])) for x in together[0]}
        return seen

    def session(n: str, joined: datetime, customer: str = "acme") -> TrackedSession:
        return TrackedSession(
            room_name="room-1",
            room_sid="RM_room-1",
            participant_sid=f"PA_late-{n}",
            identity=f"id-late-{n}",
            name="",
            kind="agent",
            agent_name="agent-late",
            attributes={"customer": customer},
            joined_at=joined,
            last_seen_at=joined,
        )

    store = Store(db_url)
    try:
        assert ("2026-03-02", "agent-late") not in check()["agent"]

        # a late close of a session of 2 March (an observer restarting, say)
        late = session("close", datetime(2026, 3, 2, 10, tzinfo=UTC))
        left = late.joined_at + timedelta(minutes=7)
        store.apply([Open(late)], "obs")
        store.apply([Close(late.key, left, None, END_RTC, None, left, late)], "obs")
        assert ("2026-03-02", "agent-late") in check()["agent"]

        # attributes set on that closed row
        store.apply([UpdateAttributes(late.key, {"customer": "globex"}, "agent-late")], "obs")
        assert ("2026-03-02", "globex") in check()["attribute:customer"]

        # `observer reconcile` settling a row left open on 28 February, last seen at 09:30:
        # open, it counted up to now; settled, it ends on its day
        stale = session("stale", datetime(2026, 2, 28, 9, tzinfo=UTC), "initech")
        stale = replace(stale, last_seen_at=stale.joined_at + timedelta(minutes=30))
        store.apply([Open(stale)], "obs")
        assert ("2026-03-01", "initech") in check()["attribute:customer"]
        with store.rollup_transaction() as tx:
            tx.settle(store.stale_open_sessions(datetime(2026, 3, 1, tzinfo=UTC)), NOW)
        by_customer = check()["attribute:customer"]
        assert ("2026-02-28", "initech") in by_customer
        assert ("2026-03-01", "initech") not in by_customer

        # a room's new metadata regroups its sessions of days that are over
        at = datetime.now(UTC)
        store.apply(
            [RoomSeen("RM_room-1", "room-1", '{"customer": "umbrella"}', MAR1, at, 0, 0)], "obs"
        )
        assert ("2026-03-02", "umbrella") in check()["room-metadata:customer"]

        # a row closed across a midnight counts in both days
        night = session("night", datetime(2026, 3, 1, 23, 50, tzinfo=UTC), "hooli")
        late_left = night.joined_at + timedelta(minutes=20)
        store.apply(
            [Open(night), Close(night.key, late_left, None, END_RTC, None, late_left, night)], "obs"
        )
        by_customer = check()["attribute:customer"]
        assert {("2026-03-01", "hooli"), ("2026-03-02", "hooli")} <= by_customer
    finally:
        store.close()
