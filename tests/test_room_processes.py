"""The messages between the daemon and its room processes: typed, framed, and nothing else
accepted."""

from __future__ import annotations

import asyncio
import pickle
from datetime import UTC, datetime

import pytest

from observer.core.events import RoomLost
from observer.daemon.room_processes import channel
from observer.daemon.room_processes.proto import (
    Join,
    JoinFailedReply,
    Leave,
    Recovered,
    RoomEvent,
)

pytestmark = pytest.mark.unit


async def _read_all(data: bytes) -> list[object]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[object] = []
    while (message := await channel.read(reader)) is not None:
        out.append(message)
    return out


async def test_messages_cross_the_pipe_whole_and_in_order() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sent = [
        Join("room-a", "RM_a", "ws://x", "token", 10.0, False),
        Leave("RM_a"),
        Recovered("RM_b", same_room=False),
        JoinFailedReply("RM_c", "ConnectError: refused"),
        RoomEvent(RoomLost("RM_d", "OBSERVER_PROCESS_EXITED", at)),
    ]
    data = b"".join(channel.encode(m) for m in sent)
    # a frame cut short by a process that died is the end of the stream, not a message
    assert await _read_all(data + channel.encode(Leave("RM_z"))[:-1]) == sent


async def test_a_frame_that_is_not_a_message_is_refused() -> None:
    body = pickle.dumps(("join", "room-a", "RM_a"))
    with pytest.raises(channel.ProtocolError):
        await _read_all(channel.HEADER.pack(len(body)) + body)
