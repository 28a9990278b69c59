"""Which usage reports change what is kept, and which are suspicious. Pure logic."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import RecordUsage, UsageFlagged
from observer.core.events import SessionKey
from observer.core.recent import Recent

# How long the totals written for a session's model are remembered (a report of the same
# totals after that is written again, and changes nothing), and how many at most; and how
# many sessions' flags
WRITTEN_KEEP = timedelta(hours=1)
REMEMBERED_MAX = 100_000


@dataclass
class UsageLedger:
    """The totals this observer last wrote per session and model, and the flags raised."""

    _written: Recent[tuple[SessionKey, tuple[str, str, str]], ModelUsage] = field(
        default_factory=lambda: Recent(WRITTEN_KEEP, REMEMBERED_MAX)
    )
    _flagged: OrderedDict[tuple[SessionKey, str], None] = field(default_factory=OrderedDict)

    def changed(self, r: UsageReport) -> list[RecordUsage]:
        """The report's models whose totals changed since this observer last wrote them: an
        agent sends its totals after every metrics event, mostly unchanged."""
        key = SessionKey(r.room_sid, r.participant_sid)
        changed = []
        for m in r.models:
            seen = (key, m.key)
            if self._written.get(seen) != m:
                changed.append(m)
                self._written.add(seen, m)
        return [RecordUsage(replace(r, models=tuple(changed)))] if changed else []

    def age(self, at: datetime) -> None:
        self._written.age(at)

    def flags(self, r: UsageReport, *, session_known: bool) -> list[UsageFlagged]:
        """Each flag once per session: `unseen_session` (reported in a room for a session
        this observer has not seen; a posted report may reach an observer that does not
        watch the room, and the reports find those by the missing row), `silent_realtime`
        (a realtime model reporting 0 output audio tokens)."""
        key = SessionKey(r.room_sid, r.participant_sid)
        flags = []
        if r.source == "room" and not session_known:
            flags.append("unseen_session")
        if any(
            m.kind == "llm" and m.session_ms > 0 and m.output_audio_tokens == 0 for m in r.models
        ):
            flags.append("silent_realtime")
        raised: list[UsageFlagged] = []
        for flag in flags:
            if (key, flag) not in self._flagged:
                self._flagged[(key, flag)] = None
                if len(self._flagged) > REMEMBERED_MAX:
                    self._flagged.popitem(last=False)
                raised.append(UsageFlagged(r.room_sid, r.participant_sid, r.identity, flag))
        return raised
