"""The process around the daemon (`observer run`): the open-files limit, one run per SQLite
file, signals, and how long threads hold the interpreter."""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from observer.errors import CommandError

# Measured: each watched room holds a few sockets and pipes (one peer connection, ICE
# candidates gathered once); see bench/bench_fleet.py. Kept with a margin.
FDS_PER_ROOM = 5


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the limit in force."""
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
        raise CommandError(
            f"another `observer run` is using {path}; SQLite takes one observer"
            " (use PostgreSQL for several)"
        ) from None


def prepare_daemon_process() -> None:
    """Settings of the process that runs the daemon, before its event loop starts."""
    # `kill -USR1 <pid>` writes every thread's stack to stderr: what a stuck daemon is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The page's threads share the interpreter with recording's (the writer, the event
    # loop): handed over every 1 ms rather than 5, a write waits far less behind an
    # export being rendered (bench/bench_export.py)
    sys.setswitchinterval(0.001)
    # What start-up loaded (modules, the SDK's protocol classes) lives as long as the process:
    # kept out of the collector's full passes, which would scan it each time while every
    # thread waits, the pulse's too (a pause it must count as a gap: observer.daemon.pulse)
    gc.collect()
    gc.freeze()


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT stop the daemon cleanly (in the running event loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def is_bind_error(exc: OSError) -> bool:
    """Whether listening on an address failed: taken, not this host's, or not allowed."""
    if isinstance(exc, socket.gaierror):
        return True
    bind = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return exc.errno in bind and "bind" in str(exc)
