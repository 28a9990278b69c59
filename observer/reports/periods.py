"""The period a reconcile run covers: a calendar month, a day, or any span (UTC)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from observer.core.times import iso, next_month
from observer.errors import CommandError


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    label: str


def parse_period(raw: str) -> Period:
    """`YYYY-MM` (a calendar month) or `YYYY-MM-DD` (a day), in UTC."""
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-(\d{2}))?", raw.strip())
    try:
        if m is None:
            raise ValueError
        year, month = int(m[1]), int(m[2])
        if m[3] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            end = next_month(start)
        else:
            start = datetime(year, month, int(m[3]), tzinfo=UTC)
            end = start + timedelta(days=1)
    except ValueError:
        raise CommandError(f"--period must be YYYY-MM or YYYY-MM-DD, got {raw!r}") from None
    return Period(start, end, raw.strip())


def period_between(start: datetime, end: datetime) -> Period:
    if start >= end:
        raise CommandError(f"--from {iso(start)} is not before --to {iso(end)}")
    return Period(start, end, f"{iso(start)}..{iso(end)}")
