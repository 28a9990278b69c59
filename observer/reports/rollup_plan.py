"""Rollups, the second step of `observer reconcile`: agent standing time in a period per
group, and what to write given the rows already stored (provisional, final, forced)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from observer.core.vocab import RollupState
from observer.db.rollups import Rollup, RollupTx
from observer.db.usage import UsageSpec
from observer.reports import usage
from observer.reports.periods import Period
from observer.reports.prices import PriceBook


def compute_rollups(
    tx: RollupTx,
    period: Period,
    now: datetime,
    keyed: Sequence[str] = (),
    prices: PriceBook | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> list[Rollup]:
    """Agent standing time in the period per agent name, per room, per value of each
    keyed grouping (attribute:KEY, room-metadata[:KEY]) and in total.

    Open sessions count up to min(now, period end). Sessions without an agent name (or
    the key) are grouped under the key "", and a period without sessions still gets its
    total row.
    """
    total = [0, 0, 0]
    sums: dict[tuple[str, str], list[int]] = {("total", ""): total}
    by: tuple[str, ...] = ("agent", "room", *keyed)
    for kind in by:
        spec = UsageSpec(edges=(period.start, period.end), group_by=(kind,), open_until=now)
        for t in tx.usage(spec):
            targets = [sums.setdefault((kind, t.keys[0] or ""), [0, 0, 0])]
            if kind == "agent":  # every session has one agent name or none: they add up
                targets.append(total)
            for acc in targets:
                acc[0] += t.sessions
                acc[1] += t.duration_ms
                acc[2] += t.billable_minutes
    costs: dict[tuple[str, str], str | None] = {}
    if prices is not None:
        costs = _costs(tx, period, now, by, prices, warn)
    return [
        Rollup(kind, key, acc[0], acc[1], acc[2], cost=costs.get((kind, key)))
        for (kind, key), acc in sorted(sums.items())
    ]


def _costs(
    tx: RollupTx,
    period: Period,
    now: datetime,
    by: Sequence[str],
    prices: PriceBook,
    warn: Callable[[str], None],
) -> dict[tuple[str, str], str | None]:
    """Each group's cost as `observer usage --prices` gives it; the total is the sum of the
    agents' (empty if one is)."""
    out: dict[tuple[str, str], str | None] = {}
    total: Decimal | None = Decimal(0)
    for kind in by:
        q = usage.UsageQuery(period.start, period.end, now, by=(kind,), prices=prices)
        for line in usage.compute(tx, q, warn):
            cost = line.costs[-1]
            key = (kind, line.groups[0] or "")
            previous = out.get(key, "0")
            out[key] = None if cost is None or previous is None else str(Decimal(previous) + cost)
            if kind == "agent":
                total = None if total is None or cost is None else total + cost
    out[("total", "")] = None if total is None else str(total)
    return out


@dataclass(frozen=True)
class Change:
    group_kind: str
    group_key: str
    old: Rollup | None
    new: Rollup | None


@dataclass(frozen=True)
class RollupPlan:
    state: RollupState
    rows: tuple[Rollup, ...]  # the period's rows once the plan is written
    write: tuple[Rollup, ...]  # rows to insert or replace
    drop: tuple[tuple[str, str], ...]  # groups to delete
    changes: tuple[Change, ...]  # groups whose stored numbers differ from the fresh ones


def _numbers(r: Rollup | None) -> tuple[int, int, int, str | None] | None:
    return None if r is None else (r.sessions, r.duration_ms, r.billable_minutes, r.cost)


def plan_rollups(
    existing: Sequence[Rollup],
    fresh: Sequence[Rollup],
    *,
    finalize: bool,
    force: bool,
    now: datetime,
) -> RollupPlan:
    """What to write for a period, given its stored rows and freshly computed ones.

    A finalized period stays as it is unless forced (and then only if a number changed).
    Rows whose numbers and state are unchanged are not rewritten, so running twice leaves
    identical rows; `computed_at` is when a row's numbers were last written.
    """
    # A keyed grouping asked for the first time is new rows, not a change: it is added
    # even to a finalized period. One not asked for this time is left as stored.
    fresh_kinds = {r.group_kind for r in fresh}
    existing = [r for r in existing if r.group_kind in fresh_kinds]
    stored_kinds = {r.group_kind for r in existing}
    added = [r for r in fresh if r.group_kind not in stored_kinds]
    fresh = [r for r in fresh if r.group_kind in stored_kinds] if existing else fresh
    old = {(r.group_kind, r.group_key): r for r in existing}
    new = {(r.group_kind, r.group_key): r for r in fresh}
    changes = tuple(
        Change(k[0], k[1], old.get(k), new.get(k))
        for k in sorted(old.keys() | new.keys())
        if _numbers(old.get(k)) != _numbers(new.get(k))
    )
    was_final = any(r.finalized_at for r in existing)
    if was_final and not (force and changes):
        final_at = next(r.finalized_at for r in existing if r.finalized_at)
        extra = tuple(replace(r, finalized_at=final_at, computed_at=now) for r in added)
        return RollupPlan("final", (*existing, *extra), extra, (), changes)
    if existing:
        fresh = [*fresh, *added]
        new = {(r.group_kind, r.group_key): r for r in fresh}
    state: RollupState
    if was_final:
        state, finalized_at = "forced", now
    elif finalize:
        state, finalized_at = "finalized", now
    else:
        state, finalized_at = "provisional", None
    rows, write = [], []
    for k, r in sorted(new.items()):
        prev = old.get(k)
        same = prev is not None and _numbers(prev) == _numbers(r)
        computed_at = prev.computed_at if prev is not None and same else now
        row = replace(r, finalized_at=finalized_at, computed_at=computed_at)
        rows.append(row)
        if row != prev:
            write.append(row)
    drop = tuple(k for k in sorted(old) if k not in new)
    return RollupPlan(state, tuple(rows), tuple(write), drop, changes)
