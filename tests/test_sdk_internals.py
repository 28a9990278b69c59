"""The one place the observer relies on rtc SDK internals fails loudly if they change."""

from __future__ import annotations

from daemon_helpers import Clients, create_room
from livekit.rtc import _ffi_client
from livekit.rtc._proto import ffi_pb2
from livekit_server import LiveKitServer


def room_event(handle: int) -> ffi_pb2.FfiEvent:
    ev = ffi_pb2.FfiEvent()
    ev.room_event.room_handle = handle
    ev.room_event.eos.SetInParent()
    return ev


async def test_each_watched_room_gets_only_its_own_events(
    livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    for name in ("narrow-a", "narrow-b"):
        await create_room(livekit_server, name)
        await clients.join(name, "user")
    obs = await start_observer(livekit_server, db_url, OBSERVER_ROOM_PATTERN="narrow-*")
    await obs.wait_watching("narrow-a")
    await obs.wait_watching("narrow-b")
    rooms = {w.room_name: w.room for w in obs.obs.rooms.watchers.values()}
    a, b = rooms["narrow-a"], rooms["narrow-b"]
    subscribers = _ffi_client.FfiClient.instance.queue._subscribers
    filters = {id(q): f for q, _loop, f in subscribers}
    fa, fb = filters[id(a._ffi_queue)], filters[id(b._ffi_queue)]
    ha, hb = a._ffi_handle.handle, b._ffi_handle.handle
    assert fa(room_event(ha)) and not fa(room_event(hb))
    assert fb(room_event(hb)) and not fb(room_event(ha))
    # and the rooms still see their participants come and go
    agent = await clients.agent("narrow-b", "agent-b")
    await obs.wait_rows(lambda rows: len(rows) == 1 and rows[0].room_name == "narrow-b")
    await agent.disconnect()
    await obs.wait_rows(lambda rows: rows[0].left_at is not None)
