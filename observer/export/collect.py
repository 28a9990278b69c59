"""The usage an export may bill: that of finalized periods, per customer value, agent and
bucket, computed from the sessions as `observer usage` computes it (so late data that
changed a finalized period shows, and is corrected)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from observer.core.agent_usage import COUNTERS
from observer.db.usage import UsageSpec
from observer.errors import CommandError
from observer.export.planner import COST, MINUTES, Usage, token_kind
from observer.export.settings import ExportSettings
from observer.reports import usage
from observer.reports.prices import PriceBook

Bucket = tuple[datetime, datetime]
TOKEN_COUNTERS = ("input_tokens", "output_tokens")  # sent per model with `tokens`


def day_buckets(periods: Sequence[Bucket]) -> list[Bucket]:
    """The UTC days that finalized periods cover whole (a day two periods share once)."""
    days: set[datetime] = set()
    merged: list[list[datetime]] = []
    for start, end in sorted(periods):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if day < start:
            day += timedelta(days=1)
        while day + timedelta(days=1) <= end:
            days.add(day)
            day += timedelta(days=1)
    return [(d, d + timedelta(days=1)) for d in sorted(days)]


def period_buckets(periods: Sequence[Bucket]) -> list[Bucket]:
    """Finalized periods as buckets; two that overlap would bill their common time twice."""
    ordered = sorted(set(periods))
    for (s1, e1), (s2, e2) in itertools.pairwise(ordered):
        if s2 < e1:
            raise CommandError(
                f"finalized periods [{s1:%Y-%m-%dT%H:%MZ}, {e1:%Y-%m-%dT%H:%MZ}) and"
                f" [{s2:%Y-%m-%dT%H:%MZ}, {e2:%Y-%m-%dT%H:%MZ}) overlap: with grouping period"
                " their common time would be billed twice; use grouping day"
            )
    return ordered


def buckets(
    periods: Sequence[Bucket],
    settings: ExportSettings,
    start: datetime | None,
    end: datetime | None,
) -> list[Bucket]:
    """The buckets to bill, those starting in [start, end) when given."""
    chosen = day_buckets(periods) if settings.grouping == "day" else period_buckets(periods)
    return [b for b in chosen if (start is None or b[0] >= start) and (end is None or b[0] < end)]


def _runs(bs: Sequence[Bucket]) -> list[list[Bucket]]:
    """Buckets in runs without gaps: each run is summed by one query."""
    out: list[list[Bucket]] = []
    for b in bs:
        if out and out[-1][-1][1] == b[0]:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def collect(
    store: usage.UsageSource,
    settings: ExportSettings,
    bs: Sequence[Bucket],
    now: datetime,
    *,
    prices: PriceBook | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> list[Usage]:
    """Every quantity the settings ask for, per customer value, agent and bucket."""
    out: list[Usage] = []
    key = settings.customer_key
    runs = _runs(bs) if settings.grouping == "day" else [[b] for b in bs]
    for run in runs:
        start, end = run[0][0], run[-1][1]
        by = (key, "agent", "day") if settings.grouping == "day" else (key, "agent")
        q = usage.UsageQuery(
            start, end, now, by=by, prices=prices if COST in settings.quantities else None
        )
        day_of = {b[0].strftime("%Y-%m-%d"): b for b in run}
        for line in usage.compute(store, q, warn):
            value, agent = line.groups[0] or "", line.groups[1] or ""
            b = day_of[str(line.groups[2])] if settings.grouping == "day" else run[0]
            if MINUTES in settings.quantities:
                out.append(Usage(value, agent, b[0], b[1], MINUTES, Decimal(line.billable_minutes)))
            if COST in settings.quantities:
                cost = line.costs[-1] if line.costs else None
                if cost is None:
                    warn(f"no cost for {value!r}/{agent!r} from {b[0]:%Y-%m-%d}: not sent")
                else:
                    out.append(Usage(value, agent, b[0], b[1], COST, cost))
        if "tokens" in settings.quantities:
            out += _tokens(store, settings, run, now)
    return out


def _tokens(
    store: usage.UsageSource, settings: ExportSettings, run: Sequence[Bucket], now: datetime
) -> list[Usage]:
    edges = (*(b[0] for b in run), run[-1][1])
    spec = UsageSpec(edges=edges, group_by=(settings.customer_key, "agent"), open_until=now)
    models, _sessions = store.tokens(spec)
    out = []
    for t in models:
        b = run[t.bucket]
        for counter in TOKEN_COUNTERS:
            n = t.counters[COUNTERS.index(counter)]
            if n:
                kind = token_kind(counter, t.provider, t.model)
                out.append(Usage(t.keys[0] or "", t.keys[1] or "", b[0], b[1], kind, Decimal(n)))
    return out
