"""Local stand-ins for an LLM and a TTS, as livekit-agents plugins: no network, no weights.

``FakeLLM`` answers every request with the same short reply, streamed word by word after a
pause (``first_token_delay``), so an agent spends a measurable time "thinking".
``FakeTTS`` turns any text into silence: 16-bit mono PCM at 24 kHz, ``ms_per_char``
milliseconds of it per character (at least ``min_ms``), pushed through the framework's
``AudioEmitter`` like a real plugin's audio. An ``AgentSession`` plays that audio in its
room in real time, so the agent is "speaking" for about as long as the silence lasts.

Both report usage through the framework's own metrics (``metrics_collected``): the LLM a
token count per request (each request's counts kept in ``FakeLLM.usages``), the TTS (the
framework, from the text and the frames) characters and audio duration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
    llm,
    tts,
    utils,
)

DEFAULT_REPLY = "Sure, I can help you with that."


class FakeLLM(llm.LLM[Any]):
    """Replies ``reply`` to anything, after ``first_token_delay`` seconds."""

    def __init__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        first_token_delay: float = 0.4,
        token_interval: float = 0.01,
    ) -> None:
        super().__init__()
        self.reply = reply
        self.first_token_delay = first_token_delay
        self.token_interval = token_interval
        self.requests = 0
        # the usage reported at the end of each answer, in order
        self.usages: list[llm.CompletionUsage] = []

    @property
    def model(self) -> str:
        return "fake-llm"

    @property
    def provider(self) -> str:
        return "fake"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> FakeLLMStream:
        self.requests += 1
        return FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class FakeLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        fake = self._llm
        assert isinstance(fake, FakeLLM)
        request_id = utils.shortuuid("fake-llm-")
        await asyncio.sleep(fake.first_token_delay)
        words = fake.reply.split(" ")
        for i, word in enumerate(words):
            token = word if i == 0 else f" {word}"
            delta = llm.ChoiceDelta(role="assistant", content=token)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
            await asyncio.sleep(fake.token_interval)
        prompt_tokens = sum(len((m.text_content or "").split()) for m in self._chat_ctx.messages())
        usage = llm.CompletionUsage(
            completion_tokens=len(words),
            prompt_tokens=prompt_tokens,
            total_tokens=prompt_tokens + len(words),
        )
        fake.usages.append(usage)
        self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))


class FakeTTS(tts.TTS[Any]):
    """Silence for any text: ``ms_per_char`` ms per character, at least ``min_ms``."""

    def __init__(
        self, *, sample_rate: int = 24000, ms_per_char: float = 30.0, min_ms: float = 200.0
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.ms_per_char = ms_per_char
        self.min_ms = min_ms
        # (text, seconds of audio) per synthesis, in order
        self.synthesized: list[tuple[str, float]] = []

    @property
    def model(self) -> str:
        return "fake-tts"

    @property
    def provider(self) -> str:
        return "fake"

    def seconds_for(self, text: str) -> float:
        """How long the audio for ``text`` lasts."""
        return max(self.min_ms, self.ms_per_char * len(text.strip())) / 1000

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> FakeChunkedStream:
        return FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class FakeChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake = self._tts
        assert isinstance(fake, FakeTTS)
        seconds = fake.seconds_for(self.input_text)
        fake.synthesized.append((self.input_text, seconds))
        output_emitter.initialize(
            request_id=utils.shortuuid("fake-tts-"),
            sample_rate=fake.sample_rate,
            num_channels=fake.num_channels,
            mime_type="audio/pcm",
        )
        total = round(seconds * fake.sample_rate)
        chunk = fake.sample_rate // 10  # 100 ms
        pushed = 0
        while pushed < total:
            n = min(chunk, total - pushed)
            output_emitter.push(b"\0\0" * n * fake.num_channels)
            pushed += n
        output_emitter.flush()
