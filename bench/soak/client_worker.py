"""One process of the soak's clients (`python bench/soak/client_worker.py URL KEY SECRET
audio|no-audio`).

It reads one JSON line per client on stdin, `{"identity", "room", "kind", "seconds"}`, joins
it (`Clients.stay`), and writes a JSON line on stdout for each client's end: its own record
(`Stay`) or `{"failed": identity}`. At the end of stdin it waits for its clients, writes
`{"done": {"failed", "late_joined"}}` and exits. Run in several processes, the clients share
the machine's cores; a process that has run its share of clients is replaced, which also
frees what failed connects leave in the rtc SDK (it has no call that frees them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from observer.config import LiveKitSettings
from soak.clients import Clients


async def serve(lk: LiveKitSettings, audio: bool) -> None:
    clients = Clients(lk, audio)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: set[asyncio.Task[None]] = set()

    def say(message: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def one(identity: str, room: str, kind: str, seconds: float) -> None:
        before = len(clients.stays)
        await clients.stay(identity, room, kind, seconds)
        mine = [s for s in clients.stays[before:] if s.identity == identity]
        say({"stay": asdict(mine[0])} if mine else {"failed": identity})

    while line := await reader.readline():
        c = json.loads(line)
        task = asyncio.ensure_future(one(c["identity"], c["room"], c["kind"], c["seconds"]))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(running)
    if clients.late:
        await asyncio.wait(clients.late, timeout=60)
    say({"done": {"failed": clients.failed, "late_joined": clients.late_joined}})


def main() -> None:
    from observer.daemon.sdk_internals import start_native_core_or_fall_back

    start_native_core_or_fall_back()
    url, key, secret, audio = sys.argv[1:5]
    asyncio.run(serve(LiveKitSettings(url, key, secret), audio == "audio"))
    sys.stdout.flush()
    import os

    os._exit(0)  # skip the rtc SDK's exit-time teardown


if __name__ == "__main__":
    main()
