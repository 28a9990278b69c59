"""Dispatch a named agent into a room and wait until livekit-server has handed the job to
a worker, creating the dispatch again when the server dropped it.

livekit-server tells an agent worker it is registered before it adds the worker's agent
name to its list of names with workers (``HandshakeAgentWorker`` and then ``registerWorker``
in ``pkg/service/agentservice.go``), and its dispatcher reads that list from a cache kept up
to a minute and cleared by a message sent after the name is added (``getDispatcher`` in
``pkg/agent/client.go``). A dispatch created in between finds no worker: the server logs
``not dispatching agent job since no worker is available`` and never tries it again (checked
in 1.8.4 and 1.13.5). A worker that has just registered is where every test dispatches to,
so the helper watches the server's log for that line and then deletes the dispatch and
creates it again; a dispatch the server handed to a worker (``assigned job to worker``) is
never repeated, so no agent joins twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from livekit import api
from livekit_server import LiveKitServer

DROPPED = "not dispatching agent job since no worker is available"
ASSIGNED = "assigned job to worker"


class _LogFollower:
    """The lines a livekit-server log gets after this object is made."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._offset = path.stat().st_size
        except OSError:
            self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[tuple[str, dict[str, object]]]:
        """(message, fields) of each whole line written since the last call."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        self._offset += len(chunk)
        *whole, self._partial = (self._partial + chunk).split(b"\n")
        out = []
        for raw in whole:
            parts = raw.decode(errors="replace").split("\t")
            if len(parts) >= 5:
                try:
                    fields = json.loads(parts[5]) if len(parts) > 5 else {}
                except ValueError:
                    fields = {}
                out.append((parts[4], fields if isinstance(fields, dict) else {}))
        return out


async def dispatch_agent(
    server: LiveKitServer, agent_name: str, room: str, timeout: float = 15.0
) -> str:
    """Dispatch ``agent_name`` into ``room``; returns the dispatch's id once the server has
    assigned its job to a worker."""
    log = _LogFollower(server.log_path)
    lkapi = server.api_client()
    dropped = 0
    try:
        request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        dispatch_id = (await lkapi.agent_dispatch.create_dispatch(request)).id
        deadline = time.monotonic() + timeout
        while True:
            for message, fields in log.new_lines():
                if fields.get("room") != room:
                    continue
                if message == ASSIGNED:
                    return dispatch_id
                if message == DROPPED and fields.get("agentName") == agent_name:
                    dropped += 1
                    await lkapi.agent_dispatch.delete_dispatch(dispatch_id, room)
                    await asyncio.sleep(0.2)  # the server's cache of names is cleared soon
                    dispatch_id = (await lkapi.agent_dispatch.create_dispatch(request)).id
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"livekit-server did not assign the job of {agent_name!r} in {room!r}"
                    f" to a worker within {timeout} s ({dropped} dispatch(es) dropped for"
                    f" want of a worker)\n{server.log_tail(20)}"
                )
            await asyncio.sleep(0.05)
    finally:
        await lkapi.aclose()
