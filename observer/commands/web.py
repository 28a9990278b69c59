"""`observer web`: the page on its own, reading the database."""

from __future__ import annotations

import argparse
import logging

from observer.commands.process import is_bind_error
from observer.commands.store import open_store
from observer.config import Settings
from observer.errors import EXIT_OK, CommandError


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from observer.config import is_loopback
    from observer.web.app import WebPage
    from observer.web.guard import Access, guarded_app

    host, sep, port = args.addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise CommandError(f"--addr must be host:port, got {args.addr!r}")
    host = host.strip("[]")
    with open_store(settings, for_page=True) as store:  # no answer: exit 1, as for `run`
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

        def listening(_banner: str) -> None:  # aiohttp's word that the socket is bound
            log.info("page listening", extra={"host": host, "port": int(port)})

        try:
            web.run_app(app, host=host, port=int(port), print=listening, access_log=None)
        except OSError as exc:
            if not is_bind_error(exc):
                raise
            raise CommandError(
                f"--addr {args.addr} cannot be used ({exc.strerror or exc});"
                " choose a free host:port"
            ) from None
    return EXIT_OK
