"""The open sessions and what is known of each, and the moves of a session's lifecycle:
opened when a tracked participant is seen, its `last_seen_at` moved on by evidence, closed
when its leave is seen, or bounded (`reconciled`) when it was not. Pure logic; the rules
that decide which move an event makes are `observer.core.sessions`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from observer.core.changes import (
    Close,
    Op,
    Open,
    RefreshLastSeen,
    SpanEnded,
    Witnessed,
    missed_leave,
)
from observer.core.events import (
    ParticipantLeft,
    SeenParticipant,
    SessionKey,
    TrackedSession,
    WebhookLeft,
    agent_name_of,
)
from observer.core.occupancy import Occupancy
from observer.core.open_sessions import OpenSessions
from observer.core.recent import Recent
from observer.core.timeline import Timelines
from observer.core.vocab import END_RECONCILED, END_WEBHOOK, EndSource

# A closed session's key is remembered so that late news of it (a listing, a webhook, a
# stored row) does not open it again: for an hour at least, two at most, and never more
# than a cap
RECENTLY_CLOSED_KEEP = timedelta(hours=1)
RECENTLY_CLOSED_MAX = 100_000


@dataclass
class SessionBook:
    """The open sessions and what is known of each: whether its leave is suspected or
    announced, when the room or the server last showed its participant, whether this
    observer saw it itself; and the moves every rule makes: open, touch, close, bound."""

    tracked_kinds: frozenset[str]
    occupancy: Occupancy
    webhook_hold_s: float = 3.0
    trouble_window_s: float = 20.0
    stale_listing_s: float = 30.0
    leave_news_s: float = 4.0
    # How often the observers write a present participant's last_seen_at: a row's last
    # sighting by another observer is this much older than the truth, and still recent
    last_seen_refresh_s: float = 15.0
    open: OpenSessions = field(default_factory=OpenSessions)
    recently_closed: Recent[SessionKey, None] = field(
        default_factory=lambda: Recent(RECENTLY_CLOSED_KEEP, RECENTLY_CLOSED_MAX)
    )
    # leaves reported without a reason, not yet confirmed by the server's API
    suspect: dict[SessionKey, ParticipantLeft] = field(default_factory=dict)
    # webhook leaves held for a moment, for the observer to see the leave itself
    witness: dict[SessionKey, WebhookLeft] = field(default_factory=dict)
    # suspects because the observer's own process stopped running (`Blind`), not because
    # the room reported anything
    doubted: set[SessionKey] = field(default_factory=set)
    in_view: set[SessionKey] = field(default_factory=set)  # seen present by the observer
    witnessed: set[SessionKey] = field(default_factory=set)  # recorded as witnessed
    seen_live: set[SessionKey] = field(default_factory=set)  # ever seen over rtc
    # when the room or the server last showed each open session's participant
    evidence: dict[SessionKey, datetime] = field(default_factory=dict)
    absent_at_join: dict[SessionKey, datetime] = field(default_factory=dict)
    absent_listed: dict[SessionKey, datetime] = field(default_factory=dict)
    # leaves for a newer connection of the same identity, held until that one's join
    # shows when the old one ended (see `replaced_live`)
    replaced_leaves: dict[SessionKey, ParticipantLeft] = field(default_factory=dict)
    # sessions a newer connection of the same identity replaced, seen live: waiting for the
    # server's leave of the old one (it comes when the old connection was alive) -> the
    # newer one's join time, and when it was seen
    superseded_by: dict[SessionKey, tuple[datetime, datetime]] = field(default_factory=dict)
    timelines: Timelines[SessionKey] = field(default_factory=Timelines)

    def opened(
        self,
        room_name: str,
        room_sid: str,
        p: SeenParticipant,
        at: datetime,
        *,
        blind: bool = False,
    ) -> list[Op]:
        """Open a session for a tracked participant (or touch its open one). `blind`: the
        news came just after a gap in the observer's life, so only the participant's own
        join time is evidence of its presence."""
        key = SessionKey(room_sid, p.sid)
        if p.kind not in self.tracked_kinds or key in self.recently_closed:
            return []
        if key in self.open:
            return [] if blind else self.touch([key], at)
        s = TrackedSession(
            room_name=room_name,
            room_sid=room_sid,
            participant_sid=p.sid,
            identity=p.identity,
            name=p.name,
            kind=p.kind,
            agent_name=agent_name_of(p.attributes),
            attributes=dict(p.attributes),
            joined_at=p.joined_at,
            last_seen_at=min(at, p.joined_at) if blind else at,
            kind_details=p.kind_details,
            join_precision_ms=p.join_precision_ms,
        )
        self.open[key] = s
        self.evidence[key] = s.last_seen_at
        return [Open(s)]

    def touch(self, keys: Iterable[SessionKey], at: datetime, *, evidence: bool = True) -> list[Op]:
        """Move `last_seen_at` on. `evidence`: the room or the server showed the participant
        at `at`; else only the observer's connection did not report it gone (the
        heartbeat), which a connection that broke unnoticed cannot vouch for (`trouble`)."""
        touched = []
        for key in keys:
            s = self.open.get(key)
            if s is not None and evidence:
                self.evidence[key] = max(at, self.evidence.get(key, at))
            if s is not None and at > s.last_seen_at:
                self.open[key] = replace(s, last_seen_at=at)
                touched.append(key)
        return [RefreshLastSeen(tuple(touched), at)] if touched else []

    def trouble(self, room_sid: str, at: datetime) -> None:
        """The observer's connection to the room broke, noticed at `at`: it may have been
        dead for a while before (a relay through a node that died, a ping timeout), and
        what the heartbeat claimed meanwhile is no evidence. `last_seen_at` falls back to
        the last evidence, or to `trouble_window_s` before `at` if that is later."""
        window = at - timedelta(seconds=self.trouble_window_s)
        for key in self.open.in_room(room_sid):
            s = self.open[key]
            floor = max(self.evidence.get(key, s.joined_at), s.joined_at)
            back = max(floor, min(s.last_seen_at, window))
            if back < s.last_seen_at:
                self.open[key] = replace(s, last_seen_at=back)

    def record_seen(self, keys: Iterable[SessionKey], at: datetime) -> list[Op]:
        """Record, once, that this observer saw these open sessions' participants itself."""
        keys = [k for k in keys if k in self.open]
        self.seen_live.update(keys)
        new = tuple(k for k in keys if k not in self.witnessed)
        self.witnessed.update(new)
        return [Witnessed(new, at)] if new else []

    def seen_now(self, key: SessionKey) -> bool:
        """In view of this observer, and not in doubt."""
        return key in self.seen_live and key not in self.suspect

    def close(
        self,
        key: SessionKey,
        *,
        left_at: datetime,
        reason: str | None,
        source: EndSource,
        uncertainty_ms: int | None = None,
        last_seen_at: datetime | None = None,
    ) -> Close:
        s = self.open.pop(key)
        self.suspect.pop(key, None)
        self.witness.pop(key, None)
        # (a leave that was not yet confirmed left the room's numbers as they were)
        self.occupancy.departed(key.room_sid, key.participant_sid)
        self.recently_closed.add(key, None)
        self.in_view.discard(key)
        self.witnessed.discard(key)
        self.seen_live.discard(key)
        self.doubted.discard(key)
        self.evidence.pop(key, None)
        self.replaced_leaves.pop(key, None)
        self.superseded_by.pop(key, None)
        self.absent_at_join.pop(key, None)
        self.absent_listed.pop(key, None)
        return Close(
            key=key,
            left_at=left_at,
            reason=reason,
            end_source=source,
            uncertainty_ms=uncertainty_ms,
            last_seen_at=left_at if last_seen_at is None else last_seen_at,
            session=s,
            timeline=self.timelines.finish(key, s.joined_at, max(left_at, s.joined_at)),
        )

    def reconciled(
        self,
        key: SessionKey,
        at: datetime,
        *,
        reason: str | None = None,
        successor_joined_at: datetime | None = None,
    ) -> Close:
        """Close a session whose leave the observer did not see: at the webhook's time when
        LiveKit's webhook told it, else between when it was last seen and `at` (the lower
        bound is recorded, with the width of the gap).

        LiveKit keeps one participant per identity in a room, so a later session of the
        same identity (`successor_joined_at`, or one already open) bounds this one: it
        never ends after its successor joined, even when the observer's own connection was
        dead without its knowing and it went on counting the participant as seen."""
        witness = self.witness.get(key)
        if witness is not None:
            return self.close(
                key, left_at=witness.at, reason=witness.reason or reason, source=END_WEBHOOK
            )
        s = self.open[key]
        later = self.open.later_joins(key)
        if successor_joined_at is not None and successor_joined_at > s.joined_at:
            later.append(successor_joined_at)
        left_at, width_ms = missed_leave(s.last_seen_at, at)
        if later and min(later) < left_at + timedelta(milliseconds=width_ms):
            upper = min(later)
            left_at = min(left_at, upper)
            width_ms = max(0, round((upper - left_at).total_seconds() * 1000))
        return self.close(
            key,
            left_at=left_at,
            reason=reason,
            source=END_RECONCILED,
            uncertainty_ms=width_ms,
            last_seen_at=left_at,
        )

    def spans_ended(self) -> list[SpanEnded]:
        """The spans of open sessions' timelines that ended since the last call: written
        now, never kept (a session that lasts days holds no more than one that lasts
        seconds)."""
        return [SpanEnded(e.key, e.span, e.observed_from) for e in self.timelines.drain()]

    def handed_over(self, room_sid: str) -> None:
        """Another observer records the room now: forget its sessions without a write."""
        keys = self.open.in_room(room_sid)
        self.timelines.drop(keys)
        for key in keys:
            self.open.discard(key)
            self.suspect.pop(key, None)
            self.witness.pop(key, None)
            self.seen_live.discard(key)
            self.doubted.discard(key)
            self.in_view.discard(key)
            self.witnessed.discard(key)
            self.evidence.pop(key, None)
            self.replaced_leaves.pop(key, None)
            self.superseded_by.pop(key, None)
            self.absent_at_join.pop(key, None)
            self.absent_listed.pop(key, None)

    def out_of_view(self, room_sid: str) -> None:
        """The observer is out of the room: none of its participants is in view."""
        self.in_view = {k for k in self.in_view if k.room_sid != room_sid}
        self.witnessed = {k for k in self.witnessed if k.room_sid != room_sid}
