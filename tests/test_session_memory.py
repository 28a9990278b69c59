"""A session that lasts a day holds no more of the daemon's memory than one that lasts a
minute: the tracker hands each span of its timeline out as it ends (to be written) and
keeps only the state and company the agent is in. Measured by walking every object the
tracker reaches, after the first minute and after 24 hours of events, and compared with
what keeping the spans until the close (as before) would hold. Pure logic, virtual time."""

from __future__ import annotations

import gc
import random
import sys
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from observer.core.changes import Close, SpanEnded
from observer.core.events import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomJoined,
    SeenParticipant,
    Tick,
)
from observer.core.timeline import AGENT_STATES, Span, span_ms
from observer.core.tracker import SessionTracker

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY_S = 86_400
SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def footprint(*roots: object) -> tuple[int, int]:
    """(objects, bytes) reachable from `roots`, each object counted once; classes, modules
    and functions are shared code, not the session's."""
    seen: set[int] = set()
    stack: list[Any] = list(roots)
    size = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, SKIP):
            continue
        seen.add(id(o))
        size += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return len(seen), size


def t(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


AGENT = SeenParticipant("PA", "agent", "", "agent", {"lk.agent.state": "listening"}, t(0))
CALLER = SeenParticipant("PC", "caller", "", "standard", {}, t(0))


def day_of_talk(rng: random.Random, start: float, stop: float) -> list[Event]:
    """The agent's state changes every 2 to 7 seconds; the observer's clock ticks every
    second; every ten minutes the caller steps out for half a minute (time alone)."""
    out: list[Event] = []
    at, next_tick, next_break, now = start, start, start + 600, ""
    while at < stop:
        while next_tick <= at:
            out.append(Tick(t(next_tick)))
            next_tick += 1
        if at >= next_break:
            out.append(ParticipantLeft("RM", "PC", "CLIENT_INITIATED", t(at)))
            out.append(ParticipantJoined("room", "RM", CALLER, t(at + 30)))
            next_break += 600
            at += 30.5
        now = rng.choice([s for s in AGENT_STATES[1:] if s != now])
        out.append(AttributesChanged("RM", "PA", {"lk.agent.state": now}, t(at)))
        at += rng.uniform(2, 7)
    return out


def test_a_day_long_session_holds_no_more_memory_than_its_first_minute() -> None:
    rng = random.Random(24)
    tracker = SessionTracker(frozenset({"agent"}))
    written: list[Span] = []  # what the tracker handed out: the old timeline kept all of it

    def feed(events: list[Event]) -> None:
        for ev in events:
            for w in tracker.handle(ev).writes:
                if isinstance(w, SpanEnded):
                    written.append(w.span)

    feed([RoomJoined("room", "RM", (AGENT, CALLER), t(0)), *day_of_talk(rng, 1, 60)])
    gc.collect()
    first_minute = footprint(tracker)

    feed(day_of_talk(rng, 60, DAY_S))
    gc.collect()
    after_a_day = footprint(tracker)
    # before, every span stayed in the session's timeline until the close
    kept_before = footprint(tracker, written)

    print(
        f"\ntracker after 1 min: {first_minute[0]} objects, {first_minute[1]} bytes;"
        f" after 24 h: {after_a_day[0]} objects, {after_a_day[1]} bytes;"
        f" keeping the spans (before): {kept_before[0]} objects, {kept_before[1]} bytes"
        f" ({len(written)} spans)"
    )
    assert len(written) > 15_000  # a day of state changes every few seconds
    # the same objects, give or take the values that moved on (times, the latest state)
    assert abs(after_a_day[0] - first_minute[0]) <= 20
    assert abs(after_a_day[1] - first_minute[1]) <= 4096
    assert kept_before[1] > 100 * after_a_day[1]

    # nothing handed out was lost: with the close's own spans, the whole day is there
    leave = ParticipantLeft("RM", "PA", "CLIENT_INITIATED", t(DAY_S))
    (close,) = [w for w in tracker.handle(leave).writes if isinstance(w, Close)]
    assert close.timeline is not None and len(close.timeline.spans) <= 2
    spans = [*written, *close.timeline.spans]
    states = sum(span_ms(s.start, s.end) for s in spans if s.kind == "state")
    assert states == span_ms(t(0), t(DAY_S))
    assert sum(s.kind == "alone" for s in spans) == DAY_S // 600 - 1
