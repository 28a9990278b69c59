"""The scheduled reconcile job (`observer reconcile`), run at the end of each period.

1. Settle: open sessions that no observer has confirmed present for a while, and whose
   participant the LiveKit server no longer has, are closed the way the daemon closes them
   at start-up (at `last_seen_at`, with the gap as the uncertainty).
2. Roll up: agent standing time in the period per agent name, per room and in total, under
   LiveKit's per-session minute rounding, into `period_rollups`. Rows are provisional until
   the finalize delay after the period's end has passed; a finalized period is kept as it is
   unless forced.
3. Compare: with an external statement (CSV), within a tolerance, into a report.

Everything the run writes to the database is written in one transaction, after every input
has been checked and LiveKit has answered. The steps are modules of their own: `settle`,
`rollup_plan`, `statement`; the period is `periods`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from observer.config import LiveKitSettings
from observer.core.times import iso
from observer.db.reads import StaleSession
from observer.db.store import Store
from observer.errors import CommandError
from observer.reports.periods import Period
from observer.reports.prices import PriceBook
from observer.reports.rollup_plan import Change, RollupPlan, compute_rollups, plan_rollups
from observer.reports.settle import SettleSummary, gone, live_rooms
from observer.reports.statement import (
    Difference,
    compare,
    difference_dict,
    keyed_groupings,
    number,
    read_statement,
    report_format,
    write_report,
)


@dataclass(frozen=True)
class Job:
    period: Period
    now: datetime  # open sessions count up to here; decides whether the period is final
    settle: bool = True
    force: bool = False
    stale_s: float = 60.0
    finalize_delay_s: float = 3600.0
    statement: Path | None = None
    tolerance_minutes: Decimal = Decimal(0)
    report: Path | None = None
    report_format: str | None = None
    by: tuple[str, ...] = ()  # keyed groupings rolled up as well (attribute:KEY, ...)
    prices: PriceBook | None = None  # cost per group as well; without, stored costs stay
    warn: Callable[[str], None] = lambda _m: None  # told of each thing without a price

    @property
    def finalize_after(self) -> datetime:
        return self.period.end + timedelta(seconds=self.finalize_delay_s)


@dataclass(frozen=True)
class ReconcileResult:
    job: Job
    settle: SettleSummary
    plan: RollupPlan
    compared: int = 0
    differences: tuple[Difference, ...] | None = None  # None: no statement given

    @property
    def exit_code(self) -> int:
        """0 clean; 1 when the statement differs or a finalized period no longer matches."""
        drift = self.plan.state == "final" and bool(self.plan.changes)
        return 1 if self.differences or drift else 0


def run(store: Store, lk: LiveKitSettings | None, job: Job) -> ReconcileResult:
    """Run the job; raises CommandError (or a database error) with nothing written."""
    statement = read_statement(job.statement) if job.statement else None
    fmt = report_format(job.report, job.report_format) if job.report else None
    if not store.schema_is_current():
        raise CommandError("the database schema is not current; run `observer migrate`")

    # Settling compares with what LiveKit has right now, so it uses the real clock, never
    # --now: a time in the future would close sessions a daemon is still watching.
    settled_at = datetime.now(UTC)
    to_close: list[StaleSession] = []
    if not job.settle:
        summary = SettleSummary(skipped="--no-settle")
    elif lk is None:
        summary = SettleSummary(skipped="LIVEKIT_URL and its keys are not set")
    else:
        stale = store.stale_open_sessions(settled_at - timedelta(seconds=job.stale_s))
        live = asyncio.run(live_rooms(lk, {s.room_name for s in stale}))
        to_close = gone(stale, live)
        summary = SettleSummary(stale=len(stale), gone=len(to_close))

    p = job.period
    with store.rollup_transaction() as tx:
        if not tx.try_lock():
            raise CommandError(
                "another `observer reconcile` is running on this database; nothing was written"
            )
        closed = tx.settle(to_close, settled_at)
        existing = tx.rollups(p.start, p.end)
        keyed = tuple(dict.fromkeys((*job.by, *(keyed_groupings(statement or {})))))
        fresh = compute_rollups(tx, p, job.now, keyed, job.prices, job.warn)
        if job.prices is None:  # a run without prices leaves the stored costs as they are
            stored = {(r.group_kind, r.group_key): r.cost for r in existing}
            fresh = [replace(r, cost=stored.get((r.group_kind, r.group_key))) for r in fresh]
        plan = plan_rollups(
            existing, fresh, finalize=job.now >= job.finalize_after, force=job.force, now=job.now
        )
        tx.write_rollups(p.start, p.end, plan.write, plan.drop)
        if statement is not None and job.statement is not None:
            compared, diffs = compare(plan.rows, statement, job.tolerance_minutes)
            tx.write_comparison(
                p.start,
                p.end,
                compared_at=settled_at,
                statement=job.statement.name,
                tolerance_minutes=str(job.tolerance_minutes),
                groups_compared=compared,
                differences=[difference_dict(d) for d in diffs],
            )
    summary = replace(summary, closed=closed)

    if statement is None:
        return ReconcileResult(job, summary, plan)
    if job.report and fmt:
        write_report(job.report, fmt, p, job.tolerance_minutes, diffs)
    return ReconcileResult(job, summary, plan, compared, tuple(diffs))


def render(o: ReconcileResult) -> str:
    """A short summary for stdout."""
    job, plan = o.job, o.plan
    out = [f"reconcile {job.period.label}: [{iso(job.period.start)}, {iso(job.period.end)})"]
    s = o.settle
    if s.skipped:
        out.append(f"settle: skipped ({s.skipped})")
    else:
        out.append(
            f"settle: {s.stale} open session(s) not seen for {job.stale_s:g} s;"
            f" {s.gone} gone from LiveKit, {s.closed} closed as reconciled"
        )
    total = next((r for r in plan.rows if r.group_kind == "total"), None)
    agents = sum(1 for r in plan.rows if r.group_kind == "agent")
    rooms = sum(1 for r in plan.rows if r.group_kind == "room")
    numbers = (
        f"{agents} agent(s), {rooms} room(s), {total.sessions if total else 0} session(s),"
        f" {total.billable_minutes if total else 0} billable minute(s)"
    )
    if total is not None and job.prices is not None:
        numbers += f", cost {total.cost if total.cost is not None else 'unknown (see warnings)'}"
    if plan.state == "provisional":
        out.append(f"rollup: provisional until {iso(job.finalize_after)}; {numbers}")
    elif plan.state == "finalized":
        out.append(f"rollup: finalized; {numbers}")
    elif plan.state == "forced":
        out.append(f"rollup: rewritten (--force), {len(plan.changes)} group(s) changed; {numbers}")
    elif plan.changes:
        since = iso(min(r.finalized_at for r in plan.rows if r.finalized_at))
        out.append(
            f"rollup: final since {since}, but the sessions now give other numbers for"
            f" {len(plan.changes)} group(s); run with --force to rewrite; {numbers}"
        )
    else:
        since = iso(min(r.finalized_at for r in plan.rows if r.finalized_at))
        out.append(f"rollup: final since {since}, unchanged; {numbers}")
    if plan.state in ("forced", "final"):
        out += [f"  {_describe_change(c)}" for c in plan.changes]
    if o.differences is not None:
        out.append(
            f"statement: {o.compared} group(s) compared, {len(o.differences)} difference(s)"
            f" beyond {number(job.tolerance_minutes)} minute(s)"
        )
        out += [
            f"  {_group(d.group_kind, d.group_key)}: observer {_or_dash(d.observer_minutes)},"
            f" statement {_or_dash(number(d.statement_minutes))} ({d.status})"
            for d in o.differences
        ]
        if job.report:
            out.append(f"report: {job.report}")
    return "\n".join(out) + "\n"


def _describe_change(c: Change) -> str:
    def pair(field: str) -> str:
        old, new = (getattr(r, field) if r else None for r in (c.old, c.new))
        return f"{_or_dash(old)} -> {_or_dash(new)}"

    return (
        f"{_group(c.group_kind, c.group_key)}: billable minutes {pair('billable_minutes')},"
        f" sessions {pair('sessions')}, ms {pair('duration_ms')}"
    )


def _group(kind: str, key: str) -> str:
    if kind == "total":
        return kind
    return f"{kind} {key!r}" if key else f"{kind} (no name)"


def _or_dash(v: object) -> str:
    return "-" if v is None else str(v)
