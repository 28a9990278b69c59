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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobExecutorType
from livekit_server import LiveKitServer

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


class AgentWorker:
    """``async with AgentWorker(server, "agent-name") as worker: ...``; stopped on exit."""

    def __init__(self, server: LiveKitServer, agent_name: str) -> None:
        self.agent_name = agent_name
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
        done, _ = await asyncio.wait(
            {registered, self._run_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
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
        main_loop = self._main_loop
        assert main_loop is not None
        ended: concurrent.futures.Future[float] = concurrent.futures.Future()

        async def on_shutdown(_reason: str) -> None:
            # shutdown callbacks run after the framework has disconnected the room
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                ended.set_result(time.time())

        ctx.add_shutdown_callback(on_shutdown)

        connect_started = time.time()
        await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
        connected = time.time()

        source = rtc.AudioSource(48000, 1)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
            opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await ctx.room.local_participant.publish_track(track, opts)
            await source.capture_frame(rtc.AudioFrame.create(48000, 1, 480))

            me = ctx.room.local_participant
            leave = asyncio.Event()
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
                _leave=leave,
                _ended=ended,
            )
            with self._lock:
                self._live_jobs.append(job)
                if self._closing:
                    leave.set()
            main_loop.call_soon_threadsafe(self._jobs.put_nowait, job)
            await leave.wait()
        finally:
            await source.aclose()
        ctx.shutdown("asked to leave")


def framework_threads() -> list[threading.Thread]:
    """Threads started by livekit-agents that are still alive."""
    return [t for t in threading.enumerate() if t.name in FRAMEWORK_THREAD_NAMES]
