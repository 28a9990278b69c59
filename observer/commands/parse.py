"""Times, limits and groupings as the options give them; a bad one is a `CommandError`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from observer.core.times import EARLIEST, LATEST, OutOfRange, parse_iso
from observer.errors import CommandError

if TYPE_CHECKING:
    from observer.reports.prices import PriceBook

LIMIT_MAX = 2**63 - 1


def parse_time(raw: str, *, flag: str = "time", now: datetime | None = None) -> datetime:
    """ISO 8601 date or time (UTC unless it says otherwise), or `30m`, `24h`, `7d` ago."""
    now = now or datetime.now(UTC)
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = raw.strip()
    unreadable = CommandError(f"{flag}: not an ISO 8601 time or a relative time like 24h: {raw!r}")
    if not (len(text) >= 2 and text[-1] in units and text[:-1].isdigit()):
        try:
            return parse_iso(text)
        except OutOfRange as exc:
            raise CommandError(f"{flag}: {raw!r} is {exc}") from None
        except ValueError:
            raise unreadable from None
    try:
        value = now - timedelta(**{units[text[-1]]: int(text[:-1])})
    except OverflowError:
        raise unreadable from None
    if not EARLIEST <= value < LATEST:
        raise CommandError(
            f"{flag}: {raw!r} is out of range ({EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d})"
        )
    return value


def parse_limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    try:
        limit = int(text)
    except ValueError:
        raise CommandError(f"--limit must be a whole number, got {raw!r}") from None
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, got {raw!r}")
    if limit > LIMIT_MAX:
        raise CommandError(f"--limit must be at most {LIMIT_MAX}, got {raw!r}")
    return limit


def listing_bounds(args: argparse.Namespace) -> tuple[datetime | None, datetime | None, int | None]:
    """--since, --until and --limit of `observer sessions` and `observer rooms` (a table
    shows 100 rows unless told otherwise; CSV and JSON everything)."""
    since = parse_time(args.since, flag="--since") if args.since is not None else None
    until = parse_time(args.until, flag="--until") if args.until is not None else None
    if since and until and since > until:
        raise CommandError("--since is after --until")
    limit = parse_limit(args.limit)
    if limit is None and args.format == "table":
        limit = 100
    return since, until, limit


def prices(path: str) -> PriceBook:
    """The prices file --prices names."""
    from observer.reports.prices import PricesError, load

    try:
        return load(path)
    except PricesError as exc:
        raise CommandError(str(exc)) from None


def grouping_name(raw: str) -> str:
    """A --by value as written, its name part in lower case (a KEY keeps its case)."""
    name, colon, key = raw.strip().partition(":")
    return name.lower() + colon + key


def keyed_rollups(raw: list[str]) -> list[str]:
    """The keyed groupings `observer reconcile --by` rolls up besides agent, room, total."""
    from observer.db.usage import USAGE_GROUP_COLUMNS, is_group_name

    out = []
    for arg in raw:
        for g in (x.strip() for x in arg.split(",")):
            if g in ("agent", "room", "total"):
                continue  # always rolled up
            if not is_group_name(g) or g in USAGE_GROUP_COLUMNS:
                raise CommandError(
                    f"unknown --by {g!r}; choose from attribute:KEY, room-metadata,"
                    " room-metadata:KEY"
                )
            out.append(g)
    return out
