"""stripe-mock (Stripe's API mock) as a process on a free loopback port, for the export's
Stripe tests; installed by scripts/install-stripe-mock.sh."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from livekit_server import free_tcp_port


def default_binary() -> Path:
    cache = Path(os.environ.get("LK_OBSERVER_CACHE", Path.home() / ".cache" / "lk-observer"))
    return Path(os.environ.get("STRIPE_MOCK_BIN", cache / "stripe-mock" / "bin" / "stripe-mock"))


def _answers(base: str) -> bool:
    """Whether stripe-mock itself answers at base: a list of customers for a test key (a
    process of another test that took the port first answers otherwise, or not at all)."""
    request = urllib.request.Request(
        f"{base}/v1/customers", headers={"Authorization": "Bearer sk_test_readiness"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return bool(json.loads(answer.read()).get("object") == "list")
    except (OSError, ValueError):
        return False


@contextmanager
def stripe_mock() -> Iterator[str]:
    """The base URL of a running stripe-mock; stopped when the block ends. A port another
    process took between its choice and stripe-mock's start (stripe-mock then exits) is
    given up for another."""
    binary = default_binary()
    if not binary.is_file():
        raise RuntimeError(
            f"stripe-mock is not installed at {binary}: run scripts/install-stripe-mock.sh"
        )
    for _ in range(3):
        port = free_tcp_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [str(binary), "-http-addr", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while proc.poll() is None and not _answers(base):
                if time.monotonic() > deadline:
                    raise RuntimeError("stripe-mock did not answer within 20 s")
                time.sleep(0.05)
            if proc.poll() is None:
                yield base
                return
        finally:
            proc.terminate()
            proc.wait(10)
    raise RuntimeError("stripe-mock exited at start three times (ports taken?)")
