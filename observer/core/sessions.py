"""The rules of a session's lifecycle: what a leave, a snapshot of the room, the server's
listing, a webhook, a gap in the observer's own life or the room's end does to the room's
sessions, and LiveKit's one participant per identity in a room. Pure logic on the moves of
`SessionBook`; `SessionTracker` decides when each rule applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from observer.core.changes import Close, Op, UpdateAttributes
from observer.core.events import (
    AttributesChanged,
    ParticipantLeft,
    SeenParticipant,
    ServerListing,
    SessionKey,
    WebhookLeft,
    agent_name_of,
)
from observer.core.session_book import SessionBook
from observer.core.vocab import DUPLICATE_IDENTITY, END_ROOM_CLOSED, END_RTC, END_WEBHOOK

# A webhook's createdAt has whole seconds; clocks of the server's and the observer's hosts
# may differ by a little.
WEBHOOK_SECOND = timedelta(seconds=1)
CLOCK_MARGIN = timedelta(milliseconds=250)


class Sessions(SessionBook):
    """The open sessions, and the rules that move them."""

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

    def seen_leave(self, key: SessionKey, ev: ParticipantLeft) -> Close:
        """A leave the observer saw live, with the server's reason. The server sends the
        leave of a participant that publishes nothing on its 3 s update ticker, so the news
        can come seconds late; LiveKit's `participant_left` webhook, stamped when the server
        closed the participant, says to the second when it was. News later than that second
        (with a margin for two hosts' clocks) is late: the webhook's time is used instead."""
        wh = self.witness.get(key)
        if wh is not None and ev.at - wh.at >= WEBHOOK_SECOND + CLOCK_MARGIN:
            return self.close(key, left_at=wh.at, reason=wh.reason or ev.reason, source=END_WEBHOOK)
        return self.close(key, left_at=ev.at, reason=ev.reason, source=END_RTC)

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
        ev: ServerListing,
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
        the missed-leave bound waits `leave_news_s` for it. Moments ago: within `leave_news_s`,
        a refresh of last_seen_at (the other observer writes it that often) and 10 s."""
        if key in self.seen_live:
            return False
        recent = timedelta(seconds=self.leave_news_s + self.last_seen_refresh_s + 10)
        if at - self.open[key].last_seen_at > recent:
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
        p: SeenParticipant,
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
        p: SeenParticipant,
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
