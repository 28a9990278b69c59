"""What an agent did while the observer watched: time in each `lk.agent.state`, and time
alone in its room.

Pure logic, fed by the tracker. A session's timeline starts when the observer first sees
the participant (its join, when the observer saw it happen) and ends at its leave. While the
observer cannot see the room (its own connection is reconnecting) nothing is counted: that
time, like time before the observer arrived, is unknown.

Nothing here grows with a session's length: a span is handed out (`Timelines.drain`) as
soon as it ends, to be written, and a timeline keeps only the state and company it is in.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, Literal, TypeVar

STATE_ATTRIBUTE = "lk.agent.state"
# The values livekit-agents sets (livekit.agents.voice.events.AgentState); any other value
# counts as `other`.
AGENT_STATES = ("initializing", "idle", "listening", "thinking", "speaking")
OTHER_STATE = "other"

SpanKind = Literal["state", "alone"]


@dataclass(frozen=True)
class Span:
    kind: SpanKind
    value: str  # the state for "state"; "" for "alone"
    start: datetime
    end: datetime


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def span_ms(start: datetime, end: datetime) -> int:
    """Whole milliseconds from `start` to `end`, each truncated to its millisecond as the
    usage report cuts sessions, so spans cut at any edge add up to the whole."""
    ms = timedelta(milliseconds=1)
    return max(0, (end - _EPOCH) // ms - (start - _EPOCH) // ms)


@dataclass(frozen=True)
class Timeline:
    """A finished session's timeline, or the part of it not yet written: when watching
    began, and its spans."""

    observed_from: datetime
    spans: tuple[Span, ...]

    def state_ms(self) -> dict[str, int]:
        """Milliseconds per state (`AGENT_STATES`, then `other`), zero when never set."""
        return SpanTotals.of(self.spans).state_ms

    def alone_ms(self) -> int:
        return SpanTotals.of(self.spans).alone_ms


@dataclass
class SpanTotals:
    """Milliseconds per state and alone, summed span by span: what a closed row keeps."""

    state_ms: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*AGENT_STATES, OTHER_STATE), 0)
    )
    alone_ms: int = 0

    @classmethod
    def of(cls, spans: Iterable[Span]) -> SpanTotals:
        totals = cls()
        for s in spans:
            totals.add(s)
        return totals

    def add(self, s: Span) -> None:
        if s.kind == "state":
            name = s.value if s.value in AGENT_STATES else OTHER_STATE
            self.state_ms[name] += span_ms(s.start, s.end)
        else:
            self.alone_ms += span_ms(s.start, s.end)


def watched_from(observed_from: datetime, joined: datetime, end: datetime) -> datetime:
    """Where the timeline of a session that joined at `joined` and ended at `end` starts:
    inside them, at or after the observer began watching."""
    return min(max(observed_from, joined), end)


def clipped(spans: Iterable[Span], start: datetime, end: datetime) -> Iterator[Span]:
    """The spans cut to `start`..`end`, those outside it left out."""
    for s in spans:
        if s.start < end and s.end > start:
            yield Span(s.kind, s.value, max(s.start, start), min(s.end, end))


@dataclass
class _Watch:
    observed_from: datetime
    state: str | None = None
    state_since: datetime | None = None
    alone_since: datetime | None = None
    paused: bool = False

    def end_state(self, at: datetime) -> Span | None:
        ended = None
        if self.state is not None and self.state_since is not None and at > self.state_since:
            ended = Span("state", self.state, self.state_since, at)
        self.state_since = None
        return ended

    def end_alone(self, at: datetime) -> Span | None:
        ended = None
        if self.alone_since is not None and at > self.alone_since:
            ended = Span("alone", "", self.alone_since, at)
        self.alone_since = None
        return ended


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class EndedSpan(Generic[K]):
    """A span that ended, of the session `key` whose timeline began at `observed_from`."""

    key: K
    span: Span
    observed_from: datetime


def state_of(attributes: Mapping[str, str]) -> str | None:
    return attributes.get(STATE_ATTRIBUTE) or None


@dataclass
class Timelines(Generic[K]):
    """Timelines of the sessions the observer watches, by any hashable key."""

    _watch: dict[K, _Watch] = field(default_factory=dict)
    # spans ended since the last `drain`, in the order they ended
    _ended: list[EndedSpan[K]] = field(default_factory=list)

    def __contains__(self, key: object) -> bool:
        return key in self._watch

    def __len__(self) -> int:
        return len(self._watch)

    def seen(
        self,
        key: K,
        at: datetime,
        attributes: Mapping[str, str],
        alone: bool,
        *,
        joined_at: datetime | None = None,
    ) -> None:
        """The participant is in view at `at`: starts its timeline, or resumes a paused
        one, with its state and company as seen now. `joined_at`: the observer saw the join
        happen, so the timeline starts there, with the company it knew then; the state
        the join brought counts from `at`, when it was heard."""
        w = self._watch.get(key)
        if w is None:
            start = at if joined_at is None else min(joined_at, at)
            w = self._watch[key] = _Watch(observed_from=start)
            w.state, w.state_since = state_of(attributes), at
            w.alone_since = start if alone else None
            return
        if not w.paused:
            self.state(key, attributes, at)
            self.alone([key], alone, at)
            return
        w.paused = False
        w.state, w.state_since = state_of(attributes), at
        w.alone_since = at if alone else None

    def state(self, key: K, attributes: Mapping[str, str], at: datetime) -> None:
        w = self._watch.get(key)
        new = state_of(attributes)
        if w is None or w.paused or new == w.state:
            return
        self._keep(key, w, w.end_state(at))
        w.state, w.state_since = new, at

    def alone(self, keys: Iterable[K], alone: bool, at: datetime) -> None:
        for key in keys:
            w = self._watch.get(key)
            if w is None or w.paused:
                continue
            if alone and w.alone_since is None:
                w.alone_since = at
            elif not alone:
                self._keep(key, w, w.end_alone(at))

    def pause(self, keys: Iterable[K], at: datetime) -> None:
        """The observer lost sight of these participants (its connection is down)."""
        for key in keys:
            w = self._watch.get(key)
            if w is not None and not w.paused:
                self._keep(key, w, w.end_state(at))
                self._keep(key, w, w.end_alone(at))
                w.paused = True

    def _keep(self, key: K, w: _Watch, span: Span | None) -> None:
        if span is not None:
            self._ended.append(EndedSpan(key, span, w.observed_from))

    def drain(self) -> list[EndedSpan[K]]:
        """The spans that ended since the last call, to be written; they are not kept."""
        ended, self._ended = self._ended, []
        return ended

    def finish(self, key: K, joined: datetime, end: datetime) -> Timeline | None:
        """The session that joined at `joined` ended at `end`: what is left of its timeline
        (the spans not yet drained, and those ending now), inside them. With the spans
        drained before, cut the same way (`watched_from`, `clipped`), it is the whole."""
        w = self._watch.pop(key, None)
        if w is None:
            return None
        if not w.paused:
            self._keep(key, w, w.end_state(end))
            self._keep(key, w, w.end_alone(end))
        tail = [e.span for e in self._ended if e.key == key]
        if tail:
            self._ended = [e for e in self._ended if e.key != key]
        start = watched_from(w.observed_from, joined, end)
        return Timeline(start, tuple(clipped(tail, start, end)))

    def drop(self, keys: Iterable[K]) -> None:
        gone = set(keys)
        for key in gone:
            self._watch.pop(key, None)
        if gone and self._ended:
            self._ended = [e for e in self._ended if e.key not in gone]
