"""Time helpers shared by the daemon and the reports: all times are timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(at: datetime, timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """A time as ISO 8601 in UTC with a Z."""
    return at.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def next_month(d: datetime) -> datetime:
    """The same day and time one calendar month later (call with day 1)."""
    return d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1)


def backoff_s(attempt: int, cap_s: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling from 1 s, capped."""
    return min(cap_s, 0.5 * (1 << min(max(attempt, 1), 30)))
