"""A private redis-server for one test run (the shared state of a livekit-server cluster)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from livekit_server import free_tcp_port

# Each cluster a test starts gets a database of its own (`next_db`): a dead node's rooms
# stay listed in the shared state for good, and must not show up in the next cluster.
DATABASES = 1000


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run scripts/ensure-redis.sh")
        self.binary = binary
        self.port = free_tcp_port()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._used = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def next_db(self) -> int:
        """A database no cluster has used yet."""
        self._used += 1
        assert self._used < DATABASES
        return self._used

    def start(self, timeout: float = 15.0) -> None:
        log = (self._dir / "redis.log").open("ab")
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                str(DATABASES),
                "--dir",
                str(self._dir),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self._dir / 'redis.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
