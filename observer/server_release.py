"""Which livekit-server release each node of LIVEKIT_URL runs.

Neither the server API nor the rtc SDK tells: the SDK keeps the join response's
`server_info` to itself. The agent-worker handshake does: the observer opens the server's
`/agent` socket, registers as a worker under a name no dispatch uses (so it is never given
a job), reads `RegisterWorkerResponse.server_info` and closes at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from livekit import api
from livekit.protocol import agent

from observer.config import LiveKitSettings, ws_url_of
from observer.core import releases
from observer.errors import CommandError

log = logging.getLogger(__name__)

PROBE_AGENT_NAME = "lk-observer-release-probe"


@dataclass(frozen=True)
class NodeRelease:
    url: str  # as LIVEKIT_URL names it
    version: str = ""  # ServerInfo.version, "" when the node did not say
    node_id: str = ""
    error: str = ""  # why it could not be asked

    @property
    def release(self) -> releases.Release | None:
        return releases.parse(self.version)


async def ask(url: str, lk: LiveKitSettings, timeout_s: float) -> NodeRelease:
    """One node's release, from its agent-worker handshake."""
    token = api.AccessToken(lk.api_key, lk.api_secret).with_grants(api.VideoGrants(agent=True))
    headers = {"Authorization": f"Bearer {token.to_jwt()}"}
    req = agent.WorkerMessage()
    req.register.type = agent.JobType.JT_ROOM
    req.register.agent_name = PROBE_AGENT_NAME
    req.register.allowed_permissions.hidden = True
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.ws_connect(ws_url_of(url).rstrip("/") + "/agent", headers=headers) as ws,
        ):
            await ws.send_bytes(req.SerializeToString())
            msg = agent.ServerMessage()
            msg.ParseFromString(await ws.receive_bytes(timeout=timeout_s))
    except (aiohttp.ClientError, TimeoutError, OSError, TypeError, ValueError) as exc:
        # TypeError: the server closed the socket instead of answering
        return NodeRelease(url, error=f"{type(exc).__name__}: {exc}".strip().rstrip(":"))
    info = msg.register.server_info
    return NodeRelease(url, version=info.version, node_id=info.node_id)


async def ask_all(lk: LiveKitSettings, timeout_s: float = 5.0) -> list[NodeRelease]:
    """Every node of LIVEKIT_URL, at once."""
    return list(await asyncio.gather(*(ask(u, lk, timeout_s) for u in lk.urls)))


def all_keep_kinds(nodes: list[NodeRelease]) -> bool:
    """Whether every node is known to keep a participant's kind claim across a full
    reconnect (an unknown release is taken to be current): then the claim alone says who
    is an agent (see `participant_kind`)."""
    return all(releases.supports(n.release, "kind_kept") for n in nodes)


def at_start(nodes: list[NodeRelease]) -> None:
    """Log what each release seen supports, once per release; refuse (exit 2) a release
    that would let the observer create rooms."""
    seen: set[str] = set()
    for n in nodes:
        if n.error or not n.version:
            log.warning(
                "livekit release unknown; taken to support all the observer uses",
                extra={"url": n.url, "error": n.error},
            )
            continue
        if n.version in seen:
            continue
        seen.add(n.version)
        log.info(
            "livekit release",
            extra={
                "url": n.url,
                "node": n.node_id,
                "version": n.version,
                "supports": "; ".join(releases.summary(n.version)),
            },
        )
        if n.release is not None and not releases.safe(n.release):
            raise CommandError(releases.refusal(n.release))
