"""The soak's clients spread over several processes (`client_worker.py`), each replaced after
it has been given `per_process` clients; their records gathered here."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from observer.config import LiveKitSettings
from soak.clients import Stay

WORKER = Path(__file__).resolve().parent / "client_worker.py"


@dataclass
class Worker:
    proc: asyncio.subprocess.Process
    given: int = 0
    ended: int = 0
    reader: asyncio.Task[None] | None = None


@dataclass
class ClientPool:
    lk: LiveKitSettings
    processes: int
    per_process: int
    audio: bool = True
    stays: list[Stay] = field(default_factory=list)
    failed: int = 0
    late_joined: int = 0
    started: int = 0  # worker processes started in all
    _workers: list[Worker] = field(default_factory=list)
    _retired: list[Worker] = field(default_factory=list)

    async def start(self) -> None:
        for _ in range(self.processes):
            self._workers.append(await self._spawn())

    @property
    def live(self) -> int:
        """Clients given and not ended (joining, in a room, or leaving)."""
        return sum(w.given - w.ended for w in self._workers + self._retired)

    async def stay(self, identity: str, room: str, kind: str, seconds: float) -> None:
        """Give a client to the worker with the fewest running; replace a worker that has
        had its share (it ends once its clients have)."""
        w = min(self._workers, key=lambda w: w.given - w.ended)
        line = {"identity": identity, "room": room, "kind": kind, "seconds": seconds}
        assert w.proc.stdin is not None
        w.proc.stdin.write((json.dumps(line) + "\n").encode())
        w.given += 1
        if w.given >= self.per_process:
            self._workers.remove(w)
            w.proc.stdin.close()
            self._retired.append(w)
            self._workers.append(await self._spawn())

    async def close(self, timeout_s: float) -> None:
        """End every worker once its clients have ended."""
        for w in self._workers:
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        self._retired += self._workers
        self._workers = []
        readers = [w.reader for w in self._retired if w.reader is not None]
        await asyncio.wait(readers, timeout=timeout_s)
        for w in self._retired:
            if w.proc.returncode is None:
                w.proc.kill()

    async def _spawn(self) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            self.lk.ws_url,
            self.lk.api_key,
            self.lk.api_secret,
            "audio" if self.audio else "no-audio",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        w = Worker(proc)
        w.reader = asyncio.create_task(self._read(w))
        self.started += 1
        return w

    async def _read(self, w: Worker) -> None:
        assert w.proc.stdout is not None
        while line := await w.proc.stdout.readline():
            message = json.loads(line)
            if "stay" in message:
                self.stays.append(Stay(**message["stay"]))
                w.ended += 1
            elif "failed" in message:
                self.failed += 1
                w.ended += 1
            elif "done" in message:
                self.late_joined += message["done"]["late_joined"]
        await w.proc.wait()
        w.ended = w.given  # a worker that died ended its clients with it
