"""Shared pytest fixtures: real PostgreSQL and livekit-server processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit_server import LiveKitServer, LiveKitServerFactory
from postgres_server import PostgresServer

# --------------------------------------------------------------------------- #
# PostgreSQL                                                                   #
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL instance for the whole test run."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database; dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.running:  # a test stopped the server and did not bring it back
        postgres_server.start()
    postgres_server.drop_database(name)


# --------------------------------------------------------------------------- #
# LiveKit                                                                      #
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One private redis-server for the whole run: a livekit-server cluster's shared state."""
    from redis_server import RedisServer

    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def livekit_server() -> Iterator[LiveKitServer]:
    """A shared livekit-server with default settings. Don't stop it; use the factory."""
    server = LiveKitServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def livekit_server_factory() -> Iterator[LiveKitServerFactory]:
    """Start private livekit-servers with custom settings; all are stopped after the test.

    ``livekit_server_factory(departure_timeout=1, webhook_urls=[url])`` takes the
    keyword arguments of ``LiveKitServer`` and returns a started server.
    """
    servers: list[LiveKitServer] = []

    def factory(**kwargs: Any) -> LiveKitServer:
        server = LiveKitServer(**kwargs)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.cleanup()


# --------------------------------------------------------------------------- #
# Databases: every store test runs on SQLite and on PostgreSQL                 #
# --------------------------------------------------------------------------- #


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """URL of an empty database of each kind (no schema yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'observer.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """URL of a migrated SQLite database: for daemon scenarios that test no store."""
    from observer.db import migrate

    url = f"sqlite:///{tmp_path / 'observer.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a database of each kind, migrated to the newest schema."""
    from observer.db import migrate

    migrate.upgrade(empty_db_url)
    return empty_db_url


# --------------------------------------------------------------------------- #
# The daemon, run in-process, and rtc clients                                  #
# --------------------------------------------------------------------------- #


async def listening(port: int, task: Any, timeout_s: float = 30) -> None:
    """Until something accepts connections on the port (or the task ended)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while not task.done() and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@pytest.fixture
async def start_observer() -> Any:
    """Start observers in this test's event loop: `await start_observer(server, db_url)`."""
    import asyncio

    from daemon_helpers import RunningObserver, settings_for

    from observer.daemon.service import Observer
    from observer.db.store import Store

    running: list[RunningObserver] = []

    async def start(server: LiveKitServer, db_url: str, **extra: str) -> RunningObserver:
        settings = settings_for(server, db_url, **extra)
        store = Store(settings.database_url)
        assert settings.livekit is not None
        obs = Observer(settings, store, settings.livekit)
        handle = RunningObserver(obs, asyncio.create_task(obs.run()), store)
        running.append(handle)
        if settings.http_host is not None:
            await listening(settings.http_port, handle.task)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
        handle.store.close()


@pytest.fixture
async def clients(livekit_server: LiveKitServer) -> Any:
    from daemon_helpers import Clients

    c = Clients(livekit_server)
    yield c
    await c.close()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`observer.cli.main` points the root logger at the stderr of the moment (pytest's
    capture, in-process); undo that after each test."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --------------------------------------------------------------------------- #
# Process exit                                                                 #
# --------------------------------------------------------------------------- #

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without running the rtc SDK's exit-time dispose.

    On rare runs the SDK's native core panics while it is torn down at interpreter exit,
    after every test has run and been reported, and aborts the process: that would turn a
    green run red. Every fixture has already stopped its servers and clients here.
    """
    import os
    import sys

    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
