"""Benchmark: what readers of the page do to a running daemon. `observer run` as its own
process beside a real livekit-server, over the sessions of bench/bench_usage.py (150,000 by
default), on SQLite and PostgreSQL:

1. unfiltered `GET /sessions.json` exports (several at once), while `/healthz` is asked
   every 50 ms and a signed webhook is posted every 200 ms (its answer waits for its row
   in `webhook_events`: a database write on the recording path);
2. then 50 `GET /minutes?by=attribute:<new key>` at once (each a grouping never computed
   before), with the same probes and `/readyz`.

It prints the daemon's RSS (from /proc, before and at its peak), the latency of `/healthz`
and of the webhook's write, and what `/readyz` answered.

    .venv/bin/python bench/bench_export.py                # starts a private PostgreSQL
    .venv/bin/python bench/bench_export.py --exports 3 --skip-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp
import bench_usage
from livekit import api
from livekit_server import LiveKitServer, free_tcp_port
from sqlalchemy.engine import make_url

from observer.db import migrate


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Probes:
    """/healthz every 50 ms, a signed webhook every 200 ms, the RSS every 50 ms."""

    def __init__(self, base: str, pid: int, server: LiveKitServer) -> None:
        self.base, self.pid, self.server = base, pid, server
        self.healthz: list[float] = []
        self.writes: list[float] = []
        self.rss: list[float] = []
        self.n = 0

    def webhook(self) -> tuple[bytes, str]:
        self.n += 1
        body = json.dumps(
            {
                "event": "room_finished",
                "id": f"EV_bench_{time.time_ns()}_{self.n}",
                "createdAt": str(int(time.time())),
                "room": {"sid": f"RM_elsewhere_{self.n}", "name": f"elsewhere-{self.n}"},
            }
        ).encode()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        token = api.AccessToken(self.server.api_key, self.server.api_secret)
        return body, token.with_sha256(digest).to_jwt()

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        async def every(period_s: float, probe: Callable[[], Awaitable[None]]) -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await probe()
                await asyncio.sleep(max(0.0, period_s - (time.perf_counter() - t)))

        async def healthz() -> None:
            t = time.perf_counter()
            async with http.get(self.base + "/healthz") as r:
                await r.read()
            self.healthz.append(time.perf_counter() - t)

        async def write() -> None:
            body, jwt = self.webhook()
            t = time.perf_counter()
            headers = {"Authorization": jwt, "Content-Type": "application/webhook+json"}
            async with http.post(self.base + "/webhook", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
            self.writes.append(time.perf_counter() - t)

        async def rss() -> None:
            self.rss.append(rss_mib(self.pid))

        await asyncio.gather(every(0.05, healthz), every(0.2, write), every(0.05, rss))

    def report(self, what: str, before_mib: float) -> None:
        def ms(xs: list[float]) -> str:
            if not xs:
                return "none"
            xs = sorted(xs)
            p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
            return f"median {statistics.median(xs) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms," + (
                f" worst {xs[-1] * 1000:.0f} ms ({len(xs)} asked)"
            )

        print(f"  {what}:", flush=True)
        print(f"    RSS {before_mib:.0f} MiB before, {max(self.rss):.0f} MiB at its peak")
        print(f"    /healthz {ms(self.healthz)}")
        print(f"    webhook write {ms(self.writes)}", flush=True)


async def during(
    base: str, pid: int, server: LiveKitServer, what: str, load: Callable[[Any], Awaitable[str]]
) -> None:
    before = rss_mib(pid)
    probes = Probes(base, pid, server)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        probing = asyncio.create_task(probes.run(http, stop))
        await asyncio.sleep(1.0)
        t = time.perf_counter()
        said = await load(http)
        took = time.perf_counter() - t
        await asyncio.sleep(0.5)
        stop.set()
        await probing
    probes.report(f"{what}: {took:.1f} s; {said}", before)


async def bench(name: str, url: str, sessions: int, exports: int, limit: int | None) -> None:
    migrate.upgrade(url)
    # bench_usage's month moved by whole days to end today: the Minutes view's windows
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    shift = today - timedelta(days=bench_usage.DAYS) - bench_usage.MONTH_START
    rows = [
        tuple(v + shift if isinstance(v, datetime) else v for v in row)
        for row in bench_usage.sessions(sessions, 1_000, 5_000)
    ]
    rooms = bench_usage.room_rows(5_000)
    if url.startswith("sqlite"):
        bench_usage.fill_sqlite(make_url(url).database or "", rows, rooms)
    else:
        bench_usage.fill_postgres(url, rows, rooms)
    del rows
    server = LiveKitServer()
    server.start()
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    env |= {
        "LIVEKIT_URL": server.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
        "OBSERVER_DATABASE_URL": url,
        "OBSERVER_HTTP_ADDR": f"127.0.0.1:{port}",
        "OBSERVER_ROOM_PATTERN": "bench-*",
        "OBSERVER_ID": "bench",
    }
    with tempfile.TemporaryDirectory() as cwd:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "observer", "run"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(600):
                    try:
                        async with http.get(base + "/minutes") as r:  # after the start-up's
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # the start-up's other groupings
            query = "" if limit is None else f"?limit={limit}"

            async def export(http: aiohttp.ClientSession) -> str:
                async def one() -> tuple[int, int]:
                    async with http.get(f"{base}/sessions.json{query}") as r:
                        size = 0
                        async for chunk in r.content.iter_chunked(1 << 16):
                            size += len(chunk)
                        return r.status, size

                got = await asyncio.gather(*(one() for _ in range(exports)))
                sizes = ", ".join(f"{status}: {size / 2**20:.0f} MiB" for status, size in got)
                return f"answers {sizes}"

            print(f"{name}: {sessions} sessions; daemon pid {daemon.pid}", flush=True)
            await during(base, daemon.pid, server, f"{exports} unfiltered export(s)", export)

            async def minutes(http: aiohttp.ClientSession) -> str:
                statuses: list[int] = []
                ready: list[int] = []

                async def one(n: int) -> None:
                    async with http.get(f"{base}/minutes?by=attribute:bench{n}") as r:
                        await r.read()
                        statuses.append(r.status)

                async def readyz(stop: asyncio.Event) -> None:
                    while not stop.is_set():
                        async with http.get(base + "/readyz") as r:
                            ready.append(r.status)
                        await asyncio.sleep(0.25)

                stop = asyncio.Event()
                watching = asyncio.create_task(readyz(stop))
                await asyncio.gather(*(one(n) for n in range(50)))
                stop.set()
                await watching
                codes = {c: statuses.count(c) for c in sorted(set(statuses))}
                return f"answers {codes}; /readyz { ({c: ready.count(c) for c in set(ready)}) }"

            await during(base, daemon.pid, server, "50 new groupings of Minutes", minutes)
        finally:
            daemon.terminate()
            daemon.wait(30)
            server.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=150_000)
    ap.add_argument("--exports", type=int, default=1, help="unfiltered exports at once")
    ap.add_argument("--limit", type=int, default=None, help="the exports' limit parameter")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {bench_usage.cpu_model()};"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(
                bench("sqlite", f"sqlite:///{tmp}/b.db", args.sessions, args.exports, args.limit)
            )
    if args.skip_postgres:
        return
    import postgres_server

    with postgres_server.PostgresServer() as pg:
        url = pg.create_database("bench")
        asyncio.run(bench("postgresql", url, args.sessions, args.exports, args.limit))


if __name__ == "__main__":
    main()
