"""The server API client, set up one way for the daemon, the commands and the reports.

`LIVEKIT_URL` may list several nodes of one LiveKit cluster: a call that cannot reach the
node in use is tried on the next one, and the first that answers is used from then on
(also for the rtc connections: `ws_url`). An answer such as "not found" or "unauthorized"
is an answer, not a reason to try another node.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from livekit import api

from observer.config import ConfigError, LiveKitSettings, http_url_of, ws_url_of

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a call to the server API can fail with when the server is down, slow or refuses.
API_ERRORS: tuple[type[BaseException], ...] = (
    api.TwirpError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)


REFUSED = (401, 403)  # the server's answer to a key it does not know or a wrong secret


def is_refusal(exc: BaseException) -> bool:
    """Whether the server refused the API key or secret (bad settings, not an outage)."""
    return isinstance(exc, api.TwirpError) and exc.status in REFUSED


def reason(exc: BaseException) -> str:
    """Why a call failed, on one line."""
    if isinstance(exc, api.TwirpError):
        said = [x for x in (exc.code if exc.code != "unknown" else "", exc.message) if x]
        return f"HTTP {exc.status}" + (f": {' '.join(said)}" if said else "")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def refusal(url: str, lk: LiveKitSettings, exc: BaseException) -> str:
    """The one line that says the server refused the key, naming the key, never the secret."""
    return (
        f"LiveKit at {url} refused API key {lk.api_key!r} ({reason(exc)});"
        " check LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
    )


def log_failure(logger: logging.Logger, lk: LiveKitSettings, exc: BaseException) -> None:
    """Log a failed room listing of the running daemon, which retries it."""
    urls = ", ".join(lk.urls)
    if is_refusal(exc):
        logger.error(
            "livekit refused the API key; check LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
            extra={"url": urls, "api_key": lk.api_key, "error": reason(exc)},
        )
    else:
        logger.warning(
            "listing rooms failed; retrying (`observer check` tests the settings)",
            extra={"url": urls, "error": reason(exc)},
        )


@dataclass(frozen=True)
class Probe:
    """One node's answer to a room listing."""

    url: str  # as LIVEKIT_URL names it
    rooms: int | None = None  # how many rooms it listed, when it answered
    error: BaseException | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None and is_refusal(self.error)


async def probe(lk: LiveKitSettings, timeout_s: float) -> list[Probe]:
    """List rooms on each node of LIVEKIT_URL, one by one."""
    out = []
    for url in lk.urls:
        node = api.LiveKitAPI(
            http_url_of(url), lk.api_key, lk.api_secret, timeout=aiohttp.ClientTimeout(timeout_s)
        )
        try:
            resp = await node.room.list_rooms(api.ListRoomsRequest())
            out.append(Probe(url, rooms=len(resp.rooms)))
        except API_ERRORS as exc:
            out.append(Probe(url, error=exc))
        finally:
            await node.aclose()
    return out


async def first_contact(lk: LiveKitSettings, timeout_s: float = 5.0) -> None:
    """At start: a refused key is bad settings (ConfigError); a server that cannot be asked
    is only logged, and the daemon keeps trying."""
    probes = await probe(lk, timeout_s)
    for p in probes:
        if p.refused:
            assert p.error is not None
            raise ConfigError([refusal(p.url, lk, p.error)])
    if any(p.error is None for p in probes):
        return
    for p in probes:
        log.warning(
            "livekit did not answer at start; retrying (`observer check` tests the settings)",
            extra={"url": p.url, "error": reason(p.error) if p.error else ""},
        )


def _unreachable(exc: BaseException) -> bool:
    """Whether another node might answer where this one did not."""
    if isinstance(exc, api.TwirpError):
        return exc.status >= 500 or exc.status == 0
    return True


class Client:
    """The room service calls the observer makes, on the first node of LIVEKIT_URL that
    answers."""

    def __init__(self, lk: LiveKitSettings, timeout_s: float) -> None:
        self.urls = lk.urls
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._apis = [
            api.LiveKitAPI(http_url_of(u), lk.api_key, lk.api_secret, timeout=timeout)
            for u in self.urls
        ]
        self._in_use = 0
        self.room = _RoomService(self)

    @property
    def http_url(self) -> str:
        return http_url_of(self.urls[self._in_use])

    @property
    def ws_url(self) -> str:
        """Where rtc connections go: the node that answered last."""
        return ws_url_of(self.urls[self._in_use])

    async def call(self, fn: Callable[[api.LiveKitAPI], Awaitable[T]]) -> T:
        last: BaseException | None = None
        answer: api.TwirpError | None = None  # a node's own error answer, the first one
        for step in range(len(self._apis)):
            i = (self._in_use + step) % len(self._apis)
            try:
                result = await fn(self._apis[i])
            except API_ERRORS as exc:
                if not _unreachable(exc):
                    raise
                last = exc
                if answer is None and isinstance(exc, api.TwirpError):
                    answer = exc
                continue
            if i != self._in_use:
                log.warning(
                    "livekit answers at another URL now",
                    extra={"url": self.urls[i], "instead_of": self.urls[self._in_use]},
                )
                self._in_use = i
            return result
        # A node that answered says more than one that did not: a cluster's "no response
        # from servers" (no live node hosts the room) must not read as a dead URL.
        if answer is not None:
            raise answer
        assert last is not None
        raise last

    async def aclose(self) -> None:
        for a in self._apis:
            await a.aclose()


class _RoomService:
    def __init__(self, client: Client) -> None:
        self._c = client

    async def list_rooms(self, req: api.ListRoomsRequest) -> api.ListRoomsResponse:
        return await self._c.call(lambda a: a.room.list_rooms(req))

    async def create_room(self, req: api.CreateRoomRequest) -> api.Room:
        return await self._c.call(lambda a: a.room.create_room(req))

    async def list_participants(
        self, req: api.ListParticipantsRequest
    ) -> api.ListParticipantsResponse:
        return await self._c.call(lambda a: a.room.list_participants(req))


# A data message addressed to this identity reaches nobody: no participant has it.
PROBE_IDENTITY = "lk-observer-probe"


async def room_hosted(c: Client, room_name: str) -> bool | None:
    """Whether a live LiveKit node hosts the room: None when the server could not tell.

    A cluster keeps a dead node's rooms (and their participants) listed for good. A data
    message to nobody is routed to the node that hosts the room and delivered to no one;
    with no live node hosting it the server answers "no response from servers" (503).
    """
    req = api.SendDataRequest(
        room=room_name,
        data=b"",
        kind=api.DataPacket.Kind.RELIABLE,
        destination_identities=[PROBE_IDENTITY],
        topic=PROBE_IDENTITY,
    )
    try:
        await c.call(lambda a: a.room.send_data(req))
    except api.TwirpError as exc:
        if exc.status == 503 and "no response from servers" in (exc.message or ""):
            return False
        return None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return True


def client(lk: LiveKitSettings, timeout_s: float) -> Client:
    return Client(lk, timeout_s)
