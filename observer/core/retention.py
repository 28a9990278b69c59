"""Pure: how old data may get before `observer prune` deletes it, which times finalized
periods hold, and how `observer forget` replaces an identity in stored text."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

_AGE = re.compile(r"([1-9][0-9]{0,5})([hdw])")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}

Interval = tuple[datetime, datetime]


def parse_age(raw: str) -> timedelta:
    """`90d`, `12w` or `48h` as a duration; ValueError naming what is accepted."""
    m = _AGE.fullmatch(raw.strip())
    if m is None:
        raise ValueError(f"not an age like 90d, 12w or 48h: {raw!r}")
    return timedelta(**{_UNITS[m[2]]: int(m[1])})


def _merged(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _minus(keep: list[Interval], cut: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in keep:
        pieces = [(start, end)]
        for c_start, c_end in cut:
            nxt: list[Interval] = []
            for s, e in pieces:
                if c_end <= s or c_start >= e:
                    nxt.append((s, e))
                    continue
                if s < c_start:
                    nxt.append((s, c_start))
                if c_end < e:
                    nxt.append((c_end, e))
            pieces = nxt
        out.extend(pieces)
    return out


@dataclass(frozen=True)
class Coverage:
    """The times that finalized periods hold and no provisional period does: what
    `observer prune` may delete the details of. A period that was never reconciled holds
    nothing."""

    intervals: tuple[Interval, ...]

    @classmethod
    def of(cls, finalized: Iterable[Interval], provisional: Iterable[Interval]) -> Coverage:
        return cls(tuple(_minus(_merged(finalized), _merged(provisional))))

    def holds(self, start: datetime, end: datetime) -> bool:
        """Whether `[start, end)` (a moment, when they are equal) lies inside one interval."""
        for s, e in self.intervals:
            if s <= start and (end < e or (end == e and end > start)):
                return True
        return False


@dataclass(frozen=True)
class Verdict:
    """What prune does with one row: delete it, keep it (too young), or hold it back
    (old enough, but in a period that is not finalized)."""

    delete: bool
    held: bool


def judge(start: datetime | None, end: datetime | None, cutoff: datetime, cov: Coverage) -> Verdict:
    """A row whose data spans `[start, end]` (None: a session still open)."""
    if start is None or end is None or end >= cutoff:
        return Verdict(delete=False, held=False)
    if cov.holds(start, end):
        return Verdict(delete=True, held=False)
    return Verdict(delete=False, held=True)


# ---- forgetting an identity -----------------------------------------------------------


def forget_hash(key: str, identity: str) -> str:
    """The identity's replacement: HMAC-SHA256 of it under the key, as 64 hex digits. The same
    identity gets the same replacement, so rows of one participant stay together."""
    return hmac.new(key.encode(), identity.encode(), hashlib.sha256).hexdigest()


def _walk(value: Any, identity: str, replacement: str, names: bool) -> Any:
    if isinstance(value, str):
        if value == identity:
            return replacement
        return rewrite_text(value, identity, replacement)
    if isinstance(value, list):
        return [_walk(v, identity, replacement, names) for v in value]
    if isinstance(value, dict):
        out = {
            (replacement if k == identity else k): _walk(v, identity, replacement, names)
            for k, v in value.items()
        }
        # a participant of this identity: its display name goes too
        if names and value.get("identity") == identity and isinstance(value.get("name"), str):
            if value["name"]:
                out["name"] = replacement
        return out
    return value


def rewrite_json(value: Any, identity: str, replacement: str) -> Any:
    """`value` (parsed JSON) with every string equal to the identity replaced, in keys and
    values, and inside strings that are JSON themselves (room metadata in a webhook); the
    name of a participant object of that identity too. Other strings are left alone: an
    identity that is part of a longer text is not cut out of it."""
    return _walk(value, identity, replacement, True)


def rewrite_text(text: str, identity: str, replacement: str) -> str:
    """Stored text (a webhook body, room metadata): when it is JSON, rewritten as
    `rewrite_json` does and written back compactly; else replaced whole when it is the
    identity. Unchanged text is returned as it was (the same object)."""
    if text == identity:
        return replacement
    if identity not in text and json.dumps(identity)[1:-1] not in text:
        return text
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    new = rewrite_json(parsed, identity, replacement)
    return text if new == parsed else json.dumps(new, ensure_ascii=False, separators=(",", ":"))


def needles(identity: str) -> Sequence[str]:
    """The forms an identity takes inside stored JSON text (as is, and escaped)."""
    forms = {identity, json.dumps(identity)[1:-1], json.dumps(identity, ensure_ascii=False)[1:-1]}
    return sorted(forms)
