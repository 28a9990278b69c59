"""The one module that talks to livekit.rtc: a hidden, silent connection to one room.

Callbacks only translate SDK objects into tracker events and hand them to `emit`;
they never await and never touch the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from livekit import api, rtc

from observer.core.agent_usage import UsageReport
from observer.core.events import (
    AttributesChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    Reconnected,
    Reconnecting,
    RoomClosed,
    RoomJoined,
    RoomLost,
    RoomMetadataChanged,
    SeenParticipant,
    UsageReported,
    UsageUndecodable,
)
from observer.core.protocol_values import detail_value, participant_kind, reason_value
from observer.core.vocab import (
    OBSERVER_OVERFLOW,
    OBSERVER_REJOINING,
    ROOM_ENDED,
    UNKNOWN_REASON,
)
from observer.daemon import pulse, session_messages
from observer.daemon.sdk_internals import ROUTER

log = logging.getLogger(__name__)


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
        return UNKNOWN_REASON
    return reason_value(_name(rtc.DisconnectReason, reason), reason)


def seen_participant(
    p: rtc.RemoteParticipant, now: datetime, *, agent_attributes: bool
) -> SeenParticipant:
    return SeenParticipant(
        sid=p.sid,
        identity=p.identity,
        name=p.name,
        kind=participant_kind(
            _name(rtc.ParticipantKind, p.kind),
            p.kind,
            p.attributes,
            agent_attributes=agent_attributes,
        ),
        attributes=dict(p.attributes),
        # the SDK reads only joined_at_ms, which servers before 1.8.4 leave at 0
        joined_at=p.joined_at or now,
        join_precision_ms=1 if p.joined_at else None,
        kind_details=tuple(
            detail_value(_name(rtc.ParticipantKindDetail, d), d) for d in p.kind_details
        ),
    )


# How every watched room connects: no media (auto_subscribe off), ICE candidates gathered
# once (continual gathering holds ~50-100 sockets per room, once ~3), and one peer
# connection, set explicitly because the SDK's default changed between versions.
def room_options(connect_timeout_s: float) -> rtc.RoomOptions:
    return rtc.RoomOptions(
        auto_subscribe=False,
        connect_timeout=connect_timeout_s,
        single_peer_connection=True,
        rtc_config=rtc.RtcConfiguration(
            continual_gathering_policy=rtc.ContinualGatheringPolicy.GATHER_ONCE
        ),
    )


class RoomMismatchError(Exception):
    """The room joined is not the room that was listed: it ended, and a client made a new
    room with its name before the observer got in."""

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
        agent_attributes: bool = True,
    ) -> None:
        """`agent_attributes`: a standard participant with an agent's attributes is an
        agent (for servers that drop the kind claim; see `participant_kind`)."""
        self.room_name = room_name
        self.room_sid = room_sid
        self._agent_attributes = agent_attributes
        self._emit_now = emit
        self._on_recovered = on_recovered
        self._held: list[Event] | None = None  # not None while the connection recovers
        self._room = rtc.Room()
        self._handlers: dict[rtc.room.EventTypes, Callable[..., Any]] = {
            "participant_connected": self._on_connected,
            "participant_disconnected": self._on_disconnected,
            "participant_attributes_changed": self._on_attributes,
            "room_metadata_changed": self._on_metadata,
            "reconnecting": self._on_reconnecting,
            "reconnected": self._on_reconnected,
            "disconnected": self._on_room_disconnected,
        }
        self._active = False
        self._reads: set[asyncio.Task[None]] = set()

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
            self._emit_now(RoomLost(self.room_sid, OBSERVER_OVERFLOW, pulse.stamp().at))

    async def _connect(self, ws_url: str, token: str, connect_timeout_s: float) -> str:
        """Connect `self._room` with this watcher's handlers; the sid of the room joined."""
        for event, handler in self._handlers.items():
            self._room.on(event, handler)
        self._room.register_byte_stream_handler(session_messages.TOPIC, self._on_session_stream)
        try:
            await self._room.connect(ws_url, token, room_options(connect_timeout_s))
        except BaseException:
            self._unsubscribe()
            raise
        ROUTER.add_or_fall_back(self._room)
        return await self._room.sid

    async def join(self, ws_url: str, token: str, connect_timeout_s: float = 10.0) -> None:
        """Connect, check the room is the one listed, then report who is present."""
        joined_sid = await self._connect(ws_url, token, connect_timeout_s)
        if joined_sid != self.room_sid:
            await self.leave()
            raise RoomMismatchError(self.room_sid, joined_sid)
        # Participants already present fire no participant_connected: seed from the room.
        now = pulse.stamp().at
        present = tuple(self._seen(p, now) for p in self._room.remote_participants.values())
        self._active = True
        try:
            created_at: datetime | None = self._room.creation_time
        except (AttributeError, ValueError, OSError):
            created_at = None
        self._emit(
            RoomJoined(
                self.room_name,
                self.room_sid,
                present,
                now,
                metadata=self._room.metadata or "",
                created_at=created_at if created_at and created_at.timestamp() > 0 else None,
            )
        )

    async def renew(self, ws_url: str, token: str, connect_timeout_s: float = 10.0) -> None:
        """Replace the connection by a fresh join of the same room, reported as a reconnect.

        The SDK reconnects every broken room at once, and rooms that gather their network
        candidates together keep many more sockets (3 for a room joined alone, ~17 each for
        12 at once, ~46 each for 200): a cut of the observer's link would leave it holding
        ten times the sockets for good. A fresh join, one at a time, holds 3 again. The
        participants' events are held from `Reconnecting` until the new connection's
        snapshot (`Reconnected`); a room that ended meanwhile is reported lost (the listing
        then settles its sessions), as is a join that fails (the next listing rejoins it).
        """
        if not self._active or self.recovering:
            return
        self._emit_now(Reconnecting(self.room_sid, pulse.stamp().at))
        self._held = []
        self._unsubscribe()
        old, self._room = self._room, rtc.Room()
        try:
            await old.disconnect()
        except Exception:  # the old connection's fate no longer matters
            log.warning("leaving the old connection failed", extra={"room": self.room_name})
        finally:
            ROUTER.remove(old)
        try:
            joined_sid = await self._connect(ws_url, token, connect_timeout_s)
        except Exception as exc:  # the room must not stay held as recovering
            self._renew_failed(f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
            return
        if not self._active:  # left meanwhile
            self._held = None
            await self.leave()
            return
        if joined_sid != self.room_sid:
            self._renew_failed(f"the room now has another sid ({joined_sid})")  # reports it lost
            await self.leave()
            return
        now = pulse.stamp().at
        present = tuple(self._seen(p, now) for p in self._room.remote_participants.values())
        self._emit(Reconnected(self.room_sid, present, now))
        self.recovered(True)

    def _renew_failed(self, why: str) -> None:
        log.warning("joining a room afresh failed", extra={"room": self.room_name, "error": why})
        self._held = None
        if self._active:
            self._active = False
            self._emit_now(RoomLost(self.room_sid, OBSERVER_REJOINING, pulse.stamp().at))

    async def leave(self) -> None:
        """Disconnect without reporting anything: the caller decides what leaving means."""
        self._active = False
        self._unsubscribe()
        try:
            await self._room.disconnect()
        finally:
            ROUTER.remove(self._room)

    def _unsubscribe(self) -> None:
        for event, handler in self._handlers.items():
            self._room.off(event, handler)
        with contextlib.suppress(ValueError, KeyError):
            self._room.unregister_byte_stream_handler(session_messages.TOPIC)
        for task in self._reads:
            task.cancel()

    # ---- SDK callbacks: translate and hand over, nothing else ----------------------------

    def _arrived(self) -> pulse.Stamp:
        """When the event being handled reached this process (see `EventRouter`)."""
        return ROUTER.arrival(self._room) or pulse.stamp()

    def _on_connected(self, p: rtc.RemoteParticipant) -> None:
        if self._active:
            st = self._arrived()
            self._emit(
                ParticipantJoined(
                    self.room_name, self.room_sid, self._seen(p, st.at), st.at, st.blind_since
                )
            )

    def _on_disconnected(self, p: rtc.RemoteParticipant) -> None:
        if self._active:
            reason = reason_name(p.disconnect_reason)
            st = self._arrived()
            self._emit(ParticipantLeft(self.room_sid, p.sid, reason, st.at, st.blind_since))

    def _seen(self, p: rtc.RemoteParticipant, now: datetime) -> SeenParticipant:
        return seen_participant(p, now, agent_attributes=self._agent_attributes)

    def _on_attributes(self, _changed: dict[str, str], p: rtc.Participant) -> None:
        if self._active and isinstance(p, rtc.RemoteParticipant):
            at = self._arrived().at
            self._emit(AttributesChanged(self.room_sid, p.sid, dict(p.attributes), at))

    def _on_metadata(self, _old: str, new: str) -> None:
        if self._active:
            self._emit(RoomMetadataChanged(self.room_sid, new or "", self._arrived().at))

    def _on_session_stream(self, reader: rtc.ByteStreamReader, identity: str) -> None:
        """An agent session's message to the room: only its usage totals are kept."""
        p = self._room.remote_participants.get(identity)
        if not self._active or p is None or self._seen(p, pulse.stamp().at).kind != "agent":
            reader.close()
            return
        size = reader.info.size
        if size is not None and size > session_messages.MAX_MESSAGE_BYTES:
            reader.close()
            self._emit(UsageUndecodable(self.room_sid, identity, self._arrived().at))
            return
        task = asyncio.get_running_loop().create_task(self._read_usage(reader, p.sid, identity))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_usage(self, reader: rtc.ByteStreamReader, sid: str, identity: str) -> None:
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in reader:
                total += len(chunk)
                if total > session_messages.MAX_MESSAGE_BYTES:
                    raise session_messages.Undecodable("message too large")
                chunks.append(chunk)
            found = session_messages.usage_in(b"".join(chunks))
        except (session_messages.Undecodable, rtc.StreamError):
            if self._active:
                self._emit(UsageUndecodable(self.room_sid, identity, pulse.stamp().at))
            return
        finally:
            reader.close()
        if found is None or not self._active:
            return
        now = pulse.stamp().at
        at, models = found
        report = UsageReport(self.room_sid, sid, identity, at or now, now, "room", models)
        self._emit(UsageReported(report))

    def _on_reconnecting(self) -> None:
        if self._active and self._held is None:
            self._emit_now(Reconnecting(self.room_sid, self._arrived().at))
            self._held = []

    def _on_reconnected(self) -> None:
        if self._active:
            now = self._arrived().at
            if self._held is None:  # reported without a `reconnecting` first
                self._emit_now(Reconnecting(self.room_sid, now))
                self._held = []
            present = tuple(self._seen(p, now) for p in self._room.remote_participants.values())
            self._emit(Reconnected(self.room_sid, present, now))
            self._on_recovered(self)

    def _on_room_disconnected(self, reason: int) -> None:
        self._held = None  # what a failed recovery saw is not trusted
        if not self._active:
            return
        self._active = False
        name = reason_name(reason)
        st = self._arrived()
        if name in ROOM_ENDED:
            self._emit(RoomClosed(self.room_sid, name, st.at, st.blind_since))
        else:
            self._emit(RoomLost(self.room_sid, name, st.at, st.blind_since))


def _name(enum: Any, number: int) -> str | None:
    """The installed SDK's name for an enum value, None for a number it does not name."""
    try:
        return str(enum.Name(number))
    except ValueError:
        return None
