"""Shared pytest fixtures: real PostgreSQL and livekit-server processes on loopback, and the
test tiers every module declares."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit_server import LiveKitServer, LiveKitServerFactory
from postgres_server import PostgresServer

# --------------------------------------------------------------------------- #
# Tiers: every module says what its tests need (`pytestmark = pytest.mark.unit`) #
# --------------------------------------------------------------------------- #

TIERS = {
    "unit": "no server process: pure logic, the command line, SQLite files",
    "db": "the unit tests that run on PostgreSQL (a private instance); given, not declared",
    "live": "a real livekit-server, the daemon and rtc clients",
    "cluster": "two livekit-server nodes sharing a redis-server",
    "browser": "the page in headless chromium, against a live daemon",
    "install": "the package built and installed into a fresh virtualenv, or run as a process",
}
DECLARABLE = [tier for tier in TIERS if tier != "db"]
# Seconds a test of each tier may take, setup and teardown included, before it fails with
# the traceback of where it hung (pytest-timeout). A test that needs longer says so with
# @pytest.mark.timeout(seconds): more than the sum of its own waits, so that they fail first.
TIMEOUT_S = {"unit": 60, "db": 60, "live": 120, "cluster": 180, "browser": 180, "install": 600}
# Fixtures that start a server: a unit test may not use them.
SERVER_FIXTURES = ("livekit_server", "livekit_server_factory", "clients", "redis_server")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--alone",
        action="store_true",
        help="run only the tests marked `alone` (scripts/test.sh runs them after the others)",
    )
    parser.addoption(
        "--oldest-server",
        metavar="BIN",
        help="run each compat test a second time against this livekit-server binary too"
        " (scripts/test.sh: the oldest release the observer supports)",
    )
    parser.addoption(
        "--timeline",
        metavar="FILE",
        help="append each test's worker, start and end (setup to teardown) to FILE as JSON"
        " lines: where a parallel run's time goes (scripts/timeline.py sums it up)",
    )
    parser.addoption(
        "--compat-report",
        metavar="FILE",
        help="write each compat scenario's outcome, and the server's version, to FILE (JSON)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Tests sharing an `xdist_group` (one wheel build directory) must run on one worker.
    # pytest-xdist 3.8 groups them by rewriting a private node-id attribute that pytest 9.2
    # no longer reads: the groups would be silently void.
    if getattr(config.option, "dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        raise pytest.UsageError(
            f"--dist loadgroup does not group tests with pytest {pytest.__version__};"
            " install the pytest pyproject.toml allows (scripts/bootstrap.sh)"
        )
    for tier, what in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: tier: {what}")
    config.addinivalue_line(
        "markers",
        "alone: measures its own pace (latency under load), so it runs with no other test"
        " beside it: left out of a parallel run (pytest-xdist), run by --alone",
    )
    config.addinivalue_line(
        "markers", "databases(*kinds): run the test on these of sqlite, postgresql (default both)"
    )
    config.addinivalue_line(
        "markers",
        "compat(scenario): one of the scenarios of the release matrix (tests/compat.py,"
        " scripts/compat.sh); `-m compat` runs them against LIVEKIT_SERVER_BIN",
    )
    _skip_lsb_release(config)
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the controller of a parallel run: its workers hold the rtc clients
    # The rtc SDK's native core, started as the daemon starts it: without forwarding its
    # logs to Python. The SDK's own start forwards every trace record of libwebrtc into
    # Python, which drops nearly all of them: about 5 % of a core for each idle client,
    # paid by every test's clients and in-process observers (tests/test_sdk_internals.py
    # shows both ways). An SDK whose internals differ starts its own way, with one warning.
    from observer.daemon.sdk_internals import start_native_core_or_fall_back

    start_native_core_or_fall_back()


SKIPPED_COMMANDS = "observer-tests-path-"
_made_dirs: list[str] = []


def _skip_lsb_release(config: pytest.Config) -> None:
    """Put first on PATH a directory whose `lsb_release` prints nothing, for this process
    and every process it starts (xdist's workers, observers, agents, the Node agent).

    The rtc SDK's native core reads the OS's name for its join request (the `os_info`
    crate) on every connect and reconnect, by running `lsb_release -a`: on Debian a shell
    script of several processes, about 18 ms of CPU each time here, and the suite connects
    some thousands of clients and observers. With nothing printed the SDK tells the server
    "Linux" and no version; nothing the observer records or any test asserts depends on it.
    """
    import os
    import shutil
    import tempfile

    path = os.environ.get("PATH", "")
    if SKIPPED_COMMANDS in path.split(os.pathsep)[0]:
        return  # set up by the process that started this one
    true = shutil.which("true")
    if true is None:
        return
    bin_dir = tempfile.mkdtemp(prefix=SKIPPED_COMMANDS)
    os.symlink(true, os.path.join(bin_dir, "lsb_release"))
    os.environ["PATH"] = os.pathsep.join([bin_dir, path])
    _made_dirs.append(bin_dir)  # removed at unconfigure (which leaves with os._exit)


def pytest_report_header(config: pytest.Config) -> str:
    from compat import server_version
    from livekit_server import default_binary

    binary = default_binary()
    version = server_version(binary) if binary.is_file() else "not installed"
    return f"livekit-server: {version} ({binary})"


class TierError(Exception):
    """A test without a tier, or in one that does not allow what it uses."""


def _tier(item: pytest.Item) -> str:
    """The tier declared closest to the test (its own mark, its class's, its module's)."""
    marks = [m.name for m in item.iter_markers() if m.name in TIERS]
    if not marks:
        raise TierError(
            f"{item.nodeid.split('::')[0]} declares no tier: add `pytestmark = pytest.mark.unit` "
            f"(or one of {', '.join(DECLARABLE[1:])}) after its imports"
        )
    tier = marks[0]
    if tier == "unit":
        servers = [f for f in SERVER_FIXTURES if f in item.fixturenames]
        if servers:
            raise TierError(
                f"{item.nodeid} is in the unit tier but uses {', '.join(servers)}: "
                "mark it @pytest.mark.live"
            )
        if _uses_postgresql(item):
            return "db"
    return tier


def _uses_postgresql(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("database_kind") if callspec is not None else None
    return kind == "postgresql" or "pg_url" in item.fixturenames


@pytest.hookimpl(tryfirst=True)
def _has_compat(definition: pytest.Function) -> bool:
    """Whether a test, or one of its parameter sets, is a compat scenario."""
    if definition.get_closest_marker("compat"):
        return True
    return any(
        m.name == "compat"
        for mark in definition.iter_markers("parametrize")
        for value in (mark.args[1] if len(mark.args) > 1 else ())
        for m in getattr(value, "marks", ())
    )


def _drop_oldest_non_compat(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Of a test run against both servers, only its compat parameter sets run on the oldest."""
    dropped = [
        item
        for item in items
        if getattr(getattr(item, "callspec", None), "params", {}).get("lk_release") == "oldest"
        and item.get_closest_marker("compat") is None
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test exactly one tier mark (before `-m` selects by it): the one declared
    closest to it, or `db` for a unit test on PostgreSQL, so `-m unit` starts no server;
    and its tier's time limit unless it has its own."""
    _drop_oldest_non_compat(config, items)
    tiers: list[str] = []
    errors: dict[str, None] = {}  # in order, each once
    for item in items:
        try:
            tiers.append(_tier(item))
        except TierError as exc:
            errors[str(exc)] = None
    if errors:
        raise pytest.UsageError(*errors)
    for item in items:
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
    for item, tier in zip(items, tiers, strict=True):
        item.add_marker(tier)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier]))
    # Longest first, so that parallel workers (pytest-xdist) start them early and finish
    # together: tests that asked for a longer limit, then by tier. Stable: each module's
    # tests stay together and in their order.
    order = {t: i for i, t in enumerate(("cluster", "live", "browser", "install", "db", "unit"))}
    rank = {
        item.nodeid: (0 if _asks_longer(item, tier) else 1, order[tier])
        for item, tier in zip(items, tiers, strict=True)
    }
    items.sort(key=lambda item: rank[item.nodeid])
    _select_alone(config, items)


def _select_alone(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --alone only the `alone` tests; in a parallel run none of them."""
    parallel = bool(getattr(config.option, "numprocesses", None)) or hasattr(config, "workerinput")
    only = config.getoption("--alone")
    if not (only or parallel):
        return
    keep = [i for i in items if (i.get_closest_marker("alone") is not None) == only]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _asks_longer(item: pytest.Item, tier: str) -> bool:
    mark = item.get_closest_marker("timeout")
    if mark is None:
        return False
    seconds = mark.args[0] if mark.args else mark.kwargs.get("timeout")
    return isinstance(seconds, int | float) and seconds > TIMEOUT_S[tier]


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, and the failure says where each asyncio task waits:
    the main thread's stack of an async test that hangs ends in the event loop's poll."""
    import signal
    import threading

    import pytest_timeout
    from polling import task_stacks

    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        if not settings.disable_debugger_detection and pytest_timeout.is_debugging():
            return
        if len(threading.enumerate()) > 1:
            pytest_timeout.dump_stacks(item.config.get_terminal_writer())
        pytest.fail(f"Timeout (>{settings.timeout:.1f}s) from pytest-timeout.{task_stacks()}")

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


# --------------------------------------------------------------------------- #
# The release matrix: each compat scenario's outcome, for scripts/compat.sh    #
# --------------------------------------------------------------------------- #

_compat_tests: dict[str, str] = {}  # node id -> scenario
_compat_outcomes: dict[str, str] = {}  # node id -> pass / FAIL / skip


def pytest_collection_finish(session: pytest.Session) -> None:
    import gc

    from compat import scenario_of

    # The 260,000 objects of the imports and the collection live for the whole run: kept out
    # of the collector's full passes, which otherwise take seconds on a loaded machine and
    # stall this process, and with it an observer a test runs in it (its pulse sees a gap)
    gc.collect()
    gc.freeze()

    for item in session.items:
        mark = item.get_closest_marker("compat")
        if mark is not None:
            try:
                _compat_tests[item.nodeid] = scenario_of(mark.args, item.nodeid)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None


_timeline: dict[str, dict[str, Any]] = {}
_cpu_at_setup: dict[str, float] = {}


def _cpu_s() -> float:
    """CPU seconds of this process (all its threads, the rtc SDK's native ones too) and of
    its children that have ended (observers, servers a test started and stopped)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _cpu_at_setup[nodeid] = _cpu_s()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test's CPU seconds, setup to teardown, go with its teardown report (--timeline)."""
    report = yield
    if call.when == "teardown" and item.nodeid in _cpu_at_setup:
        report.user_properties.append(("cpu_s", _cpu_s() - _cpu_at_setup.pop(item.nodeid)))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from compat import FAILED, PASSED, SKIPPED

    node = getattr(report, "node", None)  # the xdist worker that ran it, in the controller
    span = _timeline.setdefault(
        report.nodeid,
        {
            "test": report.nodeid,
            "worker": node.gateway.id if node is not None else "main",
            "start": report.start,
        },
    )
    span["stop"] = report.stop
    for name, value in report.user_properties:
        if name == "cpu_s":
            span["cpu_s"] = round(value, 2)
    span["outcome"] = "failed" if report.failed else span.get("outcome", report.outcome)

    if report.nodeid not in _compat_tests:
        return
    if report.failed:
        _compat_outcomes[report.nodeid] = FAILED
    elif report.skipped:
        _compat_outcomes.setdefault(report.nodeid, SKIPPED)
    elif report.when == "call":
        _compat_outcomes.setdefault(report.nodeid, PASSED)


def _write_compat_report(config: pytest.Config) -> None:
    import json

    from compat import report, server_version
    from livekit_server import default_binary

    path = config.getoption("--compat-report")
    if not path or hasattr(config, "workerinput"):
        return
    ran = {n: (s, _compat_outcomes[n]) for n, s in _compat_tests.items() if n in _compat_outcomes}
    Path(path).write_text(json.dumps(report(server_version(default_binary()), ran), indent=1))


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


def _database(server: PostgresServer, template: str | None = None) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name, template=template)
    yield url
    if not server.running:  # a test stopped the server and did not bring it back
        server.start()
    server.drop_database(name)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database; dropped after the test."""
    yield from _database(postgres_server)


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """Name of a database migrated to the newest schema once per run (so always from the
    migrations of this checkout): each test gets a copy, not the whole chain."""
    from observer.db import migrate

    name = "template_observer"
    migrate.upgrade(postgres_server.create_database(name))
    return name


@pytest.fixture
def pg_db_url(postgres_server: PostgresServer, postgres_template: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database at the newest schema; dropped after the test."""
    yield from _database(postgres_server, template=postgres_template)


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


# The server a test runs against: `default` (LIVEKIT_SERVER_BIN) unless --oldest-server
# makes a compat test run against `oldest` as well.
RELEASES = ("default", "oldest")


@pytest.fixture
def lk_release() -> str:
    """Which server a test runs against: `default`, or `oldest` (see --oldest-server)."""
    return "default"


def _server_binary(config: pytest.Config, release: str) -> Path | None:
    return Path(config.getoption("--oldest-server")) if release == "oldest" else None


@pytest.fixture(autouse=True)
def _server_of_release(
    lk_release: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every livekit-server a test starts is of its release."""
    binary = _server_binary(request.config, lk_release)
    if binary is not None:
        import livekit_server

        monkeypatch.setattr(livekit_server, "default_binary", lambda: binary)


@pytest.fixture(scope="session")
def _shared_servers() -> Iterator[dict[str, LiveKitServer]]:
    """The shared livekit-server of each release, started when a test first asks."""
    started: dict[str, LiveKitServer] = {}
    try:
        yield started
    finally:
        for server in started.values():
            server.cleanup()


@pytest.fixture
def livekit_server(
    lk_release: str, _shared_servers: dict[str, LiveKitServer], request: pytest.FixtureRequest
) -> LiveKitServer:
    """A shared livekit-server with default settings, of the test's release (one per run
    and release, kept apart: a test never gets another release's). Don't stop it; use the
    factory."""
    server = _shared_servers.get(lk_release)
    if server is None:
        server = LiveKitServer(binary=_server_binary(request.config, lk_release))
        _shared_servers[lk_release] = server
        server.start()
    return server


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


DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes a database runs once per kind, or on those its module or itself
    names with `@pytest.mark.databases("sqlite")`; with `--oldest-server`, a compat test
    runs against both servers."""
    if metafunc.config.getoption("--oldest-server") and _has_compat(metafunc.definition):
        metafunc.parametrize("lk_release", RELEASES)
    if "database_kind" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("databases")
    kinds = mark.args if mark is not None else DATABASES
    unknown = [k for k in kinds if k not in DATABASES]
    if unknown or not kinds:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: databases() takes some of {', '.join(DATABASES)}"
        )
    # per module, so that a module can fill a database once per kind (`db_template`)
    metafunc.parametrize("database_kind", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module")
def database_kind(request: pytest.FixtureRequest) -> str:
    """sqlite or postgresql: set by pytest_generate_tests."""
    return str(request.param)


@pytest.fixture
def empty_db_url(database_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """URL of an empty database of each kind (no schema yet)."""
    if database_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'observer.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest schema once per run: each test gets a copy."""
    from observer.db import migrate

    path = tmp_path_factory.mktemp("template") / "observer.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a SQLite database at the newest schema (a copy of the template): for daemon
    scenarios that test no store."""
    from databases import copy_of

    return copy_of(f"sqlite:///{sqlite_template}", request, tmp_path)


@pytest.fixture(scope="module")
def run_template(database_kind: str, request: pytest.FixtureRequest) -> str:
    """URL of this run's migrated template of the kind."""
    if database_kind == "sqlite":
        return f"sqlite:///{request.getfixturevalue('sqlite_template')}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(request.getfixturevalue("postgres_template"))


@pytest.fixture(scope="module")
def db_template(run_template: str) -> str:
    """URL of the database every `db_url` is a copy of: the run's migrated template. A module
    overrides this fixture to copy one it filled once (test_attribution)."""
    return run_template


@pytest.fixture
def db_url(db_template: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a database of each kind at the newest schema: a copy of a template migrated
    once per run. The migration tests run the chain themselves, from `empty_db_url`."""
    from databases import copy_of

    return copy_of(db_template, request, tmp_path)


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
def _restore_logging(request: pytest.FixtureRequest) -> Iterator[None]:
    """`observer.cli.main` points the root logger at the stderr of the moment (pytest's
    capture, in-process); undo that after each test. A test that starts no server, or that
    reads what was printed (capsys), hears nothing of the rtc SDK: a client an earlier test
    of this worker left reconnecting would log into the stderr a command's one-line error
    is checked on."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sdk = logging.getLogger("livekit")
    sdk_was = sdk.disabled
    sdk.disabled = (
        sdk_was
        or request.node.get_closest_marker("unit") is not None
        or (request.node.get_closest_marker("db") is not None)
        or "capsys" in request.fixturenames
    )
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sdk.disabled = sdk_was


# --------------------------------------------------------------------------- #
# Process exit                                                                 #
def _write_timeline(config: pytest.Config) -> None:
    import json

    path = config.getoption("--timeline")
    if not path or hasattr(config, "workerinput"):
        return
    with open(path, "a", encoding="utf-8") as f:
        for span in _timeline.values():
            f.write(json.dumps(span) + "\n")


# --------------------------------------------------------------------------- #

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _write_compat_report(session.config)
    _write_timeline(session.config)
    if exitstatus != pytest.ExitCode.USAGE_ERROR:  # pytest prints that after unconfigure
        _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without running the rtc SDK's exit-time dispose.

    On rare runs the SDK's native core panics while it is torn down at interpreter exit,
    after every test has run and been reported, and aborts the process: that would turn a
    green run red. Every fixture has already stopped its servers and clients here.
    """
    import os
    import shutil
    import sys

    for made in _made_dirs:
        shutil.rmtree(made, ignore_errors=True)
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
