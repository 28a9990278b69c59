"""Time helpers shared by the daemon and the reports: all times are timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

# Times the reports and filters accept: from the Unix epoch to well before datetime's own
# limit, so that windows, day edges and milliseconds since the epoch never overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class OutOfRange(ValueError):
    """A time before EARLIEST or from LATEST on."""


def parse_iso(raw: str) -> datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise) from EARLIEST to before
    LATEST, in UTC; ValueError (OutOfRange) with a short reason otherwise."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # compared before converted: a zone can move a time past the calendar's first or last day
    if not EARLIEST <= value < LATEST:
        raise OutOfRange(f"out of range ({EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d})")
    return value.astimezone(UTC)


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
