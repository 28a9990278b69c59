"""`observer sessions`, `rooms`, `usage` and `reconcile`, which read the database, and
`observer simulate`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from observer.commands.parse import (
    grouping_name,
    keyed_rollups,
    listing_bounds,
    parse_time,
    prices,
)
from observer.commands.store import open_store
from observer.config import Settings
from observer.errors import EXIT_OK, CommandError


def cmd_sessions(settings: Settings, args: argparse.Namespace) -> int:
    from observer.core.protocol_values import kind_setting
    from observer.db.reads import SessionFilter
    from observer.reports import sessions as report

    since, until, limit = listing_bounds(args)
    f = SessionFilter(
        room=args.room,
        identity=args.identity,
        agent_name=args.agent_name,
        kind=(kind_setting(args.kind) or args.kind) if args.kind else None,
        since=since,
        until=until,
        state=args.state,
        limit=limit,
    )
    with open_store(settings) as store:
        rows = store.sessions(f)
    sys.stdout.write(report.render_sessions(rows, args.format))
    return EXIT_OK


def cmd_rooms(settings: Settings, args: argparse.Namespace) -> int:
    from observer.db.reads import RoomFilter
    from observer.reports import sessions as report

    since, until, limit = listing_bounds(args)
    f = RoomFilter(room=args.room, since=since, until=until, state=args.state, limit=limit)
    with open_store(settings) as store:
        rows = store.rooms(f)
    sys.stdout.write(report.render_rooms(rows, args.format))
    return EXIT_OK


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    from observer.core.protocol_values import kind_setting
    from observer.core.vocab import KINDS
    from observer.reports import usage

    now = parse_time(args.now, flag="--now") if args.now is not None else datetime.now(UTC)
    start = parse_time(args.start, flag="--from", now=now)
    end = parse_time(args.end, flag="--to", now=now) if args.end is not None else now
    if start >= end:
        raise CommandError(f"--from {args.start} is not before --to {args.end or 'now'}")
    by: list[str] = []
    for raw in args.by:
        for g in (grouping_name(part) for part in raw.split(",")):
            if not usage.is_grouping(g):
                names = ", ".join((*usage.GROUPINGS, *usage.KEYED_GROUPINGS))
                raise CommandError(f"unknown --by {g!r}; choose from {names}")
            if g not in by:
                by.append(g)
    if {"day", "month"} <= set(by):
        raise CommandError("--by day and --by month cannot be combined")
    if args.rounding not in usage.ROUNDINGS:
        raise CommandError(
            f"unknown --rounding {args.rounding!r}; choose from none, second, minute"
        )
    kind = None if args.kind == "all" else kind_setting(args.kind)
    if args.kind != "all" and kind is None:
        raise CommandError(
            f"unknown --kind {args.kind!r}; choose from {', '.join(KINDS)}, a protocol number,"
            " or all"
        )
    q = usage.UsageQuery(
        start=start,
        end=end,
        now=now,
        by=tuple(by),
        rounding=args.rounding,
        include_open=not args.exclude_open,
        kind=kind,
        states=args.states,
        tokens=args.tokens,
        prices=prices(args.prices) if args.prices is not None else None,
    )
    with open_store(settings) as store:
        lines = usage.compute(store, q, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    sys.stdout.write(usage.render(q, lines, args.format))
    return EXIT_OK


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from decimal import Decimal, InvalidOperation

    from observer.commands.export import export
    from observer.export.settings import export_settings
    from observer.reports import reconcile
    from observer.reports.periods import parse_period, period_between

    now = parse_time(args.now, flag="--now") if args.now is not None else datetime.now(UTC)
    try:
        tolerance = Decimal(args.tolerance_minutes)
    except InvalidOperation:
        tolerance = Decimal("NaN")
    if not tolerance.is_finite() or tolerance < 0:
        raise CommandError(f"--tolerance-minutes must be 0 or more, got {args.tolerance_minutes!r}")
    if args.period is not None and (args.start is not None or args.end is not None):
        raise CommandError("give --period or --from/--to, not both")
    if args.period is not None:
        period = parse_period(args.period)
    elif args.start is not None and args.end is not None:
        period = period_between(
            parse_time(args.start, flag="--from", now=now),
            parse_time(args.end, flag="--to", now=now),
        )
    else:
        raise CommandError("give --period YYYY-MM or YYYY-MM-DD, or both --from and --to")
    job = reconcile.Job(
        period=period,
        now=now,
        settle=not args.no_settle,
        force=args.force,
        stale_s=settings.settle_stale_s,
        finalize_delay_s=settings.finalize_delay_s,
        statement=Path(args.statement) if args.statement else None,
        tolerance_minutes=tolerance,
        report=Path(args.report) if args.report else None,
        report_format=args.report_format,
        by=tuple(dict.fromkeys(keyed_rollups(args.by))),
        prices=prices(args.prices) if args.prices is not None else None,
        warn=lambda m: print(f"warning: {m}", file=sys.stderr),
    )
    # the export's settings are checked before anything is written
    exporting = export_settings(settings.export_env) if args.export else None
    with open_store(settings) as store:
        outcome = reconcile.run(store, settings.livekit, job)
    sys.stdout.write(reconcile.render(outcome))
    if exporting is None:
        return outcome.exit_code
    sys.stdout.flush()
    sent = export(
        settings, exporting, now=now, start=period.start, end=period.end, dry_run=False, args=args
    )
    return max(outcome.exit_code, sent.exit_code)


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from observer import simulate

    if args.rooms < 1 or args.agents < 0 or args.users < 0 or not args.duration > 0:
        raise CommandError(
            "--rooms must be at least 1, --agents and --users 0 or more, --duration above 0"
        )
    return asyncio.run(simulate.run(settings.require_livekit(), args))
