"""Attribution against a real livekit-server: a room's metadata and an agent's attributes,
as the application and the agent set and change them, in the rooms row and in `observer
usage --by attribute:KEY / room-metadata:KEY` (the numbers themselves: test_attribution)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from observer.cli import main
from observer.db.reads import RoomFilter

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]


async def test_rooms_and_attribution_against_the_server(
    livekit_server: Any, db_url: str, start_observer: Any, clients: Any
) -> None:
    """A real room: created with metadata by the application's backend, which later
    changes it; an agent that sets its customer attribute as an application does; a user;
    then the room is deleted. The rooms row and the attribution follow."""
    import time as _time

    from daemon_helpers import create_room
    from livekit import api

    room = await create_room(livekit_server, "billed", metadata='{"customer": "acme"}')
    created = room.creation_time  # seconds, by the server
    await clients.join("billed", "user-1")
    bot = await clients.agent("billed", "agent-1")
    await bot.local_participant.set_attributes({"customer": "acme"})
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_rows(lambda rows: len(rows) == 1 and rows[0].attributes.get("customer"))
    await clients.agent("billed", "agent-2")
    await obs.wait_rows(lambda rows: len(rows) == 2)
    lkapi = livekit_server.api_client()
    try:
        await lkapi.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room="billed", metadata='{"customer": "globex"}')
        )
        deadline = _time.monotonic() + 10
        while True:
            (row,) = obs.store.rooms(RoomFilter(room="billed"))
            if row.metadata_ == '{"customer": "globex"}' or _time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert row.metadata_json == {"customer": "globex"}
        deleted_at = datetime.now(UTC)
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="billed"))
    finally:
        await lkapi.aclose()
    await obs.wait_rows(lambda rows: all(r.left_at for r in rows))
    deadline = _time.monotonic() + 10
    while (row := obs.store.rooms(RoomFilter(room="billed"))[0]).ended_at is None:
        assert _time.monotonic() < deadline, "the room's end was not recorded"
        await asyncio.sleep(0.1)
    assert row.sid == room.sid
    assert row.created_at is not None and abs(row.created_at.timestamp() - created) < 1
    assert row.end_reason == "ROOM_DELETED"
    assert abs((row.ended_at - deleted_at).total_seconds()) < 1
    assert (row.max_agents, row.max_participants) == (2, 3)

    def grouped(by: str) -> dict[str, int]:
        stop = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        args = ["usage", "--from", "1d", "--to", stop, "--by", by, "--format", "json"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
        return {line[by]: line["sessions"] for line in json.loads(out.getvalue())}

    os.environ["OBSERVER_DATABASE_URL"] = db_url
    try:
        assert grouped("attribute:customer") == {"": 1, "acme": 1}
        assert grouped("room-metadata:customer") == {"globex": 2}  # as last seen
    finally:
        del os.environ["OBSERVER_DATABASE_URL"]
