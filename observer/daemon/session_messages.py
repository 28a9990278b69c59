"""What the observer takes from the agents framework's `lk.agent.session` messages: the
session's model usage totals, and nothing else.

Every other event on that topic (conversation items, transcripts, states, errors) is
dropped without being looked at, stored or logged.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from livekit.protocol.agent_pb import agent_session as pb

from observer.core.agent_usage import ModelUsage

TOPIC = "lk.agent.session"
# The largest message read: a usage update is a few hundred bytes per model.
MAX_MESSAGE_BYTES = 256 * 1024


class Undecodable(ValueError):
    """Bytes on the topic that are not a message of the agents framework."""


def usage_in(data: bytes) -> tuple[datetime | None, tuple[ModelUsage, ...]] | None:
    """The usage totals an `AgentSessionMessage` carries, with the time the agent stamped
    on them; None for any other message."""
    msg = pb.AgentSessionMessage()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise Undecodable(str(exc)) from None
    if msg.WhichOneof("message") != "event":
        return None
    event = msg.event
    if event.WhichOneof("event") != "session_usage_updated":
        return None
    at = None
    if event.HasField("created_at") and event.created_at.ToNanoseconds() > 0:
        at = event.created_at.ToDatetime(tzinfo=UTC)
    models = []
    for mu in event.session_usage_updated.usage.model_usage:
        variant = mu.WhichOneof("usage")
        if variant == "llm":
            u = mu.llm
            models.append(
                ModelUsage(
                    "llm",
                    u.provider,
                    u.model,
                    input_tokens=u.input_tokens,
                    input_cached_tokens=u.input_cached_tokens,
                    input_audio_tokens=u.input_audio_tokens,
                    input_text_tokens=u.input_text_tokens,
                    output_tokens=u.output_tokens,
                    output_audio_tokens=u.output_audio_tokens,
                    output_text_tokens=u.output_text_tokens,
                    session_ms=round(u.session_duration * 1000),
                )
            )
        elif variant == "tts":
            t = mu.tts
            models.append(
                ModelUsage(
                    "tts",
                    t.provider,
                    t.model,
                    input_tokens=t.input_tokens,
                    output_tokens=t.output_tokens,
                    characters=t.characters_count,
                    audio_ms=round(t.audio_duration * 1000),
                )
            )
        elif variant == "stt":
            s = mu.stt
            models.append(
                ModelUsage(
                    "stt",
                    s.provider,
                    s.model,
                    input_tokens=s.input_tokens,
                    output_tokens=s.output_tokens,
                    audio_ms=round(s.audio_duration * 1000),
                )
            )
    return at, tuple(models)
