"""Model usage an agent session reports: cumulative totals per (kind, provider, model).

livekit-agents sends them into the room (`lk.agent.session` byte streams); other agents can
post the same as JSON. Pure data: no protobuf, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

UsageKind = Literal["llm", "tts", "stt"]
USAGE_KINDS: tuple[UsageKind, ...] = ("llm", "tts", "stt")
UsageSource = Literal["room", "http"]


@dataclass(frozen=True)
class ModelUsage:
    """One model's cumulative usage in one agent session, as last reported."""

    kind: UsageKind
    provider: str
    model: str
    input_tokens: int = 0
    input_cached_tokens: int = 0
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    output_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0
    characters: int = 0  # TTS characters
    audio_ms: int = 0  # TTS audio produced, STT audio heard
    session_ms: int = 0  # a realtime model's connection time

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.provider, self.model)

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


COUNTERS: tuple[str, ...] = tuple(
    f.name for f in fields(ModelUsage) if f.name not in ("kind", "provider", "model")
)


@dataclass(frozen=True)
class UsageReport:
    """An agent session's totals at `reported_at` (the agent's clock when it has one)."""

    room_sid: str
    participant_sid: str
    identity: str
    reported_at: datetime
    received_at: datetime
    source: UsageSource
    models: tuple[ModelUsage, ...]


class BadUsage(ValueError):
    """Usage that does not have the shape of `ModelUsage` (the message says what)."""


MAX_COUNTER = 2**62


def model_usage(data: Any) -> ModelUsage:
    """A `ModelUsage` from a JSON object: kind, provider, model, and counters (whole,
    non-negative numbers; missing ones are 0)."""
    if not isinstance(data, dict):
        raise BadUsage("each usage entry must be an object")
    kind = data.get("kind")
    if kind not in USAGE_KINDS:
        raise BadUsage(f"kind must be one of {', '.join(USAGE_KINDS)}")
    names = {"provider": "", "model": ""}
    for name in names:
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > 200:
            raise BadUsage(f"{name} must be a string of at most 200 characters")
        names[name] = value
    if not names["model"]:
        raise BadUsage("model is required")
    unknown = set(data) - {"kind", "provider", "model", *COUNTERS}
    if unknown:
        raise BadUsage(f"unknown field {sorted(unknown)[0]!r}")
    counts: dict[str, int] = {}
    for name in COUNTERS:
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNTER:
            raise BadUsage(f"{name} must be a whole number >= 0")
        counts[name] = value
    return ModelUsage(kind, names["provider"], names["model"], **counts)
