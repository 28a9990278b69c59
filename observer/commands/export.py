"""`observer export` (and `observer reconcile --export`): finalized usage sent to a billing
system exactly once."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from observer.commands.parse import parse_time, prices
from observer.commands.store import open_store
from observer.config import Settings
from observer.errors import CommandError
from observer.export.job import ExportJob, ExportResult
from observer.export.sending import Target
from observer.export.settings import ExportSettings, export_settings


def make_target(s: ExportSettings) -> Target:
    """The billing system the settings name."""
    if s.target == "http":
        from observer.export.http_target import HttpTarget

        return HttpTarget(s)
    if s.target == "stripe":
        from observer.export.stripe_target import StripeTarget

        return StripeTarget(s)
    from observer.export.openmeter_target import OpenMeterTarget

    return OpenMeterTarget(s)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    s = export_settings(settings.export_env)
    now = parse_time(args.now, flag="--now") if args.now is not None else datetime.now(UTC)
    start = parse_time(args.start, flag="--from", now=now) if args.start else None
    end = parse_time(args.end, flag="--to", now=now) if args.end else None
    if start and end and start >= end:
        raise CommandError(f"--from {args.start} is not before --to {args.end}")
    result = export(settings, s, now=now, start=start, end=end, dry_run=args.dry_run, args=args)
    return result.exit_code


def export(
    settings: Settings,
    s: ExportSettings,
    *,
    now: datetime,
    start: datetime | None,
    end: datetime | None,
    dry_run: bool,
    args: argparse.Namespace,
) -> ExportResult:
    """Run the export and print what it did (or, dry, what it would send)."""
    from prometheus_client import write_to_textfile

    from observer.export import job
    from observer.export.metrics import ledger_registry

    book = prices(str(s.prices)) if s.prices is not None else None
    j = ExportJob(
        s,
        now,
        start=start,
        end=end,
        dry_run=dry_run,
        prices=book,
        retry_refused=bool(getattr(args, "retry_refused", False)),
        settled=tuple(getattr(args, "settled", None) or ()),
        warn=lambda m: print(f"warning: {m}", file=sys.stderr),
    )
    with open_store(settings) as store:
        result = job.run(store, j, make_target)
        if dry_run:
            sys.stdout.write(job.render_plan(result, getattr(args, "format", "table")))
            return result
        sys.stdout.write(job.render(result))
        metrics_file = getattr(args, "metrics_file", None)
        if metrics_file:
            ended = datetime.now(UTC).timestamp()
            registry = ledger_registry(
                store.export_summaries,
                last_run=lambda: {s.target: ended},
                to_settle=lambda: {s.target: len(result.plan.by_hand)},
            )
            write_to_textfile(metrics_file, registry)
    return result
