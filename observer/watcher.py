"""The one module that talks to livekit.rtc: a hidden, silent connection to one room.

Callbacks only translate SDK objects into tracker events and hand them to `emit`;
they never await and never touch the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from livekit import api, rtc

from observer.tracker import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomClosed,
    RoomJoined,
    RoomLost,
    Seen,
)

log = logging.getLogger(__name__)

KIND_NAMES = {
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD: "standard",
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS: "ingress",
    rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS: "egress",
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP: "sip",
    rtc.ParticipantKind.PARTICIPANT_KIND_AGENT: "agent",
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR: "connector",
    rtc.ParticipantKind.PARTICIPANT_KIND_BRIDGE: "bridge",
}

# The room itself ended: its sessions end now, and the room must never be joined again.
ROOM_ENDED = frozenset({"ROOM_DELETED", "ROOM_CLOSED"})

# A room preset no server defines. livekit-server applies a token's preset only when the
# join would create the room, and refuses the join when the preset is unknown: so neither
# the observer's joins nor the SDK's own reconnects can ever create a room, while joining a
# live room works as before.
NO_CREATE_PRESET = "lk-observer-never-creates-rooms"
# Participant events held while the observer's own connection recovers, per room.
HELD_EVENTS_MAX = 10_000


def observer_token(key: str, secret: str, identity: str, room_name: str) -> str:
    """A token with the least rights that let the observer watch a room unseen.

    `hidden` keeps it out of other participants' view; the `agent` grant (without an
    agent kind claim) makes it a dependent participant, so it neither keeps the room open,
    nor counts toward max_participants, nor sets the room's first-join time. The unknown
    room preset makes every join that would create the room fail.
    """
    grants = api.VideoGrants(
        room_join=True,
        room=room_name,
        hidden=True,
        agent=True,
        can_publish=False,
        can_subscribe=False,
        can_publish_data=False,
        can_update_own_metadata=False,
    )
    return (
        api.AccessToken(key, secret)
        .with_identity(identity)
        .with_name("room observer")
        .with_grants(grants)
        .with_room_preset(NO_CREATE_PRESET)
        .with_ttl(timedelta(hours=24))
        .to_jwt()
    )


def reason_name(reason: int | None) -> str:
    if reason is None:
        return "UNKNOWN_REASON"
    try:
        return rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return f"REASON_{reason}"


def seen(p: rtc.RemoteParticipant, now: datetime) -> Seen:
    return Seen(
        sid=p.sid,
        identity=p.identity,
        name=p.name,
        kind=KIND_NAMES.get(p.kind, "standard"),
        attributes=dict(p.attributes),
        joined_at=p.joined_at or now,
    )


class SdkInternalsChanged(RuntimeError):
    """The rtc SDK no longer looks the way `narrow_event_delivery` relies on."""


def narrow_event_delivery(room: rtc.Room) -> None:
    """Deliver to this room only its own native events.

    The SDK puts every native event (of every room) on every Room's queue and each Room's
    task discards the ones that are not its own, so a process watching N rooms does N times
    the work for each event. This installs a per-subscriber filter (an SDK feature) that
    keeps the room's own events only. It relies on SDK internals; if they change, this
    raises instead of silently doing nothing (a test calls it against the real SDK).
    """
    from livekit.rtc._ffi_client import FfiClient

    try:
        handle = room._ffi_handle.handle  # type: ignore[union-attr]
        own_queue = room._ffi_queue
        subscribers = FfiClient.instance.queue._subscribers
        lock = FfiClient.instance.queue._lock
    except AttributeError as exc:
        raise SdkInternalsChanged(f"rtc SDK internals changed: {exc}") from exc

    def own(e: Any) -> bool:
        return bool(e.WhichOneof("message") == "room_event" and e.room_event.room_handle == handle)

    with lock:
        for i, (queue, loop, _old) in enumerate(subscribers):
            if queue is own_queue:
                subscribers[i] = (queue, loop, own)
                return
    raise SdkInternalsChanged("rtc SDK internals changed: room queue not subscribed")


class RoomMismatchError(Exception):
    """The room joined is not the room that was listed: joining created a new one."""

    def __init__(self, listed_sid: str, joined_sid: str) -> None:
        super().__init__(f"listed room {listed_sid} but joined {joined_sid}")
        self.joined_sid = joined_sid


class RoomWatcher:
    """One hidden connection to one room.

    The SDK recovers a lost connection by itself, by a signal resume (same room, same
    participant) or by a full reconnect, which joins the room *by name* and may land in a
    new room of the same name. So from `reconnecting` on, what the SDK reports about
    participants is held back; after `reconnected` the owner checks the room's sid against
    the server (`on_recovered`) and calls `recovered(same_room)`: the held events are then
    handed on, or dropped and the room given up.
    """

    def __init__(
        self,
        room_name: str,
        room_sid: str,
        emit: Callable[[Event], None],
        *,
        on_recovered: Callable[[RoomWatcher], None] = lambda _w: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.room_name = room_name
        self.room_sid = room_sid
        self._emit_now = emit
        self._on_recovered = on_recovered
        self._clock = clock
        self._held: list[Event] | None = None  # not None while the connection recovers
        self._room = rtc.Room()
        self._handlers: dict[rtc.room.EventTypes, Callable[..., Any]] = {
            "participant_connected": self._on_connected,
            "participant_disconnected": self._on_disconnected,
            "participant_attributes_changed": self._on_attributes,
            "reconnecting": self._on_reconnecting,
            "reconnected": self._on_reconnected,
            "disconnected": self._on_room_disconnected,
        }
        self._active = False

    @property
    def room(self) -> rtc.Room:
        return self._room

    @property
    def recovering(self) -> bool:
        """The SDK is re-establishing the connection, or its result is not yet checked."""
        return self._held is not None

    def recovered(self, same_room: bool) -> None:
        """The owner checked the room after the SDK's reconnect: hand on what was held if
        the room is the one watched, else drop it (the caller then leaves)."""
        held, self._held = self._held, None
        if not same_room:
            self._active = False
            return
        for ev in held or ():
            self._emit_now(ev)

    def _emit(self, ev: Event) -> None:
        if self._held is None:
            self._emit_now(ev)
        elif len(self._held) < HELD_EVENTS_MAX:
            self._held.append(ev)
        else:
            log.warning(
                "too many events while reconnecting; giving the room up",
                extra={"room": self.room_name},
            )
            self._held = None
            self._active = False
            self._emit_now(RoomLost(self.room_sid, "OBSERVER_OVERFLOW", self._clock()))

    async def join(self, ws_url: str, token: str, connect_timeout_s: float = 10.0) -> None:
        """Connect, check the room is the one listed, then report who is present."""
        for event, handler in self._handlers.items():
            self._room.on(event, handler)
        try:
            await self._room.connect(
                ws_url,
                token,
                rtc.RoomOptions(auto_subscribe=False, connect_timeout=connect_timeout_s),
            )
        except BaseException:
            self._unsubscribe()
            raise
        narrow_event_delivery(self._room)
        joined_sid = await self._room.sid
        if joined_sid != self.room_sid:
            await self.leave()
            raise RoomMismatchError(self.room_sid, joined_sid)
        # Participants already present fire no participant_connected: seed from the room.
        now = self._clock()
        present = tuple(seen(p, now) for p in self._room.remote_participants.values())
        self._active = True
        self._emit(RoomJoined(self.room_name, self.room_sid, present, now))

    async def leave(self) -> None:
        """Disconnect without reporting anything: the caller decides what leaving means."""
        self._active = False
        self._unsubscribe()
        await self._room.disconnect()

    def _unsubscribe(self) -> None:
        for event, handler in self._handlers.items():
            self._room.off(event, handler)

    # ---- SDK callbacks: translate and hand over, nothing else ----------------------------

    def _on_connected(self, p: rtc.RemoteParticipant) -> None:
        if self._active:
            now = self._clock()
            self._emit(ParticipantJoined(self.room_name, self.room_sid, seen(p, now), now))

    def _on_disconnected(self, p: rtc.RemoteParticipant) -> None:
        if self._active:
            reason = reason_name(p.disconnect_reason)
            self._emit(ParticipantLeft(self.room_sid, p.sid, reason, self._clock()))

    def _on_attributes(self, _changed: dict[str, str], p: rtc.Participant) -> None:
        if self._active and isinstance(p, rtc.RemoteParticipant):
            self._emit(AttributesChanged(self.room_sid, p.sid, dict(p.attributes), self._clock()))

    def _on_reconnecting(self) -> None:
        if self._active and self._held is None:
            self._emit_now(Reconnecting(self.room_sid, self._clock()))
            self._held = []

    def _on_reconnected(self) -> None:
        if self._active:
            now = self._clock()
            if self._held is None:  # reported without a `reconnecting` first
                self._emit_now(Reconnecting(self.room_sid, now))
                self._held = []
            present = tuple(seen(p, now) for p in self._room.remote_participants.values())
            self._emit(Reconnected(self.room_sid, present, now))
            self._on_recovered(self)

    def _on_room_disconnected(self, reason: int) -> None:
        self._held = None  # what a failed recovery saw is not trusted
        if not self._active:
            return
        self._active = False
        name = reason_name(reason)
        now = self._clock()
        if name in ROOM_ENDED:
            self._emit(RoomClosed(self.room_sid, name, now))
        else:
            self._emit(RoomLost(self.room_sid, name, now))
