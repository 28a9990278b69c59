"""Benchmark: one `observer run` watching a fleet of rooms.

Runs livekit-server and the daemon as their own processes on this machine, rooms created
through the API and held open by a long empty_timeout (nobody inside), and prints:

- settling: seconds from the daemon's start until it is inside every room;
- idle: the daemon's CPU (% of one core, median of 3 windows), RSS, open fds per room, and
  livekit-server's CPU with and without the daemon;
- room_started webhook -> the daemon inside a new room (p50, p95);
- churn: real agents (rtc clients publishing audio) joining and leaving at a set rate over
  the rooms; leave -> row (the client's disconnect call to the row's write, p50/p95), lost;
- cold start: the daemon killed while agents stay, started again: seconds to be inside
  every room again, and whether the open sessions continued (no gap rows).

    .venv/bin/python bench/bench_fleet.py --rooms 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp
from livekit import api, rtc
from livekit_server import LiveKitServer, free_tcp_port
from soak.measure import cpu_s, cpu_s_one, family, rss_mib
from soak.measure import open_files as fds

from observer.config import LiveKitSettings
from observer.daemon.watcher import room_options
from observer.db.reads import SessionFilter
from observer.db.store import Store
from observer.simulate import agent_token


def fd_kinds(pid: int) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for p in family(pid):
        for fd in os.listdir(f"/proc/{p}/fd"):
            try:
                kind = os.readlink(f"/proc/{p}/fd/{fd}").split(":")[0]
            except OSError:
                continue
            if kind.startswith("/"):
                kind = "file"
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def cpu_pct(pid: int, seconds: float) -> float:
    c0, w0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - w0) * 100


async def metric(port: int, name: str) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_watching(port: int, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if await metric(port, "observer_rooms_watched") >= n:
                return time.monotonic() - t0
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.25)
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def connect_agent(lk: LiveKitSettings, room: str, identity: str) -> rtc.Room:
    """A real agent: an rtc client with the agent kind that publishes audio (so the server
    announces its join and leave at once, not batched)."""
    r = rtc.Room()
    await r.connect(lk.ws_url, agent_token(lk, identity, room, "bench"), room_options(10))
    try:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await r.local_participant.publish_track(track, opts)
    except BaseException:
        await r.disconnect()
        raise
    return r


async def main(args: argparse.Namespace) -> None:
    http_port = free_tcp_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LiveKitServer(
            empty_timeout=3600,
            departure_timeout=3600,
            webhook_urls=[f"http://127.0.0.1:{http_port}/webhook"],
        ) as server,
    ):
        lk = LiveKitSettings(server.ws_url, server.api_key, server.api_secret)
        db = f"sqlite:///{tmp}/bench.db"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))},
            "LIVEKIT_URL": server.ws_url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "OBSERVER_DATABASE_URL": db,
            "OBSERVER_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "OBSERVER_POLL_INTERVAL_S": "5",
            "OBSERVER_LOG_LEVEL": args.log_level,
            "OBSERVER_ROOM_PROCESSES": str(args.processes),
        }
        subprocess.run(
            [sys.executable, "-m", "observer", "migrate"], env=env, check=True, capture_output=True
        )
        lkapi = server.api_client()
        server_pid = server._proc.pid  # type: ignore[union-attr]
        n = args.rooms
        names = [f"fleet-{i}" for i in range(n)]
        for i in range(0, n, 50):
            await asyncio.gather(
                *(lkapi.room.create_room(api.CreateRoomRequest(name=x)) for x in names[i : i + 50])
            )
        await asyncio.sleep(3)
        server_alone = statistics.median([await cpu_pct(server_pid, 5) for _ in range(3)])

        def start() -> subprocess.Popen[bytes]:
            log = open(f"{tmp}/daemon.log", "ab")
            return subprocess.Popen(
                [sys.executable, "-m", "observer", "run"], env=env, stdout=log, stderr=log
            )

        daemon = start()
        settle = await wait_watching(http_port, n, 300)
        print(f"machine: {os.cpu_count()} cores; rooms: {n}; room processes: {args.processes}")
        print(f"settling: {settle:.1f} s to be inside all {n} rooms")
        await asyncio.sleep(args.settle_s)
        procs = family(daemon.pid)
        before = {p: cpu_s_one(p) for p in procs}
        idle = [await cpu_pct(daemon.pid, args.window_s) for _ in range(3)]
        spent = {p: (cpu_s_one(p) - before[p]) / (3 * args.window_s) * 100 for p in procs}
        with_obs = statistics.median([await cpu_pct(server_pid, 5) for _ in range(3)])
        print(
            f"idle: observer CPU {statistics.median(idle):.1f} % of a core "
            f"(windows {', '.join(f'{x:.1f}' for x in idle)}); RSS {rss_mib(daemon.pid):.0f} MiB; "
            f"{fds(daemon.pid)} fds = {fds(daemon.pid) / n:.2f} per room"
        )
        print(f"  fds by kind: {fd_kinds(daemon.pid)}")
        print(
            "  CPU by process: daemon "
            + ", rooms ".join(f"{spent[p]:.1f} %" for p in procs)
            + " (the daemon, then each room process)"
        )
        print(
            f"livekit-server CPU: {server_alone:.1f} % without the observer, "
            f"{with_obs:.1f} % with it"
        )

        # room_started webhook -> observer inside
        lat = []
        ident = "lk-observer-"
        for i in range(args.new_rooms):
            name = f"fresh-{i}"
            t0 = time.monotonic()
            await lkapi.room.create_room(api.CreateRoomRequest(name=name))
            while time.monotonic() - t0 < 10:
                ps = await lkapi.room.list_participants(api.ListParticipantsRequest(room=name))
                if any(p.identity.startswith(ident) for p in ps.participants):
                    lat.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
        print(
            f"room created -> observer inside ({len(lat)}/{args.new_rooms}): "
            f"p50 {pct(lat, 0.5) * 1000:.0f} ms, p95 {pct(lat, 0.95) * 1000:.0f} ms"
        )
        total_rooms = n + args.new_rooms

        # cold start with agents staying
        store = Store(db)
        stayers = []
        for i in range(args.stayers):
            stayers.append(
                await connect_agent(lk, names[i * (n // max(1, args.stayers))], f"stay-{i}")
            )
        await asyncio.sleep(2)
        for p in family(daemon.pid):  # as systemd kills the whole unit
            os.kill(p, signal.SIGKILL)
        daemon.wait()
        await asyncio.sleep(2)
        daemon = start()
        cold = await wait_watching(http_port, total_rooms, 300)
        await asyncio.sleep(5)
        rows = [
            r for r in store.sessions(SessionFilter()) if r.participant_identity.startswith("stay-")
        ]
        gaps = [r for r in rows if r.left_at is not None]
        print(
            f"cold start into {total_rooms} live rooms: {cold:.1f} s to be inside all; "
            f"{len(rows)} rows for {len(stayers)} agents that stayed, {len(gaps)} closed"
        )
        # churn
        rate = args.rate
        left: dict[str, float] = {}
        stay_s = 3.0
        t_end = time.monotonic() + args.churn_s
        k = 0
        c0, w0 = cpu_s(daemon.pid), time.monotonic()
        pending: set[asyncio.Task] = set()

        failed = 0

        async def one(k: int) -> None:
            nonlocal failed
            ident = f"churn-{k}"
            try:
                room = await connect_agent(lk, random.choice(names), ident)
            except Exception:
                failed += 1
                return
            await asyncio.sleep(stay_s)
            left[ident] = time.time()
            await room.disconnect()

        while time.monotonic() < t_end:
            t = asyncio.create_task(one(k))
            pending.add(t)
            t.add_done_callback(pending.discard)
            k += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending, return_exceptions=True)
        churn_cpu = (cpu_s(daemon.pid) - c0) / (time.monotonic() - w0) * 100
        await asyncio.sleep(3)
        rows = {
            r.participant_identity: r
            for r in store.sessions(SessionFilter())
            if r.participant_identity.startswith("churn-")
        }
        lags = [
            (rows[i].updated_at.timestamp() - t)
            for i, t in left.items()
            if i in rows and rows[i].left_at is not None
        ]
        seen = [
            (rows[i].left_at.timestamp() - t)
            for i, t in left.items()
            if i in rows and rows[i].left_at is not None
        ]
        lost = len([i for i in left if i not in rows or rows[i].left_at is None])
        print(
            f"  of which leave -> seen by the observer: p50 {pct(seen, 0.5) * 1000:.0f} ms, "
            f"p95 {pct(seen, 0.95) * 1000:.0f} ms"
        )
        print(
            f"churn: {rate}/s joins and {rate}/s leaves for {args.churn_s:.0f} s "
            f"({len(left)} sessions): observer CPU {churn_cpu:.1f} %; leave -> row "
            f"p50 {pct(lags, 0.5) * 1000:.0f} ms, p95 {pct(lags, 0.95) * 1000:.0f} ms; lost {lost}"
        )

        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        for r in stayers:
            await r.disconnect()
        store.close()
        await lkapi.aclose()
        if args.keep_log:
            Path(args.keep_log).write_bytes(Path(f"{tmp}/daemon.log").read_bytes())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--settle-s", type=float, default=15.0)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--new-rooms", type=int, default=20)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--churn-s", type=float, default=30.0)
    p.add_argument("--stayers", type=int, default=50)
    p.add_argument("--processes", type=int, default=0, help="OBSERVER_ROOM_PROCESSES")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--keep-log", help="copy the daemon's log here at the end")
    asyncio.run(main(p.parse_args()))
