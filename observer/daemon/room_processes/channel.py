"""Messages on a pipe between the daemon and its own room processes: each a frame of a
4-byte length and the pickled message. Only the classes of `proto` are sent; a frame that
holds anything else is refused."""

from __future__ import annotations

import asyncio
import pickle
import struct

from observer.daemon.room_processes.proto import Message

HEADER = struct.Struct("!I")
# The largest frame a reader accepts (a `RoomEvent` with a room's participants in it).
STREAM_LIMIT = 2**24


class ProtocolError(Exception):
    """A frame that does not hold a message of `proto`."""


def encode(message: Message) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    message = pickle.loads(body)
    if not isinstance(message, Message):
        raise ProtocolError(f"not a room process message: {type(message).__name__}")
    return message


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None once the other side has closed the pipe."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    return decode(body)
