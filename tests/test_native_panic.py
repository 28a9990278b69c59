"""A panic of the rtc SDK's native core: the SDK prints it and sends its own process
SIGTERM; the observer notes that SIGTERM so that `observer run` exits 1 (the live test is
in test_restart.py)."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import pytest
from livekit.rtc import _ffi_client

from observer.daemon import sdk_internals

pytestmark = pytest.mark.unit


class FakeOs:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.environ = {"A": "1"}

    def getpid(self) -> int:
        return 4242

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_internals, "_PANICKED", type(sdk_internals._PANICKED)())
    monkeypatch.setattr(_ffi_client, "os", os)


def test_only_a_sigterm_to_itself_counts_and_every_kill_is_sent(fresh: Any) -> None:
    fake = FakeOs()
    noting = sdk_internals._KillNoting(fake)
    assert noting.environ == {"A": "1"}  # everything else is the real module's
    noting.kill(99, signal.SIGTERM)  # another process
    noting.kill(4242, signal.SIGINT)
    assert not sdk_internals.native_panicked()
    noting.kill(4242, signal.SIGTERM)
    assert sdk_internals.native_panicked()
    assert fake.sent == [(99, signal.SIGTERM), (4242, signal.SIGINT), (4242, signal.SIGTERM)]


def test_the_sdk_module_sees_the_noting_os(fresh: Any) -> None:
    sdk_internals.note_native_panics()
    assert isinstance(_ffi_client.os, sdk_internals._KillNoting)
    assert _ffi_client.os.getpid() == os.getpid()


def test_a_changed_sdk_is_said_once_and_left_alone(
    fresh: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    other = object()
    monkeypatch.setattr(_ffi_client, "os", other)
    caplog.set_level(logging.WARNING, logger="observer.daemon.sdk_internals")
    sdk_internals.note_native_panics()
    assert _ffi_client.os is other
    assert [r.getMessage() for r in caplog.records].count(
        "rtc SDK internals changed: its FFI module's os (livekit "
        f"{sdk_internals.sdk_version()}): a native panic will exit 0"
    ) == 1
