"""What `observer run`, `web` and `simulate` say when a setting is wrong at start: one line
that names the setting, and an exit code a scheduler can act on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit_server import LiveKitServer, free_tcp_port

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
WRONG_SECRET = "w" * 40


def env_for(url: str, key: str, secret: str, db: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    return {
        **clean,
        "LIVEKIT_URL": url,
        "LIVEKIT_API_KEY": key,
        "LIVEKIT_API_SECRET": secret,
        "OBSERVER_DATABASE_URL": db,
        "OBSERVER_HTTP_ADDR": "off",
        **extra,
    }


def observer(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "observer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_refused_key_stops_run_and_simulate_with_exit_2(
    livekit_server: LiveKitServer, sqlite_url: str, tmp_path: Path
) -> None:
    """At start a refused key is bad settings: one line naming the URL and the key (never
    the secret), exit 2, which the systemd unit does not restart."""
    server = livekit_server
    for key, secret in ((server.api_key, WRONG_SECRET), ("no-such-key", server.api_secret)):
        env = env_for(server.ws_url, key, secret, sqlite_url)
        r = observer(["run"], env, tmp_path)  # within its 60 s: a refusal is not retried
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr  # nothing else: it did not start
        assert f"LiveKit at {server.ws_url} refused API key {key!r} (HTTP 401)" in r.stderr
        assert "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET" in r.stderr
        assert secret not in r.stderr + r.stdout

    sim = observer(["simulate", "--duration", "1"], env, tmp_path)
    assert sim.returncode == 2, sim.stderr
    assert sim.stderr.count("\n") == 1 and "refused API key 'no-such-key'" in sim.stderr
    assert "Traceback" not in sim.stderr and server.api_secret not in sim.stderr

    unit = (ROOT / "deploy" / "systemd" / "observer.service").read_text()
    assert "\nRestart=always\n" in unit and "\nRestartPreventExitStatus=2\n" in unit


def test_an_unreachable_server_is_retried_and_named(sqlite_url: str, tmp_path: Path) -> None:
    """Nothing listens at LIVEKIT_URL: the daemon starts anyway and keeps trying; its log
    names the URL, the reason and `observer check`."""
    url = f"ws://127.0.0.1:{free_tcp_port()}"
    env = env_for(url, "key", "s" * 40, sqlite_url, OBSERVER_POLL_INTERVAL_S="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "observer", "run"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # up and running (signals handled) once it says so
            lines.append(line)
            if "did not answer at start" in line:
                break
        time.sleep(1)
        assert proc.poll() is None, "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    first = next(line for line in err.splitlines() if "did not answer at start" in line)
    assert f"url={url}" in first and "Connect call failed" in first
    assert "`observer check` tests the settings" in first
    retries = [line for line in err.splitlines() if "listing rooms failed; retrying" in line]
    assert len(retries) >= 2 and all(f"url={url}" in line for line in retries), err


def test_a_taken_port_names_its_setting(sqlite_url: str, taken_port: int, tmp_path: Path) -> None:
    nobody = f"ws://127.0.0.1:{free_tcp_port()}"
    addr = f"127.0.0.1:{taken_port}"
    env = env_for(nobody, "key", "s" * 40, sqlite_url, OBSERVER_HTTP_ADDR=addr)
    r = observer(["run"], env, tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("observer:")]
    assert f"OBSERVER_HTTP_ADDR {addr} cannot be used" in line and "address already in use" in line
    assert "Traceback" not in r.stderr

    web = observer(["web", "--addr", addr], env, tmp_path)
    assert web.returncode == 2, web.stderr
    assert f"observer: --addr {addr} cannot be used" in web.stderr
    assert "page listening" not in web.stderr and "Traceback" not in web.stderr

    # a database that does not answer: 1, as README's table says (a scheduler retries)
    down = f"postgresql://u:pw@127.0.0.1:{free_tcp_port()}/x"
    gone = observer(["web"], {**env, "OBSERVER_DATABASE_URL": down}, tmp_path)
    assert gone.returncode == 1, gone.stderr
    assert gone.stderr.count("\n") == 1 and "database error" in gone.stderr


def test_a_refusal_after_start_is_logged_as_an_error_naming_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key revoked while the daemon runs (or a server that answers only later, and then
    refuses): each listing logs an error naming the URL and the key; an outage, a warning."""
    import logging

    from livekit import api

    from observer.config import LiveKitSettings
    from observer.livekit_api import log_failure

    lk = LiveKitSettings("ws://a:7880", "the-key", "the-secret-" * 4, ("ws://b:7880",))
    log = logging.getLogger("observer.test")
    with caplog.at_level(logging.INFO, logger="observer.test"):
        log_failure(log, lk, api.TwirpError("unauthenticated", "", status=401))
        log_failure(log, lk, TimeoutError())
    refused, outage = caplog.records
    assert refused.levelno == logging.ERROR
    assert "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET" in refused.getMessage()
    assert vars(refused)["url"] == "ws://a:7880, ws://b:7880"
    assert vars(refused)["api_key"] == "the-key" and "the-secret" not in caplog.text
    assert vars(refused)["error"] == "HTTP 401: unauthenticated"
    assert outage.levelno == logging.WARNING and vars(outage)["error"] == "TimeoutError"
    assert "`observer check` tests the settings" in outage.getMessage()


def test_simulate_against_nothing_is_one_line_exit_1(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_tcp_port()}"
    r = observer(["simulate", "--rooms", "1"], env_for(url, "k", "s" * 40, "sqlite://"), tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and f"LiveKit at {url} did not answer" in r.stderr
    assert "`observer check` tests the settings" in r.stderr and "Traceback" not in r.stderr
