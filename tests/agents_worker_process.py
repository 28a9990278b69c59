"""A livekit-agents worker in a process of its own, for any 1.x release of the framework.

Run by ``tests/framework_workers.py`` with the test's interpreter, or with another virtualenv's
(``AGENTS_PYTHON``, set by ``COMPAT_AGENTS=1.0.0 scripts/compat.sh``): it imports nothing of
the observer, only livekit-agents and (in voice mode) ``fake_models``.

The worker registers with the livekit-server named by ``LIVEKIT_URL`` under the agent name
``AGENT_NAME`` (explicit dispatch). On a job it joins the room and publishes one silent audio
track; with ``AGENT_VOICE=1`` it runs an ``AgentSession`` instead, with the local models of
``fake_models`` and the framework's session host, and says one sentence (the session host
sends the usage of its TTS to the room on ``lk.agent.session``). It writes what it saw of
itself to ``$AGENT_EVENTS_DIR/events.jsonl``, one JSON object a line, and leaves its room once
a file named ``leave-<room>`` appears in that folder.

Usage: python agents_worker_process.py   (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET,
AGENT_NAME, AGENT_EVENTS_DIR, optionally AGENT_VOICE=1 in the environment)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from livekit import rtc
from livekit.agents import AutoSubscribe, JobContext, JobExecutorType, WorkerOptions
from livekit.agents import __version__ as agents_version

EVENTS_DIR = Path(os.environ["AGENT_EVENTS_DIR"])
SENTENCE = "Hello, thanks for calling the front desk."


def record(event: dict[str, Any]) -> None:
    with (EVENTS_DIR / "events.jsonl").open("a") as f:
        f.write(json.dumps(event) + "\n")


async def until_asked_to_leave(room: str) -> float:
    leave = EVENTS_DIR / f"leave-{room}"
    while not leave.exists():  # noqa: ASYNC110 (the test, another process, makes the file)
        await asyncio.sleep(0.05)
    return time.time()


async def entrypoint(ctx: JobContext) -> None:
    connect_started = time.time()
    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    connected = time.time()
    if os.environ.get("AGENT_VOICE") == "1":
        await voice_job(ctx, connect_started, connected)
        return
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await ctx.room.local_participant.publish_track(track, opts)
    await source.capture_frame(rtc.AudioFrame.create(48000, 1, 480))
    await joined(ctx, connect_started, connected, {})
    leave_requested = await until_asked_to_leave(ctx.room.name)
    await source.aclose()
    await leave(ctx, leave_requested)


async def voice_job(ctx: JobContext, connect_started: float, connected: float) -> None:
    """An ``AgentSession`` with local models and its session host (livekit-agents 1.8)."""
    from fake_models import FakeLLM, FakeTTS
    from livekit.agents import Agent, AgentSession, room_io

    fake_tts = FakeTTS()
    session: AgentSession[None] = AgentSession(
        llm=FakeLLM(),
        tts=fake_tts,
        vad=None,
        turn_handling={"turn_detection": "manual", "interruption": {"enabled": False}},
        user_away_timeout=None,
    )
    await session.start(
        Agent(instructions="You are a helpful voice assistant."),
        room=ctx.room,
        room_options=room_io.RoomOptions(
            audio_input=False, text_input=False, close_on_disconnect=False
        ),
        record=False,
        session_host=True,
    )
    await asyncio.wait_for(session.room_io.wait_for_ready(), 15)
    handle = session.say(SENTENCE)
    await handle
    if (error := handle.exception()) is not None:
        raise error
    said = {
        "tts_syntheses": len(fake_tts.synthesized),
        "tts_characters": sum(len(text) for text, _ in fake_tts.synthesized),
    }
    await joined(ctx, connect_started, connected, said)
    leave_requested = await until_asked_to_leave(ctx.room.name)
    await session.aclose()
    await leave(ctx, leave_requested)


async def joined(
    ctx: JobContext, connect_started: float, connected: float, usage: dict[str, int]
) -> None:
    me = ctx.room.local_participant
    record(
        {
            "event": "joined",
            "framework": "livekit-agents",
            "version": agents_version,
            "job_agent_name": ctx.job.agent_name,
            "room": ctx.room.name,
            "room_sid": await ctx.room.sid,
            "identity": me.identity,
            "sid": me.sid,
            "attributes": dict(me.attributes),
            "connect_started": connect_started,
            "connected": connected,
            "usage": usage,
        }
    )


async def leave(ctx: JobContext, leave_requested: float) -> None:
    room = ctx.room.name
    await ctx.room.disconnect()
    record(
        {
            "event": "left",
            "room": room,
            "leave_requested": leave_requested,
            "disconnected": time.time(),
        }
    )
    ctx.shutdown("asked to leave")


async def main() -> None:
    options = WorkerOptions(
        entrypoint_fnc=entrypoint,
        agent_name=os.environ["AGENT_NAME"],
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        # jobs on threads of this process: one process group holds everything it starts
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
        load_fnc=lambda: 0.0,
        host="127.0.0.1",
        port=0,
        shutdown_process_timeout=5.0,
    )
    try:  # livekit-agents 1.3 and later
        from livekit.agents import AgentServer

        server: Any = AgentServer.from_server_options(options)
        run = server.run(devmode=False)
    except ImportError:  # 1.0 to 1.2
        from livekit.agents import Worker

        server = Worker(options, devmode=False)
        run = server.run()

    def on_registered(worker_id: str, _info: Any) -> None:
        record({"event": "registered", "worker_id": worker_id, "version": agents_version})

    server.on("worker_registered", on_registered)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.ensure_future(run)
    await asyncio.wait([running, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")
    await server.aclose()


if __name__ == "__main__":
    os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
    asyncio.run(main())
