"""A room event's time is taken where it reaches the process, not when the event loop
gets to it: a stalled loop delays the writing of a leave, never its time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest
from daemon_helpers import create_room
from livekit_server import LiveKitServer

pytestmark = pytest.mark.live

# An agent in a process of its own: it leaves at the wall-clock time it is given, whatever
# the test's event loop is doing, and prints when it asked to leave.
AGENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from livekit import rtc
    async def main(url, token, leave_at):
        room = rtc.Room()
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, opts)
        print("joined", flush=True)
        await asyncio.sleep(max(0.0, leave_at - time.time()))
        asked = time.time()
        await room.disconnect()
        print("left", asked, time.time(), flush=True)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    """
)


async def test_a_leave_during_a_stalled_event_loop_keeps_its_time(
    livekit_server: LiveKitServer, sqlite_url: str, start_observer, clients
) -> None:
    await create_room(livekit_server, "stalled-loop")
    await clients.join("stalled-loop", "user-1")
    obs = await start_observer(livekit_server, sqlite_url)
    await obs.wait_watching("stalled-loop")
    token = livekit_server.token("agent-1", "stalled-loop", kind="agent")
    leave_at = time.time() + 6
    agent = subprocess.Popen(  # noqa: ASYNC220 (its own process on purpose)
        [sys.executable, "-c", AGENT, livekit_server.ws_url, token, str(leave_at)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        await obs.wait_rows(lambda rows: len(rows) == 1)
        await asyncio.sleep(max(0.0, leave_at - 1.0 - time.time()))
        # the event loop does nothing else meanwhile (a big page, say)
        time.sleep(3.0)  # noqa: ASYNC251
        out, _ = await asyncio.to_thread(agent.communicate, timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    asked, done = (float(x) for x in out.split("left")[1].split())
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert row.end_source == "rtc" and row.disconnect_reason == "CLIENT_INITIATED"
    assert row.left_at is not None
    left = row.left_at.timestamp()
    assert asked - 0.05 < left < done + 0.5, (left - asked, done - asked)
