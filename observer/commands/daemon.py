"""`observer migrate`, `observer check` and `observer run`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from observer.commands.process import (
    hold_sqlite_run_lock,
    is_bind_error,
    prepare_daemon_process,
    raise_fd_limit,
    stop_on_signals,
)
from observer.commands.store import missing_sqlite_file
from observer.config import ConfigError, Settings
from observer.errors import EXIT_FAILED, EXIT_OK, CommandError

if TYPE_CHECKING:
    from observer.config import LiveKitSettings
    from observer.db.store import Store

log = logging.getLogger(__name__)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from observer.db import migrate

    migrate.upgrade(settings.database_url)
    print(f"database at head revision {migrate.head_revision()}: {settings.database_url_safe}")
    return EXIT_OK


def cmd_check(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(check(settings))


async def check(settings: Settings) -> int:
    """LiveKit (every node on its own), the rooms it cannot host, and the database."""
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
    ok = await check_releases(lk) and ok
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
    with closing(Store(settings.database_url)) as store:
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
    return EXIT_OK if ok else EXIT_FAILED


async def check_releases(lk: LiveKitSettings) -> bool:
    """Print each node's release and what it supports; False for one the observer refuses."""
    from observer import server_release
    from observer.core import releases

    ok = True
    for n in await server_release.ask_all(lk):
        if n.error:
            print(f"livekit: release unknown at {n.url} ({n.error})")
            continue
        print(f"livekit: release {n.version} at {n.url} (node {n.node_id})")
        for line in releases.summary(n.version):
            print(f"  {line}")
        if n.release is not None and not releases.safe(n.release):
            ok = False
            print(f"livekit: FAILED: {releases.refusal(n.release)}")
    return ok


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


def print_observers(store: Store, settings: Settings) -> None:
    """The observers whose heartbeats are current, and the rooms each is inside."""
    from observer.reports.render import printable

    alive = store.observers(datetime.now(UTC), settings.failover_s / 2)
    print(f"observers: {len(alive)} alive")
    for m in alive:
        state = " (stopping)" if m.stopping else ""
        rooms = ", ".join(m.rooms[:20]) + (", ..." if len(m.rooms) > 20 else "")
        print(
            f"  {printable(m.observer_id)} on {printable(m.host)} pid {m.pid}{state}:"
            f" {len(m.rooms)} room(s){': ' + printable(rooms) if rooms else ''}"
        )


def hold_observer_id(store: Store, settings: Settings, run_id: str) -> None:
    """Refuse at once, in one line, an observer id that another live process holds. A
    database that cannot answer yet, or has no schema yet, is left to the daemon: it waits
    for it (or migrates it) and then holds the id itself."""
    from observer.daemon.identity import IdHeld, hold

    try:
        if not store.schema_is_current():
            return
        hold(store, settings, run_id)
    except SQLAlchemyError:
        return
    except IdHeld as exc:
        raise CommandError(str(exc)) from None


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The daemon, with the process around it: open files, the native core, signals."""
    from observer import server_release
    from observer.daemon.identity import new_run_id
    from observer.daemon.sdk_internals import (
        native_panicked,
        note_native_panics,
        start_native_core_or_fall_back,
    )
    from observer.daemon.service import Observer
    from observer.db.store import Store
    from observer.livekit_api import first_contact

    lk = settings.require_livekit()
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None and not args.migrate:
        raise CommandError(
            f"no database at {missing}; run `observer migrate`, or start with"
            " `observer run --migrate`"
        )
    hold_sqlite_run_lock(settings.database_url)  # the lock lasts as long as the process
    run_id = new_run_id()

    async def main(store: Store) -> int:
        obs = Observer(
            settings,
            store,
            lk,
            migrate=args.migrate,
            run_id=run_id,
            agent_attributes=not server_release.all_keep_kinds(nodes),
        )
        stop_on_signals(obs.stop)
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

    with closing(Store(settings.database_url)) as store:
        hold_observer_id(store, settings, run_id)
        asyncio.run(first_contact(lk))  # a refused key stops here (exit 2), before anything starts
        # so does a release that would let the observer create rooms
        nodes = asyncio.run(server_release.ask_all(lk))
        server_release.at_start(nodes)
        raise_fd_limit()
        if not settings.room_processes:
            start_native_core_or_fall_back()
            note_native_panics()
        prepare_daemon_process()
        code = asyncio.run(main(store))
    if native_panicked():
        # the SDK printed `FFI Panic: ...` and stopped the process with SIGTERM: a failure
        log.error("the rtc SDK's native core panicked (see 'FFI Panic' above); exit code 1")
        return EXIT_FAILED
    return code
