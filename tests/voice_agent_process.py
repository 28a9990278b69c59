"""A voice agent in a process of its own, so a test can kill it in the middle of its session.

An ``AgentSession`` (livekit-agents) with the local models of ``fake_models``, in a room it
joins itself with the token it is given. As in a real agent, the framework's session host
runs: it sends the session's events, usage totals among them, into the room on the
``lk.agent.session`` topic.

The test drives it through stdin, one JSON object a line: ``{"say": text}`` or
``{"reply": prompt}``. It answers on stdout, one JSON object a line: ``{"ready": sid}``
once it is listening, then ``{"done": text, "usage": {...}}`` after each speech has played
out, with what its models have counted so far (see ``counted``).

Usage: python voice_agent_process.py WS_URL TOKEN
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from fake_models import FakeLLM, FakeTTS
from livekit import rtc
from livekit.agents import Agent, AgentSession, room_io
from livekit.agents.llm import ChatMessage


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def counted(fake_llm: FakeLLM, fake_tts: FakeTTS, session: AgentSession[None]) -> dict[str, Any]:
    """What the models reported so far, and the session's own totals of it."""
    return {
        "llm_requests": len(fake_llm.usages),
        "llm_input_tokens": sum(u.prompt_tokens for u in fake_llm.usages),
        "llm_output_tokens": sum(u.completion_tokens for u in fake_llm.usages),
        "tts_syntheses": len(fake_tts.synthesized),
        "tts_characters": sum(len(text) for text, _ in fake_tts.synthesized),
        "tts_seconds": sum(seconds for _, seconds in fake_tts.synthesized),
        "session": [m.model_dump() for m in session.usage.model_usage],
    }


async def main(url: str, token: str) -> None:
    room = rtc.Room()
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    fake_llm, fake_tts = FakeLLM(), FakeTTS()
    session: AgentSession[None] = AgentSession(
        llm=fake_llm,
        tts=fake_tts,
        vad=None,
        turn_handling={"turn_detection": "manual", "interruption": {"enabled": False}},
        user_away_timeout=None,
    )
    await session.start(
        Agent(instructions="You are a helpful voice assistant."),
        room=room,
        room_options=room_io.RoomOptions(
            audio_input=False,
            text_input=False,
            close_on_disconnect=False,
            delete_room_on_close=False,
        ),
        record=False,
    )
    await asyncio.wait_for(session.room_io.wait_for_ready(), 15)
    emit({"ready": room.local_participant.sid})

    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        if "say" in command:
            handle = session.say(command["say"])
        else:
            handle = session.generate_reply(user_input=command["reply"])
        await handle
        if (error := handle.exception()) is not None:
            raise error
        deadline = time.monotonic() + 5
        while session.agent_state != "listening":
            if time.monotonic() > deadline:
                raise AssertionError(f"agent still {session.agent_state} after its speech")
            await asyncio.sleep(0.01)
        said = "".join(
            m.text_content or "" for m in handle.chat_items if isinstance(m, ChatMessage)
        )
        emit({"done": said, "usage": counted(fake_llm, fake_tts, session)})

    # stdin closed: a clean end
    await session.aclose()
    await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
