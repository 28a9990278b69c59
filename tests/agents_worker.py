"""A real livekit-agents worker, run inside the test's event loop.

``AgentWorker`` registers an ``AgentServer`` (livekit-agents) with a test livekit-server
under an explicit agent name, so the server hands it jobs only through the agent dispatch
API. Jobs run on threads (``JobExecutorType.THREAD``), each with its own event loop, so
nothing is forked and nothing outlives the ``async with`` block.

The agent is as small as an agent can be and needs no models or inference services: it
connects, publishes one silent audio track (as voice agents do; a publisher's join and
leave reach other participants at once instead of being batched) and stays until the test
calls ``DispatchedJob.leave()``; then it shuts its job down and the framework disconnects
it from the room.

``AgentWorker(server, name, voice=True)`` runs a voice agent instead: a real
``AgentSession`` in the job's room, with the local models of ``fake_models`` (an LLM that
answers after a pause, a TTS that speaks silence) and no audio input. The framework
publishes the agent's audio and sets its ``lk.agent.state`` attribute as it goes from
listening to thinking to speaking; the test drives it with ``await job.say(text)`` and
``await job.reply(prompt)``, and reads the states the session went through, with the
agent's own wall-clock times, in ``job.agent_states()``.

Its session runs without the framework's session host unless the worker is made with
``session_host=True``. The host (on by default in a real agent) sends the session's events
to the room as ``lk.agent.session`` byte streams, to every participant: among them its
model usage totals, again after every LLM answer and every TTS synthesis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from agent_dispatch import dispatch_agent
from fake_models import FakeLLM, FakeTTS
from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    AgentStateChangedEvent,
    AutoSubscribe,
    JobContext,
    JobExecutorType,
    room_io,
)
from livekit.agents.llm import ChatMessage
from livekit.agents.voice import SpeechHandle
from livekit_server import LiveKitServer

T = TypeVar("T")

#: Environment variables the worker sets or reads: restored when the worker stops.
_ENV_KEYS = (
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "SSL_CERT_FILE",
    "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE",
)

#: Threads livekit-agents may start in this process: the THREAD executor's job threads
#: (livekit.agents.ipc) and the default load function's CPU monitor (livekit.agents.worker).
FRAMEWORK_THREAD_NAMES = ("job_thread_runner", "worker_cpu_load_monitor")

#: The participant attribute livekit-agents keeps the agent's state in.
AGENT_STATE_ATTRIBUTE = "lk.agent.state"


@dataclass(frozen=True)
class StateChange:
    """The voice agent's session entered ``state`` at ``at`` (its time.time())."""

    at: float
    state: str


@dataclass(frozen=True)
class Speech:
    """One ``say`` or ``reply``: asked at ``asked``, played out and back to listening at
    ``done`` (the agent's time.time())."""

    asked: float
    done: float
    text: str  # what the agent said


@dataclass
class DispatchedJob:
    """One job the worker ran: what the agent saw of itself, with wall-clock times."""

    job_id: str
    dispatch_id: str
    job_agent_name: str
    room_name: str
    room_sid: str
    identity: str
    sid: str
    kind: int
    attributes: dict[str, str]
    connect_started: float
    connected: float
    _job_loop: asyncio.AbstractEventLoop = field(repr=False)
    _leave: asyncio.Event = field(repr=False)
    _ended: concurrent.futures.Future[float] = field(repr=False)
    leave_requested: float | None = None
    # voice mode only: the agent's session, its models and the states it went through
    _session: AgentSession[None] | None = field(default=None, repr=False)
    llm: FakeLLM | None = field(default=None, repr=False)
    tts: FakeTTS | None = field(default=None, repr=False)
    _states: list[StateChange] = field(default_factory=list, repr=False)

    async def leave(self, timeout: float = 15.0) -> float:
        """Ask the agent to end its job; returns once it is disconnected (its time.time())."""
        self.leave_requested = time.time()
        self._ask_to_leave()
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._ended)), timeout)

    def _ask_to_leave(self) -> None:
        with contextlib.suppress(RuntimeError):  # the job's loop is already closed
            self._job_loop.call_soon_threadsafe(self._leave.set)

    @property
    def disconnected(self) -> float | None:
        """time.time() right after the framework disconnected the agent's room."""
        return self._ended.result() if self._ended.done() else None

    # -- voice mode --------------------------------------------------------------

    async def say(self, text: str, timeout: float = 15.0) -> Speech:
        """Voice mode: the agent says ``text`` (speaking); returns once it has played out
        and the agent is listening again."""
        return await self._on_job_loop(self._speak(lambda s: s.say(text)), timeout)

    async def reply(self, prompt: str, timeout: float = 15.0) -> Speech:
        """Voice mode: the agent answers ``prompt`` through its LLM (thinking, then
        speaking); returns once the answer has played out and the agent is listening."""
        return await self._on_job_loop(
            self._speak(lambda s: s.generate_reply(user_input=prompt)), timeout
        )

    def agent_states(self) -> list[StateChange]:
        """Voice mode: the states the agent's session went through, first "initializing"
        from when the session was made."""
        return list(self._states)

    def seconds_in_states(self, until: float) -> dict[str, float]:
        """Voice mode: seconds the agent spent in each state, by its own clock, up to
        ``until`` (a time.time())."""
        out: dict[str, float] = {}
        changes = self.agent_states()
        for change, after in zip(changes, [*changes[1:], None], strict=True):
            end = min(until, after.at) if after is not None else until
            if end > change.at:
                out[change.state] = out.get(change.state, 0.0) + end - change.at
        return out

    async def _speak(self, start: Callable[[AgentSession[None]], SpeechHandle]) -> Speech:
        """Runs on the job's loop."""
        session = self._session
        if session is None:
            raise RuntimeError("not a voice agent: start the worker with voice=True")
        asked = time.time()
        handle = await start(session)
        if (error := handle.exception()) is not None:
            raise error
        deadline = time.monotonic() + 5
        while session.agent_state != "listening":
            if time.monotonic() > deadline:
                raise AssertionError(f"agent still {session.agent_state} after its speech")
            await asyncio.sleep(0.01)
        said = [m.text_content or "" for m in handle.chat_items if isinstance(m, ChatMessage)]
        text = "".join(said)
        return Speech(asked=asked, done=time.time(), text=text)

    async def _on_job_loop(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._job_loop)
        except RuntimeError:  # the job's loop is closed: the agent has left
            coro.close()
            raise
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)


class AgentWorker:
    """``async with AgentWorker(server, "agent-name") as worker: ...``; stopped on exit."""

    def __init__(
        self,
        server: LiveKitServer,
        agent_name: str,
        *,
        voice: bool = False,
        session_host: bool = False,
    ) -> None:
        self.agent_name = agent_name
        self.voice = voice
        self.session_host = session_host
        self._server = server
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._jobs: asyncio.Queue[DispatchedJob] = asyncio.Queue()
        self._run_task: asyncio.Task[None] | None = None
        self._saved_env: dict[str, str | None] = {}
        # jobs run on other threads: this lock guards the two fields below
        self._lock = threading.Lock()
        self._live_jobs: list[DispatchedJob] = []
        self._closing = False
        self.agent_server = AgentServer(
            job_executor_type=JobExecutorType.THREAD,
            ws_url=server.ws_url,
            api_key=server.api_key,
            api_secret=server.api_secret,
            # health-check HTTP server: loopback, any free port
            host="127.0.0.1",
            port=0,
            # no job thread kept ready: each job gets a new one (~10 ms to start)
            num_idle_processes=0,
            # the default load function starts a CPU sampling thread that never ends
            load_fnc=lambda: 0.0,
            # no forkserver: the THREAD executor starts no processes, and "forkserver"
            # would set this process's global forkserver preload list
            multiprocessing_context="spawn",
            shutdown_process_timeout=5.0,
            drain_timeout=5,
            max_retry=2,
        )
        self.agent_server.rtc_session(self._entrypoint, agent_name=agent_name)

    # -- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> str:
        """Run the worker and wait until the server has registered it; returns its id."""
        self._main_loop = asyncio.get_running_loop()
        self._saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
        # the framework's warm-up (livekit.agents.ipc._preload) would otherwise load the
        # local VAD and end-of-turn models into this process; this agent uses neither
        os.environ["LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"] = "0"
        registered: asyncio.Future[str] = self._main_loop.create_future()

        def on_registered(worker_id: str, _server_info: Any) -> None:
            if not registered.done():
                registered.set_result(worker_id)

        self.agent_server.on("worker_registered", on_registered)
        self._run_task = asyncio.create_task(self.agent_server.run(devmode=False))
        waiters: set[asyncio.Future[Any]] = {registered, self._run_task}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if registered not in done:
            await self.stop()
            raise AssertionError(f"agent worker did not register within {timeout}s")
        return registered.result()

    async def stop(self) -> None:
        """Stop the worker (ending any job still running) and restore the environment."""
        with self._lock:
            self._closing = True
            live = list(self._live_jobs)
        for job in live:  # else the framework waits 15 s for each entrypoint to return
            job._ask_to_leave()
        try:
            await self.agent_server.aclose()
            if self._run_task is not None:
                await asyncio.wait_for(self._run_task, 15)
            # a job thread signals its end just before it returns: let it return (<= 5 s)
            for _ in range(500):
                if not framework_threads():
                    break
                await asyncio.sleep(0.01)
        finally:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_env = {}

    async def __aenter__(self) -> AgentWorker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- jobs ------------------------------------------------------------------

    async def next_job(self, timeout: float = 15.0) -> DispatchedJob:
        """The next job whose agent has connected to its room and published its track."""
        return await asyncio.wait_for(self._jobs.get(), timeout)

    async def _entrypoint(self, ctx: JobContext) -> None:
        """Runs on a job thread, in that thread's event loop."""
        ended: concurrent.futures.Future[float] = concurrent.futures.Future()

        async def on_shutdown(_reason: str) -> None:
            # shutdown callbacks run after the framework has disconnected the room
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                ended.set_result(time.time())

        ctx.add_shutdown_callback(on_shutdown)

        connect_started = time.time()
        await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
        connected = time.time()

        if self.voice:
            await self._run_voice_agent(ctx, ended, connect_started, connected)
            return

        source = rtc.AudioSource(48000, 1)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
            opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await ctx.room.local_participant.publish_track(track, opts)
            await source.capture_frame(rtc.AudioFrame.create(48000, 1, 480))
            job = await self._dispatched(ctx, ended, connect_started, connected)
            await job._leave.wait()
        finally:
            await source.aclose()
        ctx.shutdown("asked to leave")

    async def _run_voice_agent(
        self,
        ctx: JobContext,
        ended: concurrent.futures.Future[float],
        connect_started: float,
        connected: float,
    ) -> None:
        """The voice agent's job: an ``AgentSession`` with local models, no audio input."""
        fake_llm, fake_tts = FakeLLM(), FakeTTS()
        session: AgentSession[None] = AgentSession(
            llm=fake_llm,
            tts=fake_tts,
            vad=None,
            turn_handling={"turn_detection": "manual", "interruption": {"enabled": False}},
            user_away_timeout=None,
        )
        states = [StateChange(time.time(), session.agent_state)]  # "initializing"

        def on_state(ev: AgentStateChangedEvent) -> None:
            states.append(StateChange(ev.created_at, ev.new_state))

        session.on("agent_state_changed", on_state)
        try:
            await session.start(
                Agent(instructions="You are a helpful voice assistant."),
                room=ctx.room,
                room_options=room_io.RoomOptions(
                    audio_input=False,
                    text_input=False,
                    # the test's caller may leave; the agent stays until asked to go
                    close_on_disconnect=False,
                ),
                record=False,
                session_host=self.session_host,
            )
            # linked to a participant, its audio track published, "listening" set
            await asyncio.wait_for(session.room_io.wait_for_ready(), 15)
            me = ctx.room.local_participant
            deadline = time.monotonic() + 5
            while me.attributes.get(AGENT_STATE_ATTRIBUTE) != session.agent_state:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{AGENT_STATE_ATTRIBUTE} not set: {me.attributes}")
                await asyncio.sleep(0.01)
            job = await self._dispatched(
                ctx,
                ended,
                connect_started,
                connected,
                _session=session,
                llm=fake_llm,
                tts=fake_tts,
                _states=states,
            )
            await job._leave.wait()
        finally:
            session.off("agent_state_changed", on_state)
            await session.aclose()
        ctx.shutdown("asked to leave")

    async def _dispatched(
        self,
        ctx: JobContext,
        ended: concurrent.futures.Future[float],
        connect_started: float,
        connected: float,
        **voice: Any,
    ) -> DispatchedJob:
        """The job, handed to the test: the agent is in the room and ready."""
        assert self._main_loop is not None
        me = ctx.room.local_participant
        job = DispatchedJob(
            job_id=ctx.job.id,
            dispatch_id=ctx.job.dispatch_id,
            job_agent_name=ctx.job.agent_name,
            room_name=ctx.room.name,
            room_sid=await ctx.room.sid,
            identity=me.identity,
            sid=me.sid,
            kind=me.kind,
            attributes=dict(me.attributes),
            connect_started=connect_started,
            connected=connected,
            _job_loop=asyncio.get_running_loop(),
            _leave=asyncio.Event(),
            _ended=ended,
            **voice,
        )
        with self._lock:
            self._live_jobs.append(job)
            if self._closing:
                job._leave.set()
        self._main_loop.call_soon_threadsafe(self._jobs.put_nowait, job)
        return job


def framework_threads() -> list[threading.Thread]:
    """Threads started by livekit-agents that are still alive."""
    return [t for t in threading.enumerate() if t.name in FRAMEWORK_THREAD_NAMES]


async def dispatch(server: LiveKitServer, worker: AgentWorker, room: str) -> DispatchedJob:
    """Dispatch the worker's agent into ``room``; returns once the agent is in the room
    (with ``voice``, once it is listening)."""
    dispatch_id = await dispatch_agent(server, worker.agent_name, room)
    job = await worker.next_job(timeout=15)
    assert job.dispatch_id == dispatch_id
    return job
