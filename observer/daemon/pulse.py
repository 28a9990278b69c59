"""The process's own pulse: when this process stopped running, and the time events arrive.

A process that is stopped (SIGSTOP, a paused VM, a host that stalls every thread) sees
nothing meanwhile, and on resuming it reads whatever its sockets buffered as if it had just
happened. A thread beats a few times a second; a jump of the monotonic (or the wall) clock
between two beats, or between the last beat and a stamp, is a gap in the process's life.
Events stamped within `settle_s` after a gap carry the gap's start: what they report may
have happened at any moment of it.

Stamps are taken on the thread where an event arrives (the rtc SDK's callback thread), so
what the event loop is busy with never moves a recorded time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

BEAT_S = 0.1
GAP_S = 1.0  # a beat this late is a gap in the process's life, not scheduling noise
SETTLE_S = 2.0  # how long after a gap what arrives may be news from inside it


@dataclass(frozen=True)
class Stamp:
    """When an event arrived; `blind_since` when the process had just resumed from a gap
    that began then."""

    at: datetime
    blind_since: datetime | None = None


@dataclass(frozen=True)
class Gap:
    since: datetime
    until: datetime
    until_mono: float


class Pulse:
    """Notices gaps in this process's life and stamps arrivals. Thread-safe."""

    def __init__(
        self,
        *,
        beat_s: float = BEAT_S,
        gap_s: float = GAP_S,
        settle_s: float = SETTLE_S,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._listeners: list[Callable[[datetime, datetime], object]] = []
        self._beat_s = beat_s
        self._gap_s = gap_s
        self._settle_s = settle_s
        self._mono = mono
        self._wall = wall
        self._lock = threading.Lock()
        self._last_mono = mono()
        self._last_wall = wall()
        self._gap: Gap | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.beat()
            self._thread = threading.Thread(target=self._run, name="pulse", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def listen(self, on_gap: Callable[[datetime, datetime], object]) -> Callable[[], None]:
        """Call `on_gap(since, until)` on each gap found from now on (on the thread that
        found it); returns the function that stops it."""
        self._listeners.append(on_gap)
        return lambda: self._listeners.remove(on_gap)

    def beat(self) -> Stamp:
        """Note that the process is running now; return the stamp of this moment."""
        m, w = self._mono(), self._wall()
        found: Gap | None = None
        with self._lock:
            late_s = max(m - self._last_mono, (w - self._last_wall).total_seconds())
            if late_s > self._gap_s:
                found = self._gap = Gap(self._last_wall, w, m)
            if m >= self._last_mono:
                self._last_mono, self._last_wall = m, w
            gap = self._gap
        if found is not None:
            log.warning(
                "this process did not run for a while; what happened meanwhile is unseen",
                extra={"since": found.since.isoformat(), "gap_s": round(late_s, 3)},
            )
            for on_gap in list(self._listeners):
                on_gap(found.since, found.until)
        if gap is not None and m - gap.until_mono < self._settle_s:
            return Stamp(w, gap.since)
        return Stamp(w)

    def _run(self) -> None:
        while not self._stop.wait(self._beat_s):
            self.beat()


_PROCESS_PULSE: Pulse | None = None


def process_pulse() -> Pulse:
    """The pulse of this process (started on first use)."""
    global _PROCESS_PULSE
    if _PROCESS_PULSE is None:
        _PROCESS_PULSE = Pulse()
        _PROCESS_PULSE.start()
    return _PROCESS_PULSE


def stamp() -> Stamp:
    """The stamp of an arrival now, by this process's pulse."""
    return process_pulse().beat()
