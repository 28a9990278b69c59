"""Benchmark: how close recorded standing time is to what the agent measured itself.

Starts a real livekit-server (built by scripts/install-livekit-server.sh) and the observer
in-process on a fresh SQLite file, then runs many agent sessions (real rtc clients that
publish audio and leave cleanly) and compares each row's duration_ms with the duration the
agent measured on its own side (from connect() returning to calling disconnect()).
Also reports how long a leave takes to reach its row.

    .venv/bin/python bench/bench_accuracy.py --sessions 60 --rooms 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from livekit import api
from livekit_server import LiveKitServer

from observer.config import LiveKitSettings, Settings
from observer.daemon.service import Observer
from observer.db import migrate
from observer.db.reads import SessionFilter
from observer.db.store import Store
from observer.simulate import Stay, connect_agent, leave, user_token


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


async def one_session(lk: LiveKitSettings, room: str, n: int, stays: list[Stay]) -> None:
    await asyncio.sleep(random.uniform(0, 2))
    r, stay = await connect_agent(lk, room, f"bench-agent-{n}", "bench-agent")
    await asyncio.sleep(random.uniform(1.0, 4.0))
    await leave(r, stay)
    stays.append(stay)


async def main(args: argparse.Namespace) -> None:
    from livekit import rtc

    with tempfile.TemporaryDirectory() as tmp, LiveKitServer() as server:
        db = f"sqlite:///{tmp}/bench.db"
        migrate.upgrade(db)
        lk = LiveKitSettings(server.ws_url, server.api_key, server.api_secret)
        settings = Settings.from_mapping(
            {
                "LIVEKIT_URL": server.ws_url,
                "LIVEKIT_API_KEY": server.api_key,
                "LIVEKIT_API_SECRET": server.api_secret,
                "OBSERVER_DATABASE_URL": db,
                "OBSERVER_POLL_INTERVAL_S": "0.5",
                "OBSERVER_HTTP_ADDR": "off",
            }
        )
        store = Store(db)
        obs = Observer(settings, store, lk)
        task = asyncio.create_task(obs.run())
        lkapi = server.api_client()
        users = []
        rooms = [f"bench-{i}" for i in range(args.rooms)]
        for name in rooms:
            await lkapi.room.create_room(api.CreateRoomRequest(name=name))
            u = rtc.Room()
            await u.connect(
                server.ws_url, user_token(lk, "user", name), rtc.RoomOptions(auto_subscribe=False)
            )
            users.append(u)
        while len(obs.tracker.watched_rooms) < len(rooms):
            await asyncio.sleep(0.1)
        stays: list[Stay] = []
        n = 0
        while n < args.sessions:
            batch = [
                one_session(lk, rooms[i % len(rooms)], n + i, stays)
                for i in range(min(args.concurrency, args.sessions - n))
            ]
            n += len(batch)
            await asyncio.gather(*batch)
        deadline = time.monotonic() + 30
        while True:
            rows = store.sessions(SessionFilter(state="closed", limit=100_000))
            if len(rows) >= args.sessions or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        latency_count = obs.metrics.value("observer_leave_to_row_seconds_count")
        latency_sum = obs.metrics.value("observer_leave_to_row_seconds_sum")
        obs.stop()
        await task
        for u in users:
            await u.disconnect()
        await lkapi.aclose()
        store.close()

    by_identity = {r.participant_identity: r for r in rows}
    errors_ms = []
    join_ms, leave_ms = [], []
    for stay in stays:
        row = by_identity.get(stay.identity)
        if row is None or row.duration_ms is None:
            print(f"missing row for {stay.identity}")
            continue
        errors_ms.append(row.duration_ms - stay.measured_ms)
        join_ms.append((stay.connected_at - row.joined_at.timestamp()) * 1000)
        if row.left_at is not None:
            leave_ms.append((row.left_at.timestamp() - stay.leaving_at) * 1000)
    abs_err = sorted(abs(e) for e in errors_ms)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"sessions: {len(errors_ms)} of {args.sessions} recorded, in {args.rooms} rooms")
    print(f"error (recorded - measured) median: {statistics.median(errors_ms):.1f} ms")
    print(
        f"|error| median: {statistics.median(abs_err):.1f} ms, "
        f"p95: {abs_err[int(len(abs_err) * 0.95) - 1]:.1f} ms, worst: {abs_err[-1]:.1f} ms"
    )
    connect_ms = statistics.median((s.connected_at - s.connecting_at) * 1000 for s in stays)
    print(
        f"join: connect() returned a median {statistics.median(join_ms):.1f} ms after the "
        f"server's joined_at (connect() itself took a median {connect_ms:.1f} ms)"
    )
    print(
        f"leave: left_at a median {statistics.median(leave_ms):.1f} ms after disconnect() "
        f"was called (worst {max(leave_ms):.1f} ms)"
    )
    if latency_count:
        print(
            f"leave-to-row mean: {latency_sum / latency_count * 1000:.1f} ms "
            f"over {latency_count:.0f} closes"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=60)
    p.add_argument("--rooms", type=int, default=6)
    p.add_argument("--concurrency", type=int, default=10)
    asyncio.run(main(p.parse_args()))
