"""The process's pulse: gaps in its own life are found, and arrivals right after one say so.
Virtual clocks: no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from observer.daemon.pulse import Pulse

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def advance(self, s: float, *, wall: float | None = None) -> None:
        self.mono += s
        self.wall += timedelta(seconds=s if wall is None else wall)


def pulse_on(c: Clocks) -> tuple[Pulse, list[tuple[datetime, datetime]]]:
    gaps: list[tuple[datetime, datetime]] = []
    p = Pulse(mono=lambda: c.mono, wall=lambda: c.wall, gap_s=1.0, settle_s=2.0)
    p.listen(lambda since, until: gaps.append((since, until)))
    return p, gaps


def test_regular_beats_are_no_gap() -> None:
    c = Clocks()
    p, gaps = pulse_on(c)
    for _ in range(50):
        c.advance(0.1)
        st = p.beat()
        assert st.blind_since is None and st.at == c.wall
    assert gaps == []


def test_a_stopped_process_finds_the_gap_once_and_marks_what_arrives_just_after() -> None:
    c = Clocks()
    p, gaps = pulse_on(c)
    c.advance(0.1)
    p.beat()
    before = c.wall
    c.advance(30.0)  # SIGSTOP ... SIGCONT
    first = p.beat()  # the first stamp after the gap, whoever takes it
    assert gaps == [(before, c.wall)]
    assert first.blind_since == before
    for _ in range(15):
        c.advance(0.1)
        assert p.beat().blind_since == before  # still settling: may be news from the gap
    for _ in range(6):
        c.advance(0.1)
    assert p.beat().blind_since is None
    assert gaps == [(before, before + timedelta(seconds=30))]


def test_a_wall_clock_jump_alone_is_a_gap_too() -> None:
    """A paused VM may not count its pause on the monotonic clock; the wall clock is set
    forward when it resumes."""
    c = Clocks()
    p, gaps = pulse_on(c)
    c.advance(0.1, wall=20.0)
    assert p.beat().blind_since is not None
    assert len(gaps) == 1


def test_a_late_beat_below_the_limit_is_scheduling_noise() -> None:
    c = Clocks()
    p, gaps = pulse_on(c)
    c.advance(0.9)
    assert p.beat().blind_since is None and gaps == []


def test_the_beat_thread_finds_a_gap_without_any_event() -> None:
    import time

    p = Pulse(beat_s=0.01, gap_s=0.05)
    found: list[tuple[datetime, datetime]] = []
    p.listen(lambda since, until: found.append((since, until)))
    p.start()
    try:
        with p._lock:  # every thread of a stopped process stops: hold the beat back
            time.sleep(0.2)
        deadline = time.monotonic() + 2
        while not found and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        p.stop()
    assert len(found) == 1
    since, until = found[0]
    assert until - since >= timedelta(seconds=0.15)
