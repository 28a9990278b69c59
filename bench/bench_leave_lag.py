"""Benchmark: how late a leave reaches a watching participant, by how long the agent stayed.

Starts a real livekit-server (the binary of LIVEKIT_SERVER_BIN, or --binary, or the
install script's default) with a webhook to this script, puts a user in a room to keep it
open and a participant with the observer's own token (hidden, agent grant, no rights) in it,
then connects short-lived agents one after another in a few lanes: each publishes a
microphone track, sends audio frames while it stays (--audio), and leaves. The reference for each
leave is the server's own log line "participant closing" (its millisecond timestamp); the
script reports, per stay, how much later the watcher's `participant_disconnected` came, and
how the `participant_left` webhook's createdAt (whole seconds) stands to the same line.

    .venv/bin/python bench/bench_leave_lag.py --sessions 48 --lanes 3 --audio one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from aiohttp import web
from compat import server_version
from livekit import api, rtc
from livekit_server import LiveKitServer, default_binary, free_tcp_port

from observer.config import LiveKitSettings
from observer.daemon.watcher import observer_token
from observer.simulate import agent_token, user_token

STAYS_S = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
# livekit-server's console log: "2026-12-05T11:22:33.123Z\tINFO\tlivekit\t...\tparticipant
# closing\t{...json...}"; the JSON carries pID (the participant's sid)
LOG_LINE = re.compile(r"^(\S+)\s.*\bparticipant closing\b.*?(\{.*\})\s*$")


@dataclass
class Leave:
    sid: str
    identity: str
    stay_s: float
    closing_at: float | None = None  # the server's log line
    seen_at: float | None = None  # the watcher's participant_disconnected
    webhook_created_at: int | None = None  # participant_left's createdAt, whole seconds
    webhook_at: float | None = None  # when the webhook arrived here
    reason: str = ""


def closing_times(log: Path) -> dict[str, float]:
    """sid -> epoch seconds of the server's "participant closing" line."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m is None:
            continue
        try:
            fields = json.loads(m.group(2))
            at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        sid = fields.get("pID") or fields.get("participantID")
        if sid:
            out.setdefault(str(sid), at)
    return out


async def webhook_app(
    server: LiveKitServer, left: dict[str, tuple[int, float]], port: int
) -> web.AppRunner:
    """Receives the server's webhooks: sid -> (createdAt, arrival) of each participant_left
    (often before its agent's disconnect() returned)."""
    receiver = api.WebhookReceiver(api.TokenVerifier(server.api_key, server.api_secret))

    async def hook(request: web.Request) -> web.Response:
        body = await request.text()
        event = receiver.receive(body, request.headers.get("Authorization", ""))
        if event.event == "participant_left":
            left.setdefault(event.participant.sid, (int(event.created_at), time.time()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def one_agent(lk: LiveKitSettings, room: str, n: int, stay_s: float, audio: str) -> Leave:
    agent = rtc.Room()
    await agent.connect(
        lk.ws_url,
        agent_token(lk, f"lag-agent-{n}", room, "lag-bench"),
        rtc.RoomOptions(auto_subscribe=False),
    )
    started = time.monotonic()
    leave = Leave(agent.local_participant.sid, f"lag-agent-{n}", stay_s)
    if audio != "none":
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await agent.local_participant.publish_track(track, opts)
        frame = rtc.AudioFrame.create(48000, 1, 960)
        await source.capture_frame(frame)
        while audio == "stream" and time.monotonic() - started < stay_s:
            await source.capture_frame(frame)  # paced by the source: 20 ms per frame
    await asyncio.sleep(max(0.0, stay_s - (time.monotonic() - started)))
    await agent.disconnect()
    return leave


async def main(args: argparse.Namespace) -> None:
    binary = Path(args.binary) if args.binary else default_binary()
    port = free_tcp_port()
    server = LiveKitServer(
        binary=binary,
        empty_timeout=60,
        departure_timeout=20,
        webhook_urls=[f"http://127.0.0.1:{port}/webhook"],
    )
    leaves: dict[str, Leave] = {}
    hooks: dict[str, tuple[int, float]] = {}
    with server:
        runner = await webhook_app(server, hooks, port)
        lk = LiveKitSettings(server.ws_url, server.api_key, server.api_secret)
        room = "lag"
        async with server.api_client() as lkapi:
            await lkapi.room.create_room(api.CreateRoomRequest(name=room))
        user = rtc.Room()
        await user.connect(server.ws_url, user_token(lk, "lag-user", room))
        watcher = rtc.Room()
        seen: dict[str, tuple[float, int]] = {}

        def on_left(p: rtc.RemoteParticipant) -> None:
            seen.setdefault(p.sid, (time.time(), int(p.disconnect_reason)))

        watcher.on("participant_disconnected", on_left)
        await watcher.connect(
            server.ws_url,
            observer_token(server.api_key, server.api_secret, "lag-watcher", room),
            rtc.RoomOptions(auto_subscribe=False),
        )
        queue = [STAYS_S[i % len(STAYS_S)] for i in range(args.sessions)]
        counter = iter(range(args.sessions))

        async def lane() -> None:
            while queue:
                stay_s = queue.pop(0)
                leave = await one_agent(lk, room, next(counter), stay_s, args.audio)
                leaves[leave.sid] = leave
                await asyncio.sleep(0.3)

        await asyncio.gather(*(lane() for _ in range(args.lanes)))
        await asyncio.sleep(5)  # a batched leave comes within 3 s; webhooks within a few
        await watcher.disconnect()
        await user.disconnect()
        await runner.cleanup()
    closing = closing_times(server.log_path)
    version = server_version(binary)
    server.cleanup()
    for leave in leaves.values():
        leave.closing_at = closing.get(leave.sid)
        if leave.sid in hooks:
            leave.webhook_created_at, leave.webhook_at = hooks[leave.sid]
        if leave.sid in seen:
            leave.seen_at, reason = seen[leave.sid]
            leave.reason = rtc.DisconnectReason.Name(reason) if reason else ""
    report(f"{version}, audio {args.audio}", list(leaves.values()))


def report(version: str, leaves: list[Leave]) -> None:
    print(f"livekit-server {version}: {len(leaves)} agent sessions (cpus: {os.cpu_count()})")
    print(
        "stay_s  n  unseen  rtc_lag_ms(median/max)  late>500ms  webhook: n  "
        "createdAt-closing_ms(min/max)  arrival_lag_ms(max)"
    )
    for stay_s in sorted({x.stay_s for x in leaves}):
        group = [x for x in leaves if x.stay_s == stay_s and x.closing_at is not None]
        lags = [(x.seen_at - x.closing_at) * 1000 for x in group if x.seen_at is not None]
        hooks = [x for x in group if x.webhook_created_at is not None]
        created = [(x.webhook_created_at - x.closing_at) * 1000 for x in hooks]  # type: ignore[operator]
        arrival = [(x.webhook_at - x.closing_at) * 1000 for x in hooks]  # type: ignore[operator]
        print(
            f"{stay_s:6.1f} {len(group):2d} {len(group) - len(lags):7d}  "
            f"{_stat(lags):>22}  {sum(lag > 500 for lag in lags):10d}  "
            f"{len(hooks):10d}  {_minmax(created):>29}  {_max(arrival):>19}"
        )
    missing = [x.sid for x in leaves if x.closing_at is None]
    if missing:
        print(f"no 'participant closing' line for {len(missing)} sessions")


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f}/{max(values):.0f}"


def _minmax(values: list[float]) -> str:
    return f"{min(values):.0f}/{max(values):.0f}" if values else "-"


def _max(values: list[float]) -> str:
    return f"{max(values):.0f}" if values else "-"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=48)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument(
        "--audio",
        choices=("stream", "one", "none"),
        default="stream",
        help="what each agent publishes: a microphone it feeds while it stays (as a voice"
        " agent does), a microphone fed one frame (as `observer simulate` does), or nothing",
    )
    parser.add_argument("--binary", help="livekit-server binary (default: LIVEKIT_SERVER_BIN)")
    asyncio.run(main(parser.parse_args()))
