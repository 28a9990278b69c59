"""The places the observer reaches into the rtc SDK's internals, and the plain SDK path it
falls back to, with one warning, when an SDK version looks different.

- the native core started without forwarding its logs to Python (`start_native_core_*`);
- one router that hands each native room event to its own room, stamped as it arrives
  (`EventRouter`, `ROUTER`);
- a panic of the native core noted (`note_native_panics`, `native_panicked`): the SDK ends
  its process with SIGTERM then, which would otherwise look like a clean stop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from livekit import rtc

from observer.daemon import pulse

log = logging.getLogger(__name__)


class SdkInternalsChanged(RuntimeError):
    """The rtc SDK no longer looks the way this module relies on."""


# What the native core logs unless RUST_LOG says otherwise: errors, but none from
# `rtc_session`, which reports a room's normal end as `ERROR ... publisher data channel
# '_reliable' closed unexpectedly` (the server closes the peer connection before the SDK has
# read the leave). Real trouble still shows: reconnect attempts (`livekit::rtc_engine`),
# failed joins (`livekit_ffi`).
NATIVE_LOG_DEFAULT = "error,livekit::rtc_engine::rtc_session=off"


def sdk_version() -> str:
    try:
        return importlib.metadata.version("livekit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start_native_core_or_fall_back() -> None:
    """`start_native_core_quietly`, or, if this SDK's internals differ, let the SDK start
    its core itself (with its own log capture) and say so once."""
    try:
        start_native_core_quietly()
    except SdkInternalsChanged as exc:
        log.warning(
            "%s (livekit %s): the native core forwards its logs to Python, at some CPU cost",
            exc,
            sdk_version(),
        )


def start_native_core_quietly() -> None:
    """Start the SDK's native core without forwarding its logs to Python.

    The SDK starts the core with log capture on, at trace level: every record crosses into
    Python, which drops nearly all of them, and that is most of an idle room's CPU. Off,
    the core logs errors to stderr itself, filtered by RUST_LOG (NATIVE_LOG_DEFAULT when
    unset; read once, as the core starts). Call before anything else touches livekit.rtc;
    raises if the SDK's internals changed.
    """
    from livekit.rtc import _ffi_client as ffi

    try:
        started = ffi.FfiClient._instance is not None
        real_get_lib = ffi.get_ffi_lib
    except AttributeError as exc:
        raise SdkInternalsChanged(f"rtc SDK internals changed: {exc}") from exc
    if started:
        raise SdkInternalsChanged("the rtc SDK's native core was already started")
    os.environ.setdefault("RUST_LOG", NATIVE_LOG_DEFAULT)
    lib = real_get_lib()

    class Quiet:
        """The native library, but `livekit_ffi_initialize` is told not to capture logs."""

        def __init__(self) -> None:
            self.init = lib.livekit_ffi_initialize

        def __getattr__(self, name: str) -> Any:
            return getattr(lib, name)

        @property
        def livekit_ffi_initialize(self) -> Any:
            init = self.init

            class Call:
                def __setattr__(self, name: str, value: Any) -> None:
                    setattr(init, name, value)

                def __call__(self, callback: Any, _capture: bool, *rest: Any) -> Any:
                    return init(callback, False, *rest)

            return Call()

    ffi.get_ffi_lib = lambda: Quiet()  # type: ignore[assignment,return-value]
    try:
        client = ffi.FfiClient.instance
    finally:
        ffi.get_ffi_lib = real_get_lib
    client._ffi_lib = lib


_PANICKED = threading.Event()


class _KillNoting:
    """`os` as the SDK's FFI module sees it, but a SIGTERM the process sends itself (the
    SDK's answer to a panic of its native core, after printing `FFI Panic: ...`) is noted
    first."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def kill(self, pid: int, sig: int) -> None:
        if pid == self._real.getpid() and sig == signal.SIGTERM:
            _PANICKED.set()
        self._real.kill(pid, sig)


def note_native_panics() -> None:
    """Note a panic of the native core, so that the process can exit with failure rather
    than 0 (a supervisor that restarts only on failure would leave it stopped). Without
    the SDK internals this relies on, one warning, and a panic exits 0 as the SDK has it."""
    try:
        from livekit.rtc import _ffi_client as ffi

        if getattr(ffi, "os", None) is not os:
            raise SdkInternalsChanged("rtc SDK internals changed: its FFI module's os")
    except (AttributeError, ImportError, SdkInternalsChanged) as exc:
        log.warning("%s (livekit %s): a native panic will exit 0", exc, sdk_version())
        return
    setattr(ffi, "os", _KillNoting(os))  # noqa: B010 (the module's name, not an attribute)


def native_panicked() -> bool:
    """Whether the native core panicked (the SDK then sent this process SIGTERM)."""
    return _PANICKED.is_set()


class EventRouter:
    """Hands each native room event straight to its own room, stamped with its arrival.

    The SDK puts every native event on every Room's queue and each Room's filter discards
    the others, so with N rooms every event costs N filter calls. The router replaces the
    rooms' own subscriptions by one that looks the room up by handle. It also stamps each
    event on the SDK's callback thread, where it arrives (`pulse.stamp`): what the event
    loop is busy with when the room gets to it never moves a recorded time. The room's
    queue hands the stamp over as it hands out the event (`arrival`). It relies on SDK
    internals; if they change it raises instead of silently doing nothing (a test calls it
    against the real SDK).
    """

    def __init__(self) -> None:
        self._rooms: dict[int, tuple[asyncio.Queue[Any], asyncio.AbstractEventLoop]] = {}
        self._arrivals: dict[int, pulse.Stamp] = {}
        self._installed = False
        self._unusable = False

    def add(self, room: rtc.Room) -> None:
        from livekit.rtc._ffi_client import FfiClient

        try:
            handle = room._ffi_handle.handle  # type: ignore[union-attr]
            own_queue = room._ffi_queue
            queue = FfiClient.instance.queue
            subscribers = queue._subscribers
            lock = queue._lock
            take = own_queue._get
        except AttributeError as exc:
            raise SdkInternalsChanged(f"rtc SDK internals changed: {exc}") from exc

        def get_stamped() -> Any:
            item = take()
            if isinstance(item, _Stamped):
                self._arrivals[handle] = item.stamp
                return item.event
            self._arrivals.pop(handle, None)  # queued by the SDK before the router took over
            return item

        with lock:
            for i, (q, loop, _filter) in enumerate(subscribers):
                if q is own_queue:
                    del subscribers[i]
                    own_queue._get = get_stamped
                    self._rooms[handle] = (q, loop)
                    break
            else:
                raise SdkInternalsChanged("rtc SDK internals changed: room queue not subscribed")
            if not self._installed:
                subscribers.append((asyncio.Queue(), loop, self._route))
                self._installed = True

    def add_or_fall_back(self, room: rtc.Room) -> None:
        """`add`, or, if this SDK's internals differ, leave the room on the SDK's own path
        (every event still arrives, stamped when the room gets to it) and say so once."""
        if self._unusable:
            return
        try:
            self.add(room)
        except SdkInternalsChanged as exc:
            self._unusable = True
            log.warning(
                "%s (livekit %s): each room's events take the SDK's own path, and their"
                " times are taken when the room handles them, not as they arrive",
                exc,
                sdk_version(),
            )

    def remove(self, room: rtc.Room) -> None:
        handle = getattr(room._ffi_handle, "handle", None)
        if handle is not None:
            self._rooms.pop(handle, None)
            self._arrivals.pop(handle, None)

    def arrival(self, room: rtc.Room) -> pulse.Stamp | None:
        """The arrival stamp of the event the room is handling now (None: not stamped)."""
        handle = getattr(room._ffi_handle, "handle", None)
        return None if handle is None else self._arrivals.get(handle)

    def __len__(self) -> int:
        return len(self._rooms)

    def _route(self, e: Any) -> bool:
        """Runs on the SDK's callback thread; never delivers to its own (unused) queue."""
        if e.WhichOneof("message") == "room_event":
            handle = e.room_event.room_handle
            target = self._rooms.get(handle)
            if target is not None:
                q, loop = target
                loop.call_soon_threadsafe(q.put_nowait, _Stamped(pulse.stamp(), e))
                if e.room_event.HasField("eos"):  # the room's last event
                    self._rooms.pop(handle, None)
        return False


@dataclass(frozen=True)
class _Stamped:
    stamp: pulse.Stamp
    event: Any


ROUTER = EventRouter()
