"""Open files of the observer around a cut of its link to LiveKit, under many rooms; not
part of the test suite, a script that prints numbers.

Runs livekit-server, a private PostgreSQL and `observer run` as their own processes, the
observer's signal and API connection through a TCP proxy. `--rooms` rooms are created (kept
open by the server's empty timeout, no participants); once the observer is inside all of
them, the proxy is cut for `--cut-s` and restored. Every `--sample-s` it prints the open
files of the daemon and its room processes and the rooms watched, and at the end the
settled count before the cut, the peak after it, and where it settled.

The rtc SDK reconnects every room at once after such a cut, and rooms that gather network
candidates together keep many more sockets, for good; the observer then joins its rooms
afresh one at a time (`observer/daemon/crowding.py`).

    .venv/bin/python bench/bench_reconnect_files.py                 # 200 rooms, a 30 s cut
    .venv/bin/python bench/bench_reconnect_files.py --processes 2   # in two room processes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_soak import Daemon, prepare, wait_watching
from livekit_server import LiveKitServer, free_tcp_port
from postgres_server import PostgresServer
from soak import measure
from tcp_proxy import TcpProxy


async def main(args: argparse.Namespace) -> None:
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {text}", flush=True)

    http_port = free_tcp_port()
    pg = PostgresServer()
    await asyncio.to_thread(pg.start)
    keep = 7200
    server = LiveKitServer(empty_timeout=keep, departure_timeout=keep, log_level="warn")
    proxy = TcpProxy(server.port)
    try:
        await asyncio.to_thread(server.start)
        await proxy.start()
        env = await prepare(
            server,
            proxy,
            pg.create_database("files"),
            http_port,
            [f"files-{i}" for i in range(args.rooms)],
            keep,
            OBSERVER_ROOM_PROCESSES=str(args.processes),
            OBSERVER_LOG_LEVEL="warning",
        )
        daemon = Daemon(env, Path(tempfile.mkdtemp(prefix="files-")) / "daemon.log")
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        settle = await wait_watching(http_port, args.rooms, 300)
        say(f"{os.cpu_count()} cores; inside {args.rooms} rooms after {settle:.1f} s")

        async def sample(label: str, seconds: float) -> list[int]:
            seen = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.sleep(args.sample_s)
                m = await measure.metrics(http_port, ("observer_rooms_watched",))
                seen.append(measure.open_files(pid))
                say(f"{label}: {seen[-1]} open files, {m['observer_rooms_watched']:.0f} rooms")
            return seen

        before = await sample("before the cut", args.settle_s)
        proxy.cut()
        say(f"link cut for {args.cut_s:.0f} s")
        await sample("cut", args.cut_s)
        proxy.restore()
        say("link restored")
        after = await sample("after", args.after_s)
        per = lambda n: f"{n} ({n / args.rooms:.1f} a room)"  # noqa: E731
        say(
            f"end: {per(before[-1])} before the cut; {per(max(after))} at most after it;"
            f" {per(after[-1])} {args.after_s:.0f} s after it"
        )
        say(f"daemon stopped, exit code {await daemon.stop(signal.SIGTERM)}")
    finally:
        await proxy.close()
        server.cleanup()
        await asyncio.to_thread(pg.cleanup)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--processes", type=int, default=0, help="OBSERVER_ROOM_PROCESSES")
    p.add_argument("--cut-s", type=float, default=30)
    p.add_argument("--settle-s", type=float, default=15, help="sampled before the cut")
    p.add_argument("--after-s", type=float, default=150, help="sampled after the cut")
    p.add_argument("--sample-s", type=float, default=5)
    args = p.parse_args()
    if args.rooms < 1 or args.cut_s <= 0 or args.processes < 0:
        print(
            "error: --rooms and --cut-s must be positive, --processes not negative", file=sys.stderr
        )
        sys.exit(2)
    from observer.daemon.sdk_internals import start_native_core_or_fall_back

    start_native_core_or_fall_back()
    asyncio.run(main(args))
