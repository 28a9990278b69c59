"""A session's lifecycle: opened when a tracked participant is seen, its `last_seen_at`
moved on by evidence, closed when its leave is seen or bounded when it was not, and ended by
a newer connection of the same identity. Pure logic; `SessionTracker` decides when."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from observer.core.changes import (
    Close,
    Op,
    Open,
    Touch,
    UpdateAttributes,
    Witnessed,
    missed_leave,
)
from observer.core.events import (
    AttributesChanged,
    Listed,
    ParticipantLeft,
    Seen,
    SessionKey,
    TrackedSession,
    WebhookLeft,
    agent_name_of,
)
from observer.core.occupancy import Occupancy
from observer.core.open_sessions import OpenSessions
from observer.core.timeline import Timelines
from observer.core.vocab import (
    DUPLICATE_IDENTITY,
    END_RECONCILED,
    END_ROOM_CLOSED,
    END_RTC,
    END_WEBHOOK,
    EndSource,
)

RECENTLY_CLOSED_MAX = 100_000


@dataclass
class Sessions:
    """The open sessions and what is known of each: whether its leave is suspected or
    announced, when the room or the server last showed its participant, whether this
    observer saw it itself."""

    tracked_kinds: frozenset[str]
    occupancy: Occupancy
    webhook_hold_s: float = 3.0
    trouble_window_s: float = 20.0
    stale_listing_s: float = 30.0
    leave_news_s: float = 4.0
    open: OpenSessions = field(default_factory=OpenSessions)
    recently_closed: OrderedDict[SessionKey, None] = field(default_factory=OrderedDict)
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
    timelines: Timelines = field(default_factory=Timelines)

    def opened(
        self, room_name: str, room_sid: str, p: Seen, at: datetime, *, blind: bool = False
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
        return [Touch(tuple(touched), at)] if touched else []

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
        self.recently_closed[key] = None
        self.in_view.discard(key)
        self.witnessed.discard(key)
        self.seen_live.discard(key)
        self.doubted.discard(key)
        self.evidence.pop(key, None)
        self.replaced_leaves.pop(key, None)
        self.superseded_by.pop(key, None)
        self.absent_at_join.pop(key, None)
        self.absent_listed.pop(key, None)
        if len(self.recently_closed) > RECENTLY_CLOSED_MAX:
            self.recently_closed.popitem(last=False)
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
            self.absent_at_join.pop(key, None)
            self.absent_listed.pop(key, None)

    def out_of_view(self, room_sid: str) -> None:
        """The observer is out of the room: none of its participants is in view."""
        self.in_view = {k for k in self.in_view if k.room_sid != room_sid}
        self.witnessed = {k for k in self.witnessed if k.room_sid != room_sid}

    def attributes(self, ev: AttributesChanged) -> list[Op]:
        key = SessionKey(ev.room_sid, ev.participant_sid)
        self.timelines.state(key, ev.attributes, ev.at)
        s = self.open.get(key)
        if s is None or dict(s.attributes) == dict(ev.attributes):
            return []
        s = replace(s, attributes=dict(ev.attributes), agent_name=agent_name_of(ev.attributes))
        self.open[key] = s
        return [UpdateAttributes(key, s.attributes, s.agent_name)]

    def webhook_left(self, ev: WebhookLeft, *, watching: bool) -> list[Op]:
        """LiveKit's webhook says a participant left the room (`watching`: the observer is
        in the room and sees it)."""
        key = SessionKey(ev.room_sid, ev.participant.sid)
        if key in self.open and key in self.in_view and watching:
            if key not in self.suspect:
                # The observer should see this leave itself, to the millisecond: give it a
                # moment before the webhook's time is used.
                self.witness.setdefault(key, ev)
                return []
        reason = ev.reason or None
        if key in self.open:
            return [self.close(key, left_at=ev.at, reason=reason, source=END_WEBHOOK)]
        # A session the observer never saw (it was down, or not in the room yet) is
        # opened from the webhook's participant info and closed at once.
        ops = self.opened(ev.room_name, ev.room_sid, ev.participant, ev.at)
        if key in self.open:
            ops.append(self.close(key, left_at=ev.at, reason=reason, source=END_WEBHOOK))
        return ops

    def absences(self, room_sid: str, present_sids: set[str], at: datetime, *, fresh: bool) -> bool:
        """A (re)join shows who is in the room: the room's sessions missing from it become
        suspects (only the server's API may end them, or a listing that stays stale after
        a fresh join, see `listed`). Returns whether any is missing."""
        missing = False
        for key in self.open.in_room(room_sid):
            if key.participant_sid in present_sids:
                self.suspect.pop(key, None)
                self.doubted.discard(key)
                self.absent_at_join.pop(key, None)
                continue
            if fresh and key in self.seen_live:
                self.absent_at_join.setdefault(key, at)
            if key not in self.suspect:
                last_seen_at = self.open[key].last_seen_at
                self.suspect[key] = ParticipantLeft(room_sid, key.participant_sid, "", last_seen_at)
            missing = True
            self.timelines.pause([key], at)
        return missing

    def doubt(self, room_sid: str, since: datetime, until: datetime) -> bool:
        """The observer saw nothing of the room from `since` to `until`: the sessions it
        counted as present there become suspects. Returns whether there were any."""
        keys = [k for k in self.open.in_room(room_sid) if k not in self.suspect]
        if not keys:
            return False
        self.timelines.pause(keys, since)
        for key in keys:
            self.suspect[key] = ParticipantLeft(room_sid, key.participant_sid, "", until)
            self.doubted.add(key)
        return True

    def listed(
        self,
        ev: Listed,
        *,
        watching: bool,
        alone: Callable[[], bool],
        absent: Callable[[str], list[Op]],
    ) -> list[Op]:
        """The server's listing of a room that exists settles its suspects: listed after the
        leave was reported, still there; not listed, gone (`absent` gives the changes to
        the room's numbers). `watching`, `alone`: the observer sees the room, and no
        company is in it now."""
        ops: list[Op] = []
        for key in [k for k in self.suspect if k.room_sid == ev.room_sid]:
            left = self.suspect[key]
            if key not in self.open:
                self.suspect.pop(key)
            elif key.participant_sid in ev.present:
                self.absent_listed.pop(key, None)  # a later absence waits afresh
                absent_since = self.absent_at_join.get(key)
                if absent_since is not None and watching:
                    # listed, yet not in the room its node shows: stale once it lasts
                    if ev.at - absent_since >= timedelta(seconds=self.stale_listing_s):
                        ops.append(self.reconciled(key, ev.at))
                    continue
                if left.at <= ev.requested_at:  # still there after the leave was reported
                    del self.suspect[key]
                    self.doubted.discard(key)
                    if watching:
                        ops += self.touch([key], ev.requested_at)
                        self.timelines.seen(key, ev.at, self.open[key].attributes, alone())
            elif self._another_may_tell(key, ev.at):
                continue  # a suspect still: the tracker's tick lists the room again
            else:
                ops.append(self.reconciled(key, ev.at))
                ops += absent(key.participant_sid)
        return ops

    def _another_may_tell(self, key: SessionKey, at: datetime) -> bool:
        """A session this observer never saw, that another observer saw moments ago, gone
        from the server's listing: that observer may yet report the real leave (the server
        announces the leave of a participant that publishes nothing on a 3 s ticker), so
        the missed-leave bound waits `leave_news_s` for it."""
        if key in self.seen_live:
            return False
        if at - self.open[key].last_seen_at > timedelta(seconds=self.leave_news_s + 10):
            return False
        first = self.absent_listed.setdefault(key, at)
        return at - first < timedelta(seconds=self.leave_news_s)

    def closed_with_room(self, room_sid: str, at: datetime, reason: str) -> list[Op]:
        """The server ended the room at `at` with its sessions in it. Those in doubt or
        whose leave was already reported end where the evidence bounds them."""
        ops: list[Op] = []
        for key in self.open.in_room(room_sid):
            if key in self.doubted:
                ops.append(self.reconciled(key, at, reason=reason))
            elif key in self.suspect or key in self.witness:
                ops.append(self.reconciled(key, at))
            else:
                ops.append(self.close(key, left_at=at, reason=reason, source=END_ROOM_CLOSED))
        return ops

    def bounded(self, room_sid: str, at: datetime, listed_at: datetime | None = None) -> list[Op]:
        """The room's participants are gone, learned at `at`: its sessions end at their last
        evidence (those seen after `listed_at`, the listing that lacked the room, are newer
        than it and left alone)."""
        return [
            self.reconciled(key, at)
            for key in self.open.in_room(room_sid)
            if listed_at is None or self.open[key].last_seen_at < listed_at
        ]

    def release_witnessed(self, at: datetime) -> list[Op]:
        """Webhook leaves the observer did not see itself in time: closed at their time."""
        ops: list[Op] = []
        hold = timedelta(seconds=self.webhook_hold_s)
        for key, wh in list(self.witness.items()):
            if key not in self.open:
                del self.witness[key]
            elif at - wh.at >= hold:
                reason = wh.reason or None
                ops.append(self.close(key, left_at=wh.at, reason=reason, source=END_WEBHOOK))
        return ops

    # ---- one participant per identity in a room -------------------------------------------

    def replaced_live(self, key: SessionKey, ev: ParticipantLeft) -> list[Op]:
        """LiveKit removed this participant because its identity joined again: the old
        session ends no later than the new one began (the server removes the old just
        before it starts the new, but the news of the leave may reach the observer after
        the new one's join time). Without the newer session yet, hold the close for it."""
        s = self.open[key]
        newer = self.open.later_joins(key)
        if newer:
            left_at = min(ev.at, min(newer))
            return [self.close(key, left_at=left_at, reason=DUPLICATE_IDENTITY, source=END_RTC)]
        self.replaced_leaves[key] = replace(ev, at=max(ev.at, s.joined_at))
        return []

    def release_replaced(self, at: datetime | None = None) -> list[Op]:
        """Close held leaves whose newer session joined, or that waited long enough; and
        bound the replaced sessions whose leave never came."""
        ops: list[Op] = []
        hold = timedelta(seconds=self.webhook_hold_s)
        for key, (joined_at, seen_at) in list(self.superseded_by.items()):
            if key not in self.open:
                del self.superseded_by[key]
            elif at is not None and at - seen_at >= hold:
                del self.superseded_by[key]
                ops.append(
                    self.reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=joined_at
                    )
                )
        for key, ev in list(self.replaced_leaves.items()):
            if key not in self.open:
                del self.replaced_leaves[key]
                continue
            newer = self.open.later_joins(key)
            waited = at is not None and at - ev.at >= hold
            if newer or waited:
                del self.replaced_leaves[key]
                left_at = min([ev.at, *newer])
                ops.append(
                    self.close(key, left_at=left_at, reason=DUPLICATE_IDENTITY, source=END_RTC)
                )
        return ops

    def replaced(
        self,
        room_sid: str,
        p: Seen,
        at: datetime,
        *,
        live: bool = False,
        watching: bool = False,
    ) -> list[Op]:
        """A suspect leave followed by a join of the same identity is LiveKit replacing the
        older session (the newest connection wins): close it now, with that reason. A leave
        without a reason says nothing of when (the SDK reports every participant so around
        its own reconnects, and a connection that died with its node long before gets
        none): bounded, from the last evidence to the newer one's join."""
        ops: list[Op] = []
        for key in list(self.suspect):
            if key.room_sid == room_sid and key in self.open and key.participant_sid != p.sid:
                if self.open[key].identity != p.identity:
                    continue
                ops.append(
                    self.reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=p.joined_at
                    )
                )
        return ops + self.superseded(room_sid, p, at, live=live, watching=watching)

    def superseded(
        self,
        room_sid: str,
        p: Seen,
        at: datetime,
        *,
        live: bool = False,
        watching: bool = False,
    ) -> list[Op]:
        """LiveKit keeps one participant per identity in a room: an open session of `p`'s
        identity that joined before it is over, whether or not its leave was seen (after a
        cluster node died, the API may still list it). Seen live, in a room the observer
        watches, with the old session in view, the server's leave of the old one is
        awaited (`replaced_live` closes it at the new join); otherwise, or when no such
        leave comes, it is bounded (`reconciled`)."""
        ops: list[Op] = []
        for key in self.open.in_room(room_sid):
            s = self.open.get(key)
            if s is None or not (
                key.participant_sid != p.sid
                and s.identity == p.identity
                and s.joined_at < p.joined_at
            ):
                continue
            if live and watching and self.seen_now(key):
                # The server's leave of the old connection ends it at the newer one's join;
                # no leave (the old connection died with its node) leaves it bounded.
                self.superseded_by.setdefault(key, (p.joined_at, at))
            else:
                ops.append(
                    self.reconciled(
                        key, at, reason=DUPLICATE_IDENTITY, successor_joined_at=p.joined_at
                    )
                )
        return ops
