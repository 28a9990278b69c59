"""Agent workers of the agents frameworks, each run as a real worker process in a process
group of its own: livekit-agents for Python (``agents_worker_process.py``, with this
interpreter or the one ``AGENTS_PYTHON`` names) and ``@livekit/agents`` for Node
(``node_agent/agent.js``; ``scripts/ensure-node-agent.sh`` installs its packages).

``async with FrameworkWorker.python(server, "name") as worker`` starts a worker and waits
until the server has registered it; ``await worker.dispatch(room)`` dispatches its agent
through the agent dispatch API and returns what the agent wrote of itself once in the room
(``AgentJoined``); ``await worker.leave(room)`` asks it to leave and returns its times. On
exit the whole process group is stopped (SIGTERM, then SIGKILL), job processes included.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from agent_dispatch import dispatch_agent
from livekit_server import LiveKitServer, free_tcp_port

TESTS = Path(__file__).parent
NODE_AGENT = TESTS / "node_agent"
PYTHON_WORKER = TESTS / "agents_worker_process.py"
REGISTER_TIMEOUT_S = 60.0  # a Node worker loads its framework first: seconds on a busy machine


def agents_python() -> str:
    """The interpreter Python workers run with: ``AGENTS_PYTHON`` (another release of
    livekit-agents, in a virtualenv of its own), else this one."""
    return os.environ.get("AGENTS_PYTHON") or sys.executable


def python_agents_version(python: str) -> tuple[int, ...]:
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('livekit-agents'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    return tuple(int(p) for p in out.split(".")[:3] if p.isdigit())


@dataclass(frozen=True)
class AgentJoined:
    """What the agent wrote once in its room, with its own wall-clock times."""

    framework: str
    version: str
    job_agent_name: str
    room: str
    room_sid: str
    identity: str
    sid: str
    attributes: dict[str, str]
    connect_started: float
    connected: float
    usage: dict[str, int]  # what its models counted (voice mode), else empty


@dataclass(frozen=True)
class AgentLeft:
    leave_requested: float
    disconnected: float


class FrameworkWorker:
    def __init__(
        self,
        server: LiveKitServer,
        agent_name: str,
        command: list[str],
        env: dict[str, str],
        directory: Path,
    ) -> None:
        self.server = server
        self.agent_name = agent_name
        self.command = command
        self.extra_env = env
        self.dir = directory  # the worker's log and events, kept with the test's files
        self.log_path = self.dir / "worker.log"
        self.events_path = self.dir / "events.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def python(
        cls, server: LiveKitServer, agent_name: str, directory: Path, *, voice: bool
    ) -> FrameworkWorker:
        env = {"PYTHONPATH": str(TESTS), "AGENT_VOICE": "1" if voice else "0"}
        return cls(server, agent_name, [agents_python(), str(PYTHON_WORKER)], env, directory)

    @classmethod
    def node(cls, server: LiveKitServer, agent_name: str, directory: Path) -> FrameworkWorker:
        node = shutil.which("node")
        if node is None or not (NODE_AGENT / "node_modules" / "@livekit" / "agents").is_dir():
            raise AssertionError(
                "no node, or no tests/node_agent/node_modules: run scripts/ensure-node-agent.sh"
            )
        # pino's JSON lines; the job processes inherit the environment. Its health-check
        # server gets a free port: in `start` mode the framework takes 8081 for a 0, and two
        # workers at once would collide on it
        env = {"AGENT_HTTP_PORT": str(free_tcp_port())}
        command = [node, str(NODE_AGENT / "agent.js"), "start"]
        return cls(server, agent_name, command, env, directory)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self.dir.mkdir(parents=True)
        env = {
            **os.environ,
            **self.extra_env,
            "LIVEKIT_URL": self.server.ws_url,
            "LIVEKIT_API_KEY": self.server.api_key,
            "LIVEKIT_API_SECRET": self.server.api_secret,
            "AGENT_NAME": self.agent_name,
            "AGENT_EVENTS_DIR": str(self.dir),
        }
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.to_thread(
                subprocess.Popen,
                self.command,
                cwd=self.command[1].rsplit("/", 1)[0],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: its jobs go with it
            )
        await self._until(self._registered, "the worker did not register", REGISTER_TIMEOUT_S)

    def _registered(self) -> bool:
        if any(e["event"] == "registered" for e in self.events()):
            return True
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "registered worker" in text  # the Node worker's log line

    def stop(self) -> None:
        """SIGTERM to the worker's process group, SIGKILL to what is left after 10 s."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        # whatever is left of the group (a job process that outlived its worker) goes now
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)

    async def __aenter__(self) -> FrameworkWorker:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the agent -------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def _until(self, pred: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{what}: worker exited {self.proc.returncode}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout} s\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def _event(self, kind: str, room: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == kind and e["room"] == room), None)

    async def dispatch(self, room: str, timeout: float = 75.0) -> AgentJoined:
        """Dispatch the agent into ``room``; returns once it is in the room (with voice,
        once it has spoken). A job process of the Node worker loads its framework first:
        over 10 s on a loaded machine."""
        await dispatch_agent(self.server, self.agent_name, room, timeout)
        await self._until(lambda: self._event("joined", room), "the agent did not join", timeout)
        e = self._event("joined", room)
        assert e is not None
        return AgentJoined(**{k: e.get(k, {}) for k in AgentJoined.__dataclass_fields__})

    async def leave(self, room: str, timeout: float = 15.0) -> AgentLeft:
        (self.dir / f"leave-{room}").touch()
        await self._until(lambda: self._event("left", room), "the agent did not leave", timeout)
        e = self._event("left", room)
        assert e is not None
        return AgentLeft(e["leave_requested"], e["disconnected"])
