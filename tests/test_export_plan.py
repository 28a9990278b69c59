"""The export planner: usage and the ledger in, events out (new ones and corrections)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from observer.export.planner import (
    IDENTIFIER_MAX,
    MINUTES,
    Key,
    Sent,
    Usage,
    Window,
    identifier,
    plan,
    token_kind,
)

pytestmark = pytest.mark.unit

D1 = datetime(2026, 3, 1, tzinfo=UTC)
D2 = D1 + timedelta(days=1)
D3 = D2 + timedelta(days=1)
NOW = datetime(2026, 3, 10, tzinfo=UTC)


def u(value: str, minutes: int | str, *, agent: str = "bot", day: datetime = D1) -> Usage:
    return Usage(value, agent, day, day + timedelta(days=1), MINUTES, Decimal(minutes))


def key(customer: str, *, agent: str = "bot", day: datetime = D1, kind: str = MINUTES) -> Key:
    return Key(customer, agent, day, day + timedelta(days=1), kind)


def sent(k: Key, seq: int, quantity: int, state: str = "acknowledged") -> Sent:
    return Sent(k, seq, Decimal(quantity), state)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("usage", "ledger", "expected"),
    [
        # nothing sent yet: one event per key, seq 0
        ([u("acme", 5)], [], [("acme", 0, 5)]),
        # sessions of one customer value and agent in a day add up
        ([u("acme", 5), u("acme", 2)], [], [("acme", 0, 7)]),
        # sent and unchanged: nothing
        ([u("acme", 5)], [sent(key("acme"), 0, 5)], []),
        # pending counts as sent: it is resent by its own identifier, never planned twice
        ([u("acme", 5)], [sent(key("acme"), 0, 5, "pending")], []),
        # late data: the difference, as correction 1
        ([u("acme", 8)], [sent(key("acme"), 0, 5)], [("acme", 1, 3)]),
        # settled shorter: a negative correction
        ([u("acme", 4)], [sent(key("acme"), 0, 5), sent(key("acme"), 1, 1)], [("acme", 2, -2)]),
        # a key the usage no longer gives is corrected to 0
        ([], [sent(key("acme"), 0, 5)], [("acme", 1, -5)]),
        # a key whose last event was refused is held: not planned again on each run
        ([u("acme", 5)], [sent(key("acme"), 0, 5, "refused")], []),
        ([u("acme", 9)], [sent(key("acme"), 0, 5), sent(key("acme"), 1, 4, "refused")], []),
        # a refusal followed by an acknowledged event holds nothing any more
        (
            [u("acme", 6)],
            [sent(key("acme"), 0, 5, "refused"), sent(key("acme"), 1, 5)],
            [("acme", 2, 1)],
        ),
        # zero usage is not sent
        ([u("acme", 0)], [], []),
    ],
)
def test_plan_table(
    usage: list[Usage], ledger: list[Sent], expected: list[tuple[str, int, int]]
) -> None:
    p = plan("http", usage, ledger, mapping=None, now=NOW)
    assert [(e.key.customer, e.seq, e.quantity) for e in p.events] == [
        (c, s, Decimal(q)) for c, s, q in expected
    ]
    for e in p.events:
        assert e.identifier == identifier("http", e.key, e.seq)
        assert e.is_correction == (e.seq > 0)


def test_keys_are_customer_agent_day_and_kind() -> None:
    tokens = token_kind("input_tokens", "openai", "gpt-4o-mini")
    usage = [
        u("acme", 1),
        u("acme", 2, agent="other"),
        u("acme", 3, day=D2),
        u("beta", 4),
        Usage("acme", "bot", D1, D2, tokens, Decimal(1000)),
    ]
    p = plan("http", usage, [], mapping=None, now=NOW)
    got = {(e.key.customer, e.key.agent, e.key.start, e.key.kind): e.quantity for e in p.events}
    assert got == {
        ("acme", "bot", D1, MINUTES): 1,
        ("acme", "other", D1, MINUTES): 2,
        ("acme", "bot", D2, MINUTES): 3,
        ("beta", "bot", D1, MINUTES): 4,
        ("acme", "bot", D1, tokens): 1000,
    }
    assert len({e.identifier for e in p.events}) == 5


def test_mapping_table_and_unmapped_customers() -> None:
    usage = [u("acme", 5), u("nobody", 7), u("nobody", 1, day=D2), u("", 3)]
    p = plan("stripe", usage, [], mapping={"acme": "cus_A", "beta": "beta"}, now=NOW)
    assert [(e.key.customer, e.customer_value, e.quantity) for e in p.events] == [
        ("cus_A", "acme", 5)
    ]
    assert p.unmapped == {"nobody": 8, "": 3}
    # without a table the value is the id, but sessions without the key are never sent
    p = plan("stripe", usage, [], mapping=None, now=NOW)
    assert sorted(e.key.customer for e in p.events) == ["acme", "nobody", "nobody"]
    assert p.unmapped == {"": 3}


def test_identifiers_are_deterministic_distinct_and_short() -> None:
    long_name = "x" * 5000
    k = Key(long_name, long_name, D1, D2, token_kind("output_tokens", long_name, long_name))
    ids = {identifier(t, k, s) for t in ("http", "stripe") for s in range(3)}
    assert len(ids) == 6
    assert all(len(i) <= IDENTIFIER_MAX for i in ids)
    assert identifier("http", k, 0) == identifier("http", Key(*vars(k).values()), 0)
    assert identifier("http", k, 0) != identifier("http", key("acme"), 0)


def test_window_lists_what_the_target_refuses() -> None:
    window = Window(max_age=timedelta(days=35), max_ahead=timedelta(minutes=5))
    old = D1 - timedelta(days=40)
    usage = [u("acme", 5), u("acme", 6, day=old), u("acme", 7, day=NOW)]
    p = plan("stripe", usage, [], mapping=None, now=NOW, window=window)
    assert [e.quantity for e in p.events] == [5]
    reasons = sorted((o.event.quantity, o.reason) for o in p.out_of_window)
    assert reasons == [
        (6, "older than the 35 days the target accepts"),
        (7, "more than 300 s ahead of now"),
    ]
    # the usage of a bucket is filed inside it, at its last second
    assert p.events[0].timestamp == D2 - timedelta(seconds=1)


def test_second_plan_after_sending_the_first_is_empty() -> None:
    usage = [u("acme", 5), u("beta", 3, day=D3)]
    first = plan("http", usage, [], mapping=None, now=NOW)
    ledger = [Sent(e.key, e.seq, e.quantity, "acknowledged") for e in first.events]
    again = plan("http", usage, ledger, mapping=None, now=NOW)
    assert again.events == ()
    assert again.unchanged == 2


def test_a_target_without_negative_values_lists_a_negative_correction() -> None:
    ledger = [sent(key("acme"), 0, 5), sent(key("beta"), 0, 1)]
    usage = [u("acme", 3), u("beta", 4)]
    p = plan("stripe", usage, ledger, mapping=None, now=NOW, window=Window(negative=False))
    assert [(e.key.customer, e.quantity) for e in p.events] == [("beta", 3)]
    assert [(e.key.customer, e.seq, e.quantity) for e in p.by_hand] == [("acme", 1, -2)]
    assert p.out_of_window == ()
    # a negative correction settled by hand is acknowledged in the ledger: nothing is left
    settled = [*ledger, sent(key("acme"), 1, -2), sent(key("beta"), 1, 3)]
    again = plan("stripe", usage, settled, mapping=None, now=NOW, window=Window(negative=False))
    assert again.events == () and again.by_hand == () and again.unchanged == 2


def test_refused_keys_are_held_until_retried() -> None:
    ledger = [sent(key("acme"), 0, 5, "refused"), sent(key("beta"), 0, 2)]
    usage = [u("acme", 5), u("beta", 2)]
    held = plan("http", usage, ledger, mapping=None, now=NOW)
    assert held.events == () and held.held == 1 and held.unchanged == 1
    retried = plan("http", usage, ledger, mapping=None, now=NOW, retry_refused=True)
    # again under a new identifier: a target may keep a refused request's answer by its key
    assert [(e.key.customer, e.seq, e.quantity) for e in retried.events] == [("acme", 1, 5)]
    assert retried.events[0].identifier != identifier("http", key("acme"), 0)
    assert retried.held == 0
    # refused under an id the usage no longer maps to: released by an event of 0, not sent
    moved = plan(
        "http",
        usage,
        ledger,
        mapping={"acme": "cus_A", "beta": "beta"},
        now=NOW,
        retry_refused=True,
    )
    assert [(e.key.customer, e.quantity) for e in moved.events] == [("cus_A", 5)]
    assert [(e.key.customer, e.seq, e.quantity) for e in moved.released] == [("acme", 1, 0)]
    assert plan("http", [], ledger, mapping=None, now=NOW).held == 1


def sent_for(value: str, k: Key, seq: int, quantity: int, state: str = "acknowledged") -> Sent:
    return Sent(k, seq, Decimal(quantity), state, value)  # type: ignore[arg-type]


def test_a_customer_dropped_from_the_table_is_listed_and_never_corrected() -> None:
    ledger = [sent_for("acme", key("cus_A"), 0, 5), sent_for("beta", key("cus_B"), 0, 2)]
    usage = [u("acme", 5), u("beta", 3)]
    for window in (Window(), Window(negative=False)):
        p = plan("stripe", usage, ledger, mapping={"beta": "cus_B"}, now=NOW, window=window)
        # beta's late minute is a real change; acme lost its billing id, nothing more
        assert [(e.key.customer, e.seq, e.quantity) for e in p.events] == [("cus_B", 1, 1)]
        assert p.by_hand == () and p.out_of_window == ()
        assert p.unmapped == {"acme": 5}
        assert p.kept_unmapped == {"acme": 1}
    # its usage gone as well as its id: still listed, still not corrected
    p = plan("http", [u("beta", 2)], ledger, mapping={"beta": "cus_B"}, now=NOW)
    assert p.events == () and p.unmapped == {"acme": 0} and p.kept_unmapped == {"acme": 1}
    # mapped again: only what the usage changed meanwhile is sent, under the same id
    p = plan(
        "http",
        [u("acme", 6), u("beta", 2)],
        ledger,
        mapping={"acme": "cus_A", "beta": "cus_B"},
        now=NOW,
    )
    assert [(e.key.customer, e.seq, e.quantity) for e in p.events] == [("cus_A", 1, 1)]
    assert p.unmapped == {} and p.kept_unmapped == {}


def test_a_customer_mapped_to_another_id_keeps_what_was_billed_where_it_was() -> None:
    ledger = [sent_for("acme", key("cus_A"), 0, 5)]
    usage = [u("acme", 5), u("acme", 4, day=D2)]
    p = plan("stripe", usage, ledger, mapping={"acme": "cus_NEW"}, now=NOW)
    # the day sent under cus_A stays there (no charge under cus_NEW, no credit under
    # cus_A); the day never sent goes to the new id
    assert [(e.key.customer, e.key.start, e.seq, e.quantity) for e in p.events] == [
        ("cus_NEW", D2, 0, 4)
    ]
    assert p.by_hand == () and p.unmapped == {}
    assert [(r.customer_value, r.was, r.now, r.keys) for r in p.remapped] == [
        ("acme", "cus_A", "cus_NEW", 1)
    ]
    # late data on the day billed under cus_A is corrected there, by the difference
    p = plan("http", [u("acme", 7)], ledger, mapping={"acme": "cus_NEW"}, now=NOW)
    assert [(e.key.customer, e.seq, e.quantity) for e in p.events] == [("cus_A", 1, 2)]
    # a refused event billed nothing: its usage goes to the new id (see --retry-refused)
    refused = [sent_for("acme", key("cus_A"), 0, 5, "refused")]
    p = plan("http", [u("acme", 5)], refused, mapping={"acme": "cus_NEW"}, now=NOW)
    assert [(e.key.customer, e.seq, e.quantity) for e in p.events] == [("cus_NEW", 0, 5)]
    assert p.remapped == ()
