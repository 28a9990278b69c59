"""What to send to a billing system, from usage and the ledger of what was sent. Pure: no
I/O, no clock (times are given).

Usage is counted per customer value (an attribute or room-metadata key), agent, bucket
(a UTC day, or a finalized period) and quantity kind. The customer value is mapped to the
billing system's customer id; a value without one is listed, never sent under a guess.
Each (target, customer id, agent, bucket, kind) is a ledger key: what was sent for it
(pending or acknowledged events) is compared with what the usage gives now, and only the
difference is planned, as a new event with its own identifier (`seq` 0 for the first,
1, 2, ... for corrections). Refused events sent nothing, so they count for nothing; a key
whose last event was refused is held (nothing planned for it) until a run is told to
retry refused events, so a refusal is answered once, not on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

ExportState = Literal["pending", "acknowledged", "refused"]
EXPORT_STATES: tuple[ExportState, ...] = ("pending", "acknowledged", "refused")
IDENTIFIER_MAX = 100  # Stripe's limit on a meter event's identifier

MINUTES = "minutes"  # billable agent minutes, by the per-session minute rule
COST = "cost"  # the priced cost, exact decimal
TOKENS_PREFIX = "tokens:"  # tokens:<counter>:<provider>/<model>


def token_kind(counter: str, provider: str, model: str) -> str:
    """The quantity kind of one model's counter (`input_tokens`, `output_tokens`)."""
    return f"{TOKENS_PREFIX}{counter}:{provider}/{model}"


@dataclass(frozen=True)
class Usage:
    """One quantity of one customer value, agent and bucket, as the sessions give it now."""

    customer_value: str  # the key's value; "" when sessions have none
    agent: str  # "" for agents without a name
    start: datetime  # the bucket [start, end), UTC
    end: datetime
    kind: str  # MINUTES, COST or a token_kind
    quantity: Decimal


@dataclass(frozen=True)
class Key:
    """What the ledger adds up events by, for one target."""

    customer: str  # the billing system's customer id
    agent: str
    start: datetime
    end: datetime
    kind: str


@dataclass(frozen=True)
class Sent:
    """One row of the ledger, as far as planning needs it."""

    key: Key
    seq: int
    quantity: Decimal
    state: ExportState
    customer_value: str = ""  # the value the event was sent for


@dataclass(frozen=True)
class Event:
    """One event to record as pending and send."""

    target: str
    identifier: str
    key: Key
    customer_value: str
    seq: int  # 0: the first event of its key; above: a correction
    quantity: Decimal  # for a correction, the difference: may be negative
    timestamp: datetime  # when the usage happened, as the billing system files it

    @property
    def is_correction(self) -> bool:
        return self.seq > 0


@dataclass(frozen=True)
class OutOfWindow:
    """An event the target cannot take at its time; it is not sent, nor recorded."""

    event: Event
    reason: str


@dataclass(frozen=True)
class Remapped:
    """A customer value the table now maps to another billing id than the one its usage
    was sent under: the `keys` already billed under `was` stay there (late data is
    corrected there); only buckets never billed go to `now`."""

    customer_value: str
    was: str
    now: str
    keys: int


@dataclass(frozen=True)
class Plan:
    events: tuple[Event, ...]
    unmapped: dict[str, Decimal] = field(default_factory=dict)  # value -> minutes not sent
    out_of_window: tuple[OutOfWindow, ...] = ()
    unchanged: int = 0  # keys whose sent total equals the usage
    held: int = 0  # keys whose last event was refused: nothing planned until retried
    # negative corrections a target cannot carry: settled by hand (a credit note), never sent
    by_hand: tuple[Event, ...] = ()
    # refused keys retried that owe nothing now: a 0 recorded as acknowledged, never sent
    released: tuple[Event, ...] = ()
    # customer values without a billing id now whose usage was sent before: value -> keys
    # left as sent (a mapping change never plans a correction)
    kept_unmapped: dict[str, int] = field(default_factory=dict)
    remapped: tuple[Remapped, ...] = ()


@dataclass(frozen=True)
class Window:
    """The times a target accepts, relative to now (Stripe: 35 days back, 5 minutes on)."""

    max_age: timedelta | None = None
    max_ahead: timedelta | None = None
    negative: bool = True  # whether the target takes a negative quantity (a correction)


def identifier(target: str, key: Key, seq: int) -> str:
    """A deterministic identifier (at most `IDENTIFIER_MAX` characters): the same event gets
    the same one on every run, so a billing system that deduplicates by it takes a resent
    event once. Names can be long and hold anything, so they are hashed."""
    parts = (
        target,
        key.customer,
        key.agent,
        key.start.isoformat(),
        key.end.isoformat(),
        key.kind,
        str(seq),
    )
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"obs_{key.start:%Y%m%d}_{digest}_{seq}"


def usage_time(start: datetime, end: datetime) -> datetime:
    """The time a bucket's usage is filed at: its last whole second, inside the bucket, so
    a billing period that starts at its end does not take it."""
    return max(start, end - timedelta(seconds=1))


def map_customers(
    values: Iterable[str], mapping: Mapping[str, str] | None
) -> tuple[dict[str, str], set[str]]:
    """Customer value -> billing id (the value itself when `mapping` is None), and the
    values without one. The empty value (sessions without the key) never has one."""
    ids: dict[str, str] = {}
    missing: set[str] = set()
    for v in values:
        billing = (v if mapping is None else mapping.get(v, "")).strip()
        if v == "" or billing == "":
            missing.add(v)
        else:
            ids[v] = billing
    return ids, missing


def plan(
    target: str,
    usage: Sequence[Usage],
    ledger: Sequence[Sent],
    *,
    mapping: Mapping[str, str] | None,
    now: datetime,
    window: Window = Window(),
    retry_refused: bool = False,
) -> Plan:
    """The events to send so that each key's acknowledged-or-pending total equals its usage.

    Usage of a customer value without a billing id is listed in `unmapped` (its minutes)
    and not planned. A key the ledger has but the usage no longer gives is corrected to 0.
    Events the target's `window` does not take are listed, not planned; a negative
    correction a target cannot carry goes to `by_hand`. A key whose last event was refused
    is held, unless `retry_refused`: then it is planned again under a new identifier, or,
    when its usage now maps elsewhere (nothing owed), released by an event of 0. A change
    of the mapping plans nothing by itself (`_left_as_sent`): keys sent for a value without
    a billing id now are left (`kept_unmapped`), and a value mapped to another id keeps the
    buckets billed under the old one there (`remapped`).
    """
    sent: dict[Key, Decimal] = {}
    next_seq: dict[Key, int] = {}
    last_state: dict[Key, ExportState] = {}
    billed_as: dict[Key, set[str]] = {}  # the values each key's usage was sent for
    for s in ledger:
        if s.seq + 1 >= next_seq.get(s.key, 0):
            next_seq[s.key], last_state[s.key] = s.seq + 1, s.state
        if s.state != "refused":
            sent[s.key] = sent.get(s.key, Decimal(0)) + s.quantity
            if s.customer_value:
                billed_as.setdefault(s.key, set()).add(s.customer_value)
    recorded = {v for vs in billed_as.values() for v in vs}
    ids, missing = map_customers({u.customer_value for u in usage} | recorded, mapping)
    left = _left_as_sent(billed_as, sent, ids, missing)
    fresh: dict[Key, Decimal] = {}
    value_of: dict[Key, str] = {}
    unmapped: dict[str, Decimal] = {v: Decimal(0) for v in left.unmapped}
    for u in usage:
        if u.customer_value in missing:
            if u.kind == MINUTES:
                unmapped[u.customer_value] = unmapped.get(u.customer_value, Decimal(0)) + u.quantity
            else:
                unmapped.setdefault(u.customer_value, Decimal(0))
            continue
        # a bucket already billed under an earlier id stays there
        billing = left.pinned.get((u.customer_value, u.agent, u.start, u.end, u.kind))
        k = Key(billing or ids[u.customer_value], u.agent, u.start, u.end, u.kind)
        fresh[k] = fresh.get(k, Decimal(0)) + u.quantity
        value_of.setdefault(k, u.customer_value)
    events: list[Event] = []
    late: list[OutOfWindow] = []
    by_hand: list[Event] = []
    released: list[Event] = []
    unchanged = held = 0
    refused = {k for k, state in last_state.items() if state == "refused"}
    for k in sorted(fresh.keys() | sent.keys() | refused, key=_order):
        if k in refused and not retry_refused:
            held += 1
            continue
        if k in left.frozen:
            continue
        difference = fresh.get(k, Decimal(0)) - sent.get(k, Decimal(0))
        seq = next_seq.get(k, 0)
        if difference == 0 and k in refused:
            # retried, and nothing is owed for it now (its usage maps to another customer):
            # an event of 0, recorded and never sent, releases the key
            released.append(
                Event(
                    target,
                    identifier(target, k, seq),
                    k,
                    value_of.get(k, ""),
                    seq,
                    difference,
                    usage_time(k.start, k.end),
                )
            )
            continue
        if difference == 0:
            unchanged += k in sent
            continue
        event = Event(
            target=target,
            identifier=identifier(target, k, seq),
            key=k,
            customer_value=value_of.get(k, ""),
            seq=seq,
            quantity=difference,
            timestamp=usage_time(k.start, k.end),
        )
        reason = _outside(event.timestamp, now, window)
        if reason is not None:
            late.append(OutOfWindow(event, reason))
        elif difference < 0 and not window.negative:
            by_hand.append(event)
        else:
            events.append(event)
    return Plan(
        tuple(events),
        unmapped,
        tuple(late),
        unchanged,
        held,
        tuple(by_hand),
        tuple(released),
        {v: len(keys) for v, keys in sorted(left.unmapped.items())},
        left.remapped,
    )


Slot = tuple[str, str, datetime, datetime, str]  # customer value, agent, bucket, kind


@dataclass
class _Left:
    """What a mapping change leaves as it was sent."""

    frozen: set[Key] = field(default_factory=set)  # keys nothing is planned for
    unmapped: dict[str, set[Key]] = field(default_factory=dict)  # value -> its frozen keys
    pinned: dict[Slot, str] = field(default_factory=dict)  # slot -> the id it was billed as
    remapped: tuple[Remapped, ...] = ()


def _left_as_sent(
    billed_as: Mapping[Key, set[str]],
    sent: Mapping[Key, Decimal],
    ids: Mapping[str, str],
    missing: set[str],
) -> _Left:
    """Only a change of the usage plans a correction, never a change of the mapping: the
    keys of a value that lost its billing id are left as sent (the value is listed), and
    a value mapped to another id keeps each bucket billed under the old one there (late
    data is corrected there); only buckets never billed go to the new id."""
    out = _Left()
    slots: dict[Slot, list[Key]] = {}
    for k, values in billed_as.items():
        for v in values:
            if v in missing:
                out.frozen.add(k)
                out.unmapped.setdefault(v, set()).add(k)
            else:
                slots.setdefault((v, k.agent, k.start, k.end, k.kind), []).append(k)
    moved: dict[tuple[str, str, str], int] = {}
    for slot, keys in slots.items():
        v = slot[0]
        billed = sorted((k for k in keys if sent.get(k, Decimal(0)) != 0), key=_order)
        if not billed:
            continue  # everything sent for it was taken back: nothing is billed anywhere
        home = next((k for k in billed if k.customer == ids[v]), billed[0])
        out.frozen |= {k for k in billed if k != home}
        if home.customer != ids[v]:
            out.pinned[slot] = home.customer
            moved[(v, home.customer, ids[v])] = moved.get((v, home.customer, ids[v]), 0) + 1
    out.remapped = tuple(Remapped(v, was, now, n) for (v, was, now), n in sorted(moved.items()))
    return out


def _outside(at: datetime, now: datetime, window: Window) -> str | None:
    if window.max_age is not None and at < now - window.max_age:
        return f"older than the {window.max_age.days} days the target accepts"
    if window.max_ahead is not None and at > now + window.max_ahead:
        return f"more than {int(window.max_ahead.total_seconds())} s ahead of now"
    return None


def _order(k: Key) -> tuple[datetime, str, str, str]:
    return (k.start, k.customer, k.agent, k.kind)
