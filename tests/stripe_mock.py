"""stripe-mock (Stripe's API mock) as a process on a free loopback port, for the export's
Stripe tests; installed by scripts/install-stripe-mock.sh."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from livekit_server import free_tcp_port


def default_binary() -> Path:
    cache = Path(os.environ.get("LK_OBSERVER_CACHE", Path.home() / ".cache" / "lk-observer"))
    return Path(os.environ.get("STRIPE_MOCK_BIN", cache / "stripe-mock" / "bin" / "stripe-mock"))


@contextmanager
def stripe_mock() -> Iterator[str]:
    """The base URL of a running stripe-mock; stopped when the block ends."""
    binary = default_binary()
    if not binary.is_file():
        raise RuntimeError(
            f"stripe-mock is not installed at {binary}: run scripts/install-stripe-mock.sh"
        )
    port = free_tcp_port()
    proc = subprocess.Popen(
        [str(binary), "-http-addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("stripe-mock did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
