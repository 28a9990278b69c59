"""What an agent did while the observer watched: time in each `lk.agent.state`, and time
alone in its room.

Pure logic, fed by the tracker. A session's timeline starts when the observer first sees
the participant (its join, when the observer saw it happen) and ends at its leave. While the
observer cannot see the room (its own connection is reconnecting) nothing is counted: that
time, like time before the observer arrived, is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

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
    """A finished session's timeline: when watching began, and its spans."""

    observed_from: datetime
    spans: tuple[Span, ...]

    def state_ms(self) -> dict[str, int]:
        """Milliseconds per state (`AGENT_STATES`, then `other`), zero when never set."""
        out = dict.fromkeys((*AGENT_STATES, OTHER_STATE), 0)
        for s in self.spans:
            if s.kind == "state":
                name = s.value if s.value in AGENT_STATES else OTHER_STATE
                out[name] += span_ms(s.start, s.end)
        return out

    def alone_ms(self) -> int:
        return sum(span_ms(s.start, s.end) for s in self.spans if s.kind == "alone")


@dataclass
class _Watch:
    observed_from: datetime
    state: str | None = None
    state_since: datetime | None = None
    alone_since: datetime | None = None
    paused: bool = False
    spans: list[Span] = field(default_factory=list)

    def end_state(self, at: datetime) -> None:
        if self.state is not None and self.state_since is not None and at > self.state_since:
            self.spans.append(Span("state", self.state, self.state_since, at))
        self.state_since = None

    def end_alone(self, at: datetime) -> None:
        if self.alone_since is not None and at > self.alone_since:
            self.spans.append(Span("alone", "", self.alone_since, at))
        self.alone_since = None


def state_of(attributes: Mapping[str, str]) -> str | None:
    return attributes.get(STATE_ATTRIBUTE) or None


@dataclass
class Timelines:
    """Timelines of the sessions the observer watches, by any hashable key."""

    _watch: dict[object, _Watch] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self._watch

    def seen(
        self,
        key: object,
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

    def state(self, key: object, attributes: Mapping[str, str], at: datetime) -> None:
        w = self._watch.get(key)
        new = state_of(attributes)
        if w is None or w.paused or new == w.state:
            return
        w.end_state(at)
        w.state, w.state_since = new, at

    def alone(self, keys: Iterable[object], alone: bool, at: datetime) -> None:
        for key in keys:
            w = self._watch.get(key)
            if w is None or w.paused:
                continue
            if alone and w.alone_since is None:
                w.alone_since = at
            elif not alone:
                w.end_alone(at)

    def pause(self, keys: Iterable[object], at: datetime) -> None:
        """The observer lost sight of these participants (its connection is down)."""
        for key in keys:
            w = self._watch.get(key)
            if w is not None and not w.paused:
                w.end_state(at)
                w.end_alone(at)
                w.paused = True

    def finish(self, key: object, joined: datetime, end: datetime) -> Timeline | None:
        """The session that joined at `joined` ended at `end`: its timeline, inside them."""
        w = self._watch.pop(key, None)
        if w is None:
            return None
        if not w.paused:
            w.end_state(end)
            w.end_alone(end)
        start = min(max(w.observed_from, joined), end)
        spans = tuple(
            Span(s.kind, s.value, max(s.start, start), min(s.end, end))
            for s in w.spans
            if s.start < end and s.end > start
        )
        return Timeline(start, spans)

    def drop(self, keys: Iterable[object]) -> None:
        for key in keys:
            self._watch.pop(key, None)
