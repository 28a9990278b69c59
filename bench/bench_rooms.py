"""Benchmark: how many rooms one observer process can watch.

The rtc SDK puts every native event on every Room's queue, so the observer's cost grows
with rooms x events. This runs `observer run` as its own process against a real
livekit-server, grows the number of watched rooms, and at each step reports the
observer's CPU use while idle and while one agent per room joins and leaves, plus how long
leaves take to reach their rows (from the daemon's own metrics).

    .venv/bin/python bench/bench_rooms.py --steps 10 25 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from observer.config import LiveKitSettings
from observer.simulate import connect_agent, leave, user_token

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, LiveKitServer(empty_timeout=600) as server:
        lk = LiveKitSettings(server.ws_url, server.api_key, server.api_secret)
        port = free_tcp_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))},
            "LIVEKIT_URL": server.ws_url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "OBSERVER_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "OBSERVER_HTTP_ADDR": f"127.0.0.1:{port}",
            "OBSERVER_POLL_INTERVAL_S": "1",
            "OBSERVER_LOG_LEVEL": "warning",
        }
        subprocess.run(
            [sys.executable, "-m", "observer", "migrate"], env=env, check=True, capture_output=True
        )
        daemon = subprocess.Popen([sys.executable, "-m", "observer", "run"], env=env)
        lkapi = server.api_client()
        users: list[rtc.Room] = []
        try:
            await asyncio.sleep(1.5)
            print(
                f"{'rooms':>6} {'join all s':>10} {'idle cpu %':>10} {'churn cpu %':>11} "
                f"{'leave->row ms':>13}"
            )
            for n in args.steps:
                t0 = time.monotonic()
                for i in range(len(users), n):
                    name = f"scale-{i}"
                    await lkapi.room.create_room(api.CreateRoomRequest(name=name))
                    u = rtc.Room()
                    await u.connect(
                        server.ws_url,
                        user_token(lk, "user", name),
                        rtc.RoomOptions(auto_subscribe=False),
                    )
                    users.append(u)
                while (await scrape(port)).get("observer_rooms_watched", 0) < n:
                    await asyncio.sleep(0.2)
                joined_s = time.monotonic() - t0
                await asyncio.sleep(3)  # let the joins settle
                c0, w0 = cpu_s(daemon.pid), time.monotonic()
                await asyncio.sleep(args.idle_s)
                idle = (cpu_s(daemon.pid) - c0) / (time.monotonic() - w0) * 100
                before = await scrape(port)
                c0, w0 = cpu_s(daemon.pid), time.monotonic()
                agents = await asyncio.gather(
                    *(connect_agent(lk, f"scale-{i}", f"agent-{n}-{i}", "bench") for i in range(n))
                )
                await asyncio.sleep(1)
                await asyncio.gather(*(leave(r, s) for r, s in agents))
                await asyncio.sleep(2)
                churn = (cpu_s(daemon.pid) - c0) / (time.monotonic() - w0) * 100
                after = await scrape(port)
                cnt = after["observer_leave_to_row_seconds_count"] - before.get(
                    "observer_leave_to_row_seconds_count", 0
                )
                tot = after["observer_leave_to_row_seconds_sum"] - before.get(
                    "observer_leave_to_row_seconds_sum", 0
                )
                mean_ms = tot / cnt * 1000 if cnt else float("nan")
                print(f"{n:>6} {joined_s:>10.1f} {idle:>10.1f} {churn:>11.1f} {mean_ms:>13.1f}")
        finally:
            daemon.terminate()
            daemon.wait(30)
            for u in users:
                await u.disconnect()
            await lkapi.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--idle-s", type=float, default=5.0)
    asyncio.run(main(p.parse_args()))
