"""Command line: `observer migrate|check|run|sessions|rooms|usage|reconcile|web|simulate`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import dotenv_values
from sqlalchemy.exc import SQLAlchemyError

from observer.core.times import EARLIEST, LATEST, OutOfRange, parse_iso

if TYPE_CHECKING:
    from observer.config import LiveKitSettings
    from observer.db.store import Store
    from observer.reports.prices import PriceBook

from observer import logs
from observer.arguments import NEEDS_LIVEKIT, USES, build_parser
from observer.config import ConfigError, Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input on the command line; exit 2."""


def read_env(env_file: str | None) -> dict[str, str]:
    """The environment over the `.env` file: real environment variables win."""
    path = Path(env_file or ".env")
    if env_file and not path.is_file():
        raise UsageError(f"env file not found: {env_file}")
    values = (
        {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    )
    return {**values, **os.environ}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or bad arguments (said in one line)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        env = read_env(args.env_file)
        settings = Settings.from_mapping(
            env, need_livekit=args.command in NEEDS_LIVEKIT, uses=USES[args.command]
        )
        logs.setup(settings.log_level, settings.log_format)
        return dispatch(args, settings)
    except ConfigError as exc:
        where = f" ({settings_source(args.env_file)})" if exc.missing else ""
        print(f"observer: {exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except (SQLAlchemyError, OSError) as exc:  # the database or a file: one clear line
        if isinstance(exc, SQLAlchemyError):
            first = str(exc).splitlines()[0] if str(exc) else ""
            msg = f"database error: {type(exc).__name__}: {first}"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        print(f"observer: {msg}", file=sys.stderr)
        # the one-shot commands document 2 for an error before anything was done
        one_shot = ("migrate", "sessions", "rooms", "usage", "reconcile")
        return EXIT_USAGE if args.command in one_shot else EXIT_FAILED


def settings_source(env_file: str | None) -> str:
    """Where settings come from, for the message that says one is missing."""
    if env_file:
        return f"settings are read from the environment and {env_file}"
    here = "" if Path(".env").is_file() else ", which does not exist here,"
    return (
        f"settings are read from the environment and ./.env{here} or from --env-file FILE;"
        " .env.example lists them all"
    )


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        return cmd_migrate(settings)
    if args.command == "check":
        return asyncio.run(cmd_check(settings))
    if args.command == "run":
        return cmd_run(settings, args)
    if args.command == "sessions":
        return cmd_sessions(settings, args)
    if args.command == "rooms":
        return cmd_rooms(settings, args)
    if args.command == "usage":
        return cmd_usage(settings, args)
    if args.command == "reconcile":
        return cmd_reconcile(settings, args)
    if args.command == "web":
        return cmd_web(settings, args)
    if args.command == "simulate":
        from observer import simulate

        if args.rooms < 1 or args.agents < 0 or args.users < 0 or not args.duration > 0:
            raise UsageError(
                "--rooms must be at least 1, --agents and --users 0 or more, --duration above 0"
            )
        return asyncio.run(simulate.run(settings.require_livekit(), args))
    raise UsageError(f"unknown command {args.command}")


def missing_sqlite_file(database_url: str) -> Path | None:
    """The SQLite file the URL names, when it does not exist (connecting would create it)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database)
    return None if path.exists() else path.resolve()


def open_store(settings: Settings, *, for_page: bool = False) -> Store:
    """The database, for a command that reads it: never created here, and only with the
    current schema. `for_page`: with the page's own threads and connections."""
    from observer.db.store import Store

    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        raise UsageError(f"no database at {missing}; run `observer migrate` to create it")
    store = (
        Store.for_page(settings.database_url, workers=settings.page_workers)
        if for_page
        else Store(settings.database_url)
    )
    try:
        current = store.schema_is_current()
    except BaseException:
        store.close()
        raise
    if not current:
        store.close()
        raise UsageError(
            f"the database at {settings.database_url_safe} has no schema or an old one;"
            " run `observer migrate`"
        )
    return store


def cmd_migrate(settings: Settings) -> int:
    from observer.db import migrate

    migrate.upgrade(settings.database_url)
    print(f"database at head revision {migrate.head_revision()}: {settings.database_url_safe}")
    return EXIT_OK


async def cmd_check(settings: Settings) -> int:
    from observer import livekit_api
    from observer.config import http_url_of
    from observer.db.store import Store

    lk = settings.require_livekit()
    ok = True
    for probe in await livekit_api.probe(lk, 5):  # every node of the cluster on its own
        url = http_url_of(probe.url)
        if probe.error is None:
            print(f"livekit: ok ({probe.rooms} rooms) at {url}")
            continue
        ok = False
        if probe.refused:
            print(f"livekit: FAILED: {livekit_api.refusal(url, lk, probe.error)}")
        else:
            print(f"livekit: FAILED at {url}: unreachable ({livekit_api.reason(probe.error)})")
    orphans = await unhosted_rooms(lk, settings.room_patterns)
    if orphans:
        ok = False
        print(
            f"livekit: {len(orphans)} room(s) listed but hosted by no live node"
            f" (the observer cannot enter them): {', '.join(orphans)}"
        )

    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        print(f"database: FAILED: no database at {missing}; run `observer migrate` to create it")
        return EXIT_FAILED
    store = Store(settings.database_url)
    try:
        await store.run(store.ping)
        current = await store.run(store.schema_is_current)
        if current:
            print(f"database: ok at {settings.database_url_safe}")
            print_observers(store, settings)
        else:
            ok = False
            print(
                f"database: reachable but schema is not current; run `observer migrate`"
                f" ({settings.database_url_safe})"
            )
    except SQLAlchemyError as exc:
        ok = False
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"database: FAILED at {settings.database_url_safe}: {first}")
    finally:
        store.close()
    return EXIT_OK if ok else EXIT_FAILED


async def unhosted_rooms(lk: LiveKitSettings, patterns: Sequence[str]) -> list[str]:
    """The watched rooms LiveKit lists that no live node hosts (a few probes at a time);
    none when the server cannot be asked (`check` has said so already)."""
    from livekit import api

    from observer import livekit_api
    from observer.core import discovery

    lkapi = livekit_api.client(lk, 10)
    try:
        try:
            resp = await lkapi.room.list_rooms(api.ListRoomsRequest())
        except livekit_api.API_ERRORS:
            return []
        names = [r.name for r in resp.rooms if discovery.matches(r.name, tuple(patterns))]
        slots = asyncio.Semaphore(8)

        async def probe(name: str) -> bool | None:
            async with slots:
                return await livekit_api.room_hosted(lkapi, name)

        answers = await asyncio.gather(*(probe(n) for n in names))
    finally:
        await lkapi.aclose()
    return sorted(n for n, hosted in zip(names, answers, strict=True) if hosted is False)


# Measured: each watched room holds a few sockets and pipes (one peer connection, ICE
# candidates gathered once); see bench/bench_fleet.py. Kept with a margin.
FDS_PER_ROOM = 5


def print_observers(store: Store, settings: Settings) -> None:
    """The observers whose heartbeats are current, and the rooms each is inside."""
    from observer.db import fleet
    from observer.reports.render import printable

    alive = fleet.members(store.engine, datetime.now(UTC), settings.failover_s / 2)
    print(f"observers: {len(alive)} alive")
    for m in alive:
        state = " (stopping)" if m.stopping else ""
        rooms = ", ".join(m.rooms[:20]) + (", ..." if len(m.rooms) > 20 else "")
        print(
            f"  {printable(m.observer_id)} on {printable(m.host)} pid {m.pid}{state}:"
            f" {len(m.rooms)} room(s){': ' + printable(rooms) if rooms else ''}"
        )


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the limit in force."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    level = logging.WARNING if soft // FDS_PER_ROOM < 100 else logging.INFO
    logging.getLogger("observer").log(
        level, "open files limit", extra={"limit": soft, "rooms_it_allows": soft // FDS_PER_ROOM}
    )
    return soft


def hold_sqlite_run_lock(database_url: str) -> None:
    """One `observer run` per SQLite file: an exclusive lock on a file beside it, held
    until the process exits. PostgreSQL takes several observers (see README)."""
    import fcntl

    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database).resolve()
    fd = os.open(f"{path}.run-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"another `observer run` is using {path}; SQLite takes one observer"
            " (use PostgreSQL for several)"
        ) from None


def hold_observer_id(store: Store, settings: Settings, run_id: str) -> None:
    """Refuse at once, in one line, an observer id that another live process holds. A
    database that cannot answer yet, or has no schema yet, is left to the daemon: it waits
    for it (or migrates it) and then holds the id itself."""
    from observer.daemon.identity import IdHeld, hold

    try:
        if not store.schema_is_current():
            return
        hold(store.engine, settings, run_id)
    except SQLAlchemyError:
        return
    except IdHeld as exc:
        raise UsageError(str(exc)) from None


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The daemon, with the process around it: open files, the native core, signals."""
    from observer.daemon.identity import new_run_id
    from observer.daemon.service import Observer
    from observer.daemon.watcher import start_native_core_quietly
    from observer.db.store import Store
    from observer.livekit_api import first_contact

    lk = settings.require_livekit()
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None and not args.migrate:
        raise UsageError(
            f"no database at {missing}; run `observer migrate`, or start with"
            " `observer run --migrate`"
        )
    hold_sqlite_run_lock(settings.database_url)  # the lock lasts as long as the process
    store = Store(settings.database_url)
    run_id = new_run_id()

    async def main() -> int:
        obs = Observer(settings, store, lk, migrate=args.migrate, run_id=run_id)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, obs.stop)
        try:
            return await obs.run()
        except OSError as exc:
            if is_bind_error(exc):
                addr = f"{settings.http_host}:{settings.http_port}"
                raise ConfigError(
                    [
                        f"OBSERVER_HTTP_ADDR {addr} cannot be used ({exc.strerror or exc});"
                        " choose a free host:port, or 'off'"
                    ]
                ) from None
            raise

    try:
        hold_observer_id(store, settings, run_id)
        asyncio.run(first_contact(lk))  # a refused key stops here (exit 2), before anything starts
        raise_fd_limit()
        if not settings.room_processes:
            start_native_core_quietly()
        # `kill -USR1 <pid>` writes every thread's stack to stderr: what a stuck daemon is doing
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # The page's threads share the interpreter with recording's (the writer, the event
        # loop): handed over every 1 ms rather than 5, a write waits far less behind an
        # export being rendered (bench/bench_export.py)
        sys.setswitchinterval(0.001)
        return asyncio.run(main())
    finally:
        store.close()


def is_bind_error(exc: OSError) -> bool:
    """Whether listening on an address failed: taken, not this host's, or not allowed."""
    import errno
    import socket

    if isinstance(exc, socket.gaierror):
        return True
    bind = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return exc.errno in bind and "bind" in str(exc)


def parse_time(raw: str, *, flag: str = "time", now: datetime | None = None) -> datetime:
    """ISO 8601 date or time (UTC unless it says otherwise), or `30m`, `24h`, `7d` ago."""
    now = now or datetime.now(UTC)
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = raw.strip()
    unreadable = UsageError(f"{flag}: not an ISO 8601 time or a relative time like 24h: {raw!r}")
    if not (len(text) >= 2 and text[-1] in units and text[:-1].isdigit()):
        try:
            return parse_iso(text)
        except OutOfRange as exc:
            raise UsageError(f"{flag}: {raw!r} is {exc}") from None
        except ValueError:
            raise unreadable from None
    try:
        value = now - timedelta(**{units[text[-1]]: int(text[:-1])})
    except OverflowError:
        raise unreadable from None
    if not EARLIEST <= value < LATEST:
        raise UsageError(
            f"{flag}: {raw!r} is out of range ({EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d})"
        )
    return value


LIMIT_MAX = 2**63 - 1


def parse_limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    try:
        limit = int(text)
    except ValueError:
        raise UsageError(f"--limit must be a whole number, got {raw!r}") from None
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {raw!r}")
    if limit > LIMIT_MAX:
        raise UsageError(f"--limit must be at most {LIMIT_MAX}, got {raw!r}")
    return limit


def listing_bounds(args: argparse.Namespace) -> tuple[datetime | None, datetime | None, int | None]:
    """--since, --until and --limit of `observer sessions` and `observer rooms` (a table
    shows 100 rows unless told otherwise; CSV and JSON everything)."""
    since = parse_time(args.since, flag="--since") if args.since is not None else None
    until = parse_time(args.until, flag="--until") if args.until is not None else None
    if since and until and since > until:
        raise UsageError("--since is after --until")
    limit = parse_limit(args.limit)
    if limit is None and args.format == "table":
        limit = 100
    return since, until, limit


def cmd_sessions(settings: Settings, args: argparse.Namespace) -> int:
    from observer.db.reads import SessionFilter
    from observer.reports import sessions as report

    since, until, limit = listing_bounds(args)
    f = SessionFilter(
        room=args.room,
        identity=args.identity,
        agent_name=args.agent_name,
        kind=args.kind,
        since=since,
        until=until,
        state=args.state,
        limit=limit,
    )
    store = open_store(settings)
    try:
        rows = store.sessions(f)
    finally:
        store.close()
    sys.stdout.write(report.render_sessions(rows, args.format))
    return EXIT_OK


def cmd_rooms(settings: Settings, args: argparse.Namespace) -> int:
    from observer.db.reads import RoomFilter
    from observer.reports import sessions as report

    since, until, limit = listing_bounds(args)
    f = RoomFilter(
        room=args.room,
        since=since,
        until=until,
        state=args.state,
        limit=limit,
    )
    store = open_store(settings)
    try:
        rows = store.rooms(f)
    finally:
        store.close()
    sys.stdout.write(report.render_rooms(rows, args.format))
    return EXIT_OK


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from observer.config import is_loopback
    from observer.web.app import WebPage
    from observer.web.guard import Access, guarded_app

    host, sep, port = args.addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"--addr must be host:port, got {args.addr!r}")
    host = host.strip("[]")
    store = open_store(settings, for_page=True)  # no answer: exit 1, as for `run`
    log = logging.getLogger("observer.web")
    if not is_loopback(host):
        log.warning(
            "the page listens beyond this host"
            + (
                "; it requires the token"
                if settings.http_token
                else "; anyone can read it: set OBSERVER_HTTP_TOKEN, or listen on 127.0.0.1"
            ),
            extra={"host": host, "port": int(port)},
        )
    access = Access.of(settings, host, frozenset({"/healthz"}))
    app = guarded_app(access)
    WebPage(
        store,
        stuck_after_s=settings.stuck_agent_s,
        dead_after_s=settings.failover_s,
        access=access,
    ).add_routes(app)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)

    def listening(_banner: str) -> None:  # aiohttp's word that the socket is bound
        log.info("page listening", extra={"host": host, "port": int(port)})

    try:
        web.run_app(app, host=host, port=int(port), print=listening, access_log=None)
    except OSError as exc:
        if not is_bind_error(exc):
            raise
        raise UsageError(
            f"--addr {args.addr} cannot be used ({exc.strerror or exc}); choose a free host:port"
        ) from None
    finally:
        store.close()
    return EXIT_OK


def _prices(path: str) -> PriceBook:
    from observer.reports.prices import PricesError, load

    try:
        return load(path)
    except PricesError as exc:
        raise UsageError(str(exc)) from None


def _grouping_name(raw: str) -> str:
    """A --by value as written, its name part in lower case (a KEY keeps its case)."""
    name, colon, key = raw.strip().partition(":")
    return name.lower() + colon + key


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    from observer.core.vocab import KINDS
    from observer.reports import usage

    now = parse_time(args.now, flag="--now") if args.now is not None else datetime.now(UTC)
    start = parse_time(args.start, flag="--from", now=now)
    end = parse_time(args.end, flag="--to", now=now) if args.end is not None else now
    if start >= end:
        raise UsageError(f"--from {args.start} is not before --to {args.end or 'now'}")
    by: list[str] = []
    for raw in args.by:
        for g in (_grouping_name(part) for part in raw.split(",")):
            if not usage.is_grouping(g):
                names = ", ".join((*usage.GROUPINGS, *usage.KEYED_GROUPINGS))
                raise UsageError(f"unknown --by {g!r}; choose from {names}")
            if g not in by:
                by.append(g)
    if {"day", "month"} <= set(by):
        raise UsageError("--by day and --by month cannot be combined")
    if args.rounding not in usage.ROUNDINGS:
        raise UsageError(f"unknown --rounding {args.rounding!r}; choose from none, second, minute")
    if args.kind != "all" and args.kind not in KINDS:
        raise UsageError(f"unknown --kind {args.kind!r}; choose from {', '.join(KINDS)} or all")
    q = usage.UsageQuery(
        start=start,
        end=end,
        now=now,
        by=tuple(by),
        rounding=args.rounding,
        include_open=not args.exclude_open,
        kind=None if args.kind == "all" else args.kind,
        states=args.states,
        tokens=args.tokens,
        prices=_prices(args.prices) if args.prices is not None else None,
    )
    store = open_store(settings)
    try:
        lines = usage.compute(store, q, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    finally:
        store.close()
    sys.stdout.write(usage.render(q, lines, args.format))
    return EXIT_OK


def keyed_rollups(raw: list[str]) -> list[str]:
    from observer.db.usage import USAGE_GROUP_COLUMNS, is_group_name

    out = []
    for arg in raw:
        for g in (x.strip() for x in arg.split(",")):
            if g in ("agent", "room", "total"):
                continue  # always rolled up
            if not is_group_name(g) or g in USAGE_GROUP_COLUMNS:
                raise UsageError(
                    f"unknown --by {g!r}; choose from attribute:KEY, room-metadata,"
                    " room-metadata:KEY"
                )
            out.append(g)
    return out


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from decimal import Decimal, InvalidOperation

    from observer.reports import reconcile

    now = parse_time(args.now, flag="--now") if args.now is not None else datetime.now(UTC)
    try:
        tolerance = Decimal(args.tolerance_minutes)
    except InvalidOperation:
        tolerance = Decimal("NaN")
    if not tolerance.is_finite() or tolerance < 0:
        raise UsageError(f"--tolerance-minutes must be 0 or more, got {args.tolerance_minutes!r}")
    try:
        if args.period is not None and (args.start is not None or args.end is not None):
            raise UsageError("give --period or --from/--to, not both")
        if args.period is not None:
            period = reconcile.parse_period(args.period)
        elif args.start is not None and args.end is not None:
            period = reconcile.period_between(
                parse_time(args.start, flag="--from", now=now),
                parse_time(args.end, flag="--to", now=now),
            )
        else:
            raise UsageError("give --period YYYY-MM or YYYY-MM-DD, or both --from and --to")
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
            prices=_prices(args.prices) if args.prices is not None else None,
            warn=lambda m: print(f"warning: {m}", file=sys.stderr),
        )
        store = open_store(settings)
        try:
            outcome = reconcile.run(store, settings.livekit, job)
        finally:
            store.close()
    except reconcile.ReconcileError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(reconcile.render(outcome))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
