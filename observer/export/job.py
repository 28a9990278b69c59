"""One `observer export` run: collect the usage of finalized periods, plan against the
ledger, record the events as pending, send every pending event, and say what happened."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from observer.core.times import iso
from observer.db.exports import RELEASED_ANSWER, LedgerRow
from observer.db.store import Store
from observer.errors import CommandError
from observer.export.collect import buckets, collect
from observer.export.planner import Event, Plan, Window, plan
from observer.export.sending import SendSummary, Target, send_pending
from observer.export.settings import ExportSettings
from observer.reports.prices import PriceBook
from observer.reports.render import table

# Stripe takes meter events of the last 35 days, and at most 5 minutes ahead
# (and no negative values)
STRIPE_WINDOW = Window(max_age=timedelta(days=35), max_ahead=timedelta(minutes=5), negative=False)


@dataclass(frozen=True)
class ExportJob:
    settings: ExportSettings
    now: datetime
    start: datetime | None = None  # buckets starting at or after
    end: datetime | None = None  # ... and before
    dry_run: bool = False
    prices: PriceBook | None = None
    retry_refused: bool = False  # plan the keys held by a refusal again, as new events
    settled: tuple[str, ...] = ()  # identifiers of negative corrections settled by hand
    warn: Callable[[str], None] = lambda _m: None


@dataclass
class ExportResult:
    job: ExportJob
    plan: Plan
    buckets: int
    recorded: int = 0
    settled: int = 0
    sent: SendSummary = field(default_factory=SendSummary)
    refused: list[LedgerRow] = field(default_factory=list)  # held, over all runs

    @property
    def exit_code(self) -> int:
        """0 when everything was acknowledged; 1 when a customer has no billing id, usage
        is outside what the target takes, a negative correction waits to be settled by hand,
        or an event is refused (this run or before, not retried since) or still pending."""
        p, s = self.plan, self.sent
        problems = p.unmapped or p.out_of_window or p.by_hand or self.refused
        return 1 if problems or s.refused or s.pending else 0


def window_of(target: str) -> Window:
    return STRIPE_WINDOW if target == "stripe" else Window()


def run(
    store: Store,
    job: ExportJob,
    make_target: Callable[[ExportSettings], Target],
) -> ExportResult:
    """Plan, record and send; with `dry_run` only plan (nothing is written or sent).
    Identifiers in `job.settled` must be negative corrections this plan lists to settle by
    hand (else a `CommandError`, nothing written): they are recorded as acknowledged."""
    s = job.settings
    bs = buckets(store.finalized_periods(), s, job.start, job.end)
    usage = collect(store, s, bs, job.now, prices=job.prices, warn=job.warn)
    wanted = set(bs)
    with store.export_transaction() as tx:
        if not tx.try_lock():
            raise CommandError("another `observer export` is planning on this database; run again")
        ledger = []
        if bs:
            ledger = [
                x
                for x in tx.ledger(s.target, bs[0][0], bs[-1][1])
                if (x.key.start, x.key.end) in wanted
            ]
        p = plan(
            s.target,
            usage,
            ledger,
            mapping=s.customers,
            now=job.now,
            window=window_of(s.target),
            retry_refused=job.retry_refused,
        )
        settle = [e for e in p.by_hand if e.identifier in job.settled]
        unknown = sorted(set(job.settled) - {e.identifier for e in settle})
        if unknown:
            raise CommandError(
                f"--settled {unknown[0]}: no negative correction waits to be settled under"
                " that identifier (see the `settle by hand` lines of a run)"
            )
        if job.dry_run:
            return ExportResult(job, p, len(bs), refused=store.export_refused(s.target))
        settled = tx.settle(settle, job.now)
        tx.settle(p.released, job.now, RELEASED_ANSWER)
        recorded = tx.record(p.events, job.now)
    p = replace(p, by_hand=tuple(e for e in p.by_hand if e not in settle))
    result = ExportResult(job, p, len(bs), recorded, settled)
    result.sent = asyncio.run(_send(store, make_target, s))
    result.refused = store.export_refused(s.target)
    return result


async def _send(
    store: Store,
    make_target: Callable[[ExportSettings], Target],
    s: ExportSettings,
) -> SendSummary:
    target = make_target(s)  # inside the loop: its HTTP session belongs to it
    try:
        return await send_pending(store, target, rate_per_s=s.rate_per_s, attempts=s.attempts)
    finally:
        await target.close()


def _event_dict(e: Event) -> dict[str, Any]:
    return {
        "identifier": e.identifier,
        "customer": e.key.customer,
        "customer_value": e.customer_value,
        "agent": e.key.agent,
        "period_start": iso(e.key.start),
        "period_end": iso(e.key.end),
        "kind": e.key.kind,
        "sequence": e.seq,
        "quantity": str(e.quantity),
        "time": iso(e.timestamp),
    }


def render_plan(o: ExportResult, fmt: str) -> str:
    """What a dry run would send, as a table or JSON."""
    p = o.plan
    if fmt == "json":
        doc = {
            "target": o.job.settings.target,
            "events": [_event_dict(e) for e in p.events],
            "unmapped": [
                {"customer_value": v, "minutes": str(m), "kept_keys": p.kept_unmapped.get(v, 0)}
                for v, m in p.unmapped.items()
            ],
            "remapped": [
                {"customer_value": r.customer_value, "was": r.was, "now": r.now, "keys": r.keys}
                for r in p.remapped
            ],
            "out_of_window": [
                {**_event_dict(x.event), "reason": x.reason} for x in p.out_of_window
            ],
            "settle_by_hand": [_event_dict(e) for e in p.by_hand],
            "refused": [
                {"identifier": r.identifier, "customer": r.key.customer, "answer": r.answer}
                for r in o.refused
            ],
        }
        return json.dumps(doc, indent=2) + "\n"
    rows = [("day/period", "customer", "agent", "kind", "seq", "quantity")]
    rows += [
        (
            f"{e.key.start:%Y-%m-%d}",
            e.key.customer,
            e.key.agent or "-",
            e.key.kind,
            str(e.seq),
            str(e.quantity),
        )
        for e in p.events
    ]
    return "\n".join([*table(rows), *_problems(o)]) + "\n"


def _problems(o: ExportResult) -> list[str]:
    p = o.plan
    out = [
        f"not sent: customer {v!r} has no billing id ({m} minute(s)); map it in [customers]"
        + _kept(p.kept_unmapped.get(v, 0))
        if v
        else f"not sent: {m} minute(s) of sessions without {o.job.settings.customer_key}"
        for v, m in sorted(p.unmapped.items())
    ]
    out += [
        f"remapped: customer {r.customer_value!r} now maps to {r.now!r}, was {r.was!r}:"
        f" {r.keys} key(s) billed under {r.was!r} stay there (late data is corrected there,"
        f" nothing is moved or billed twice); only usage never sent goes to {r.now!r}"
        for r in p.remapped
    ]
    out += [
        f"not sent: {x.event.key.kind} of {x.event.key.customer!r} for {x.event.key.start:%Y-%m-%d}"
        f" ({x.event.quantity}) at {iso(x.event.timestamp)} is {x.reason}"
        for x in p.out_of_window
    ]
    out += [
        f"settle by hand: {e.identifier}: {e.key.kind} of {e.key.customer!r} for"
        f" {e.key.start:%Y-%m-%d} went down by {-e.quantity}, which {o.job.settings.target}"
        " cannot take (no negative values): issue a credit note for it there, then run"
        f" `observer export --settled {e.identifier}`"
        for e in p.by_hand
    ]
    out += [
        f"refused: {r.identifier}: {r.key.kind} of {r.key.customer!r} for {r.key.start:%Y-%m-%d}"
        f" ({r.quantity}): {r.answer or 'no answer kept'}; held until"
        " `observer export --retry-refused`"
        for r in o.refused
    ]
    return out


def _kept(keys: int) -> str:
    if not keys:
        return ""
    return (
        f"; {keys} key(s) sent for it before are left as sent (a mapping change corrects"
        " nothing): map it again to its earlier id to go on billing them"
    )


def render(o: ExportResult) -> str:
    """A short summary for stdout."""
    s, p, sent = o.job.settings, o.plan, o.sent
    corrections = sum(e.is_correction for e in p.events)
    out = [
        f"export to {s.target}: {o.buckets} bucket(s) of finalized periods by {s.grouping};"
        f" {len(p.events)} new event(s) ({corrections} correction(s)), {p.unchanged} unchanged",
        f"sent: {sent.acknowledged} acknowledged, {sent.refused} refused,"
        f" {sent.pending} still pending (run again), {sent.retries} retried",
    ]
    if o.settled:
        out.append(f"recorded {o.settled} negative correction(s) as settled by hand")
    if p.held:
        out.append(f"{p.held} key(s) held by a refusal: nothing planned for them")
    if p.released:
        out.append(
            f"{len(p.released)} refused key(s) released: their usage is now billed under"
            " another customer id, nothing is owed under the refused one"
        )
    out += _problems(o)
    return "\n".join(out) + "\n"
