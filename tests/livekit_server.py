"""Run a real livekit-server binary on loopback for integration tests.

The binary is built by ``scripts/install-livekit-server.sh``. Its path comes from
``LIVEKIT_SERVER_BIN`` or defaults to the cache location used by that script.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from livekit import api

DEFAULT_API_KEY = "observer-test-key"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


class LiveKitServerError(RuntimeError):
    """The server binary is missing or did not start."""


def default_binary() -> Path:
    """Path of the server binary: ``$LIVEKIT_SERVER_BIN`` or the install script's cache."""
    env = os.environ.get("LIVEKIT_SERVER_BIN")
    if env:
        return Path(env)
    cache = os.environ.get("LK_OBSERVER_CACHE") or str(Path.home() / ".cache" / "lk-observer")
    return Path(cache) / "bin" / "server"


def free_tcp_port() -> int:
    """A TCP port that is free right now."""
    # Checked on all interfaces: the server binds its ICE/TCP port on all of them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port that is free right now (checked on all interfaces, as the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def random_secret(length: int = 40) -> str:
    """An API secret long enough that PyJWT does not warn about HMAC key length."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested mappings are merged, the rest replaced."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class LiveKitServer:
    """One livekit-server process on 127.0.0.1 with private ports, keys and log file.

    Ports are chosen once in the constructor, so ``restart()`` keeps the same URLs.
    """

    def __init__(
        self,
        *,
        empty_timeout: int = 10,
        departure_timeout: int = 3,
        webhook_urls: Sequence[str] = (),
        extra_config: Mapping[str, Any] | None = None,
        binary: Path | str | None = None,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.binary = Path(binary) if binary is not None else default_binary()
        self.api_key = api_key
        self.api_secret = api_secret or random_secret()
        self.port = free_tcp_port()
        self.rtc_tcp_port = free_tcp_port()
        self.rtc_udp_port = free_udp_port()
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.webhook_urls = list(webhook_urls)
        self._extra_config = dict(extra_config or {})
        self._log_level = log_level
        self._tmpdir = Path(tempfile.mkdtemp(prefix="lk-server-"))
        self.log_path = self._tmpdir / "livekit-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        """HTTP URL for the server API (``LiveKitAPI(url, ...)``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket URL for rtc clients (``Room.connect(ws_url, token)``)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> tuple[int, ...]:
        """The release of the binary, e.g. (1, 13, 5), from ``server --version``."""
        if not hasattr(self, "_version"):
            out = subprocess.run(
                [str(self.binary), "--version"], capture_output=True, text=True, check=True
            ).stdout
            self._version = tuple(int(x) for x in out.split()[-1].split("-")[0].split("."))
        return self._version

    # -- configuration ---------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The config passed via ``--config-body`` (keys are checked strictly by the server)."""
        conf: dict[str, Any] = {
            "port": self.port,
            "rtc": {
                "tcp_port": self.rtc_tcp_port,
                "udp_port": self.rtc_udp_port,
                "enable_loopback_candidate": True,
                "node_ip": "127.0.0.1",
                "use_external_ip": False,
            },
            "room": {
                "empty_timeout": self.empty_timeout,
                "departure_timeout": self.departure_timeout,
            },
            "logging": {"level": self._log_level},
        }
        if self.webhook_urls:
            conf["webhook"] = {"api_key": self.api_key, "urls": list(self.webhook_urls)}
        return _deep_merge(conf, self._extra_config)

    def command(self) -> list[str]:
        """The full command line of the server process."""
        return [
            str(self.binary),
            "--bind",
            "127.0.0.1",
            "--keys",
            f"{self.api_key}: {self.api_secret}",
            # JSON is valid YAML, so no YAML library is needed here.
            "--config-body",
            json.dumps(self.config()),
        ]

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until ``GET /`` answers 200 "OK".

        A free port can be taken by another process between choosing and binding it (an
        rtc client's ICE sockets take ephemeral UDP ports all the time); the server then
        moves to new ports: before its first successful start all of them, on a restart
        only its media ports (clients learn those when they join; the URL stays).
        """
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._started_once = True
                return
            except LiveKitServerError as exc:
                restart = getattr(self, "_started_once", False)
                taken = "address already in use" in str(exc)
                if attempt == 2 or not taken or (restart and f":{self.port}:" in str(exc)):
                    raise
                if not restart:
                    self.port = free_tcp_port()
                self.rtc_tcp_port = free_tcp_port()
                self.rtc_udp_port = free_udp_port()

    def _start_once(self, timeout: float) -> None:
        if self.running:
            return
        if not self.binary.is_file():
            raise LiveKitServerError(
                f"livekit-server binary not found at {self.binary}. "
                "Run scripts/install-livekit-server.sh (or set LIVEKIT_SERVER_BIN)."
            )
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LiveKitServerError(
                    f"livekit-server exited with code {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._healthy():
                # The server ignores SIGTERM for its first 100 ms after serving
                # (server.go sets `running` after a sleep); don't hand it over earlier.
                time.sleep(0.2)
                return
            time.sleep(0.1)
        self.stop()
        raise LiveKitServerError(
            f"livekit-server not ready after {timeout:.0f}s:\n{self.log_tail()}"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=1.0) as resp:
                return bool(resp.status == 200 and resp.read().strip() == b"OK")
        except OSError:  # includes URLError and refused/reset connections
            return False

    def stop(self, timeout: float = STOP_GRACE) -> None:
        """Stop the server: SIGTERM, a second SIGTERM, then SIGKILL after ``timeout``.

        The first SIGTERM only drains: the server waits for every participant to
        leave. A second signal makes it shut down regardless.
        """
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=min(2.0, timeout / 2))
            return
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # second signal: force
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, as far as clients can tell)."""
        proc = self._proc
        self._proc = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same ports with the same keys (rooms are lost)."""
        self.stop()
        self.start(timeout=timeout)

    def cleanup(self) -> None:
        """Stop the server and remove its temp dir (log included)."""
        self.stop()
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LiveKitServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------

    def token(
        self,
        identity: str,
        room: str,
        *,
        kind: api.AccessToken.ParticipantKind | None = None,
        agent: bool = False,
        hidden: bool = False,
        recorder: bool = False,
        can_publish: bool = True,
        can_subscribe: bool = True,
        can_publish_data: bool = True,
        name: str | None = None,
        attributes: dict[str, str] | None = None,
        ttl: datetime.timedelta | None = None,
    ) -> str:
        """A signed join token for ``room``. ``kind`` sets the JWT kind claim (e.g. "agent")."""
        grants = api.VideoGrants(
            room_join=True,
            room=room,
            can_publish=can_publish,
            can_subscribe=can_subscribe,
            can_publish_data=can_publish_data,
            can_update_own_metadata=True,  # attributes, as applications and agents set them
            agent=agent or None,
            hidden=hidden or None,
            recorder=recorder or None,
        )
        tok = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(grants)
        )
        if kind is not None:
            tok = tok.with_kind(kind)
        if name is not None:
            tok = tok.with_name(name)
        if attributes:
            tok = tok.with_attributes(attributes)
        if ttl is not None:
            tok = tok.with_ttl(ttl)
        return tok.to_jwt()

    def api_client(self) -> api.LiveKitAPI:
        """A server API client; the caller must ``await client.aclose()`` (or ``async with``)."""
        return api.LiveKitAPI(self.url, self.api_key, self.api_secret)


#: Type of the ``livekit_server_factory`` fixture: takes ``LiveKitServer`` keyword
#: arguments and returns a started server.
LiveKitServerFactory = Callable[..., LiveKitServer]
