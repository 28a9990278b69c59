"""Soak: the daemon on PostgreSQL for a long run of real clients coming and going, through
restarts and outages; not part of the test suite, a script that prints numbers.

Runs livekit-server, a private PostgreSQL and `observer run` as their own processes on this
machine, the observer's signal and API connection through a TCP proxy that can be cut.
Real rtc clients (agents and callers, each publishing audio), spread over
`--client-processes` processes (each replaced after `--clients-per-process` clients, which
frees what the rtc SDK keeps of failed connects), join random rooms at `--rate` per second
and leave after a random stay; `--stayers` stay the whole run. Once each, at a
fifth of the run apart: the observer restarted with SIGTERM, PostgreSQL stopped for
`--db-outage-s`, the observer's signal cut for `--cut-s`, the observer killed (SIGKILL, the
whole process group, as systemd kills a unit) and started again. `--faults` picks which of
these happen (at the same points); `none` leaves one daemon process the whole run, to see
its memory over a long run.

Every `--interval-s` it prints the daemon's RSS, open files, threads and CPU (its room
processes included), its event queue and pending writes, and the rows written. At the end:
sessions lost, doubled, left open or off against LiveKit's own record (its webhooks), then
against the clients' own record (lost, doubled, left open, shortened or lengthened), and
the RSS and open-file slopes per hour of each daemon process after `--warmup-s`.

    .venv/bin/python bench/bench_soak.py                      # 200 rooms, 24 hours
    .venv/bin/python bench/bench_soak.py --rooms 20 --duration-s 300 --interval-s 60 \\
        --warmup-s 20 --rate 1 --stayers 6                    # a 5-minute smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psycopg
from livekit import api
from livekit_server import LiveKitServer, free_tcp_port
from postgres_server import PostgresServer
from soak import measure, server_record
from soak.client_pool import ClientPool
from soak.clients import Row, compare
from tcp_proxy import TcpProxy

from observer.config import LiveKitSettings

FAULTS = ("sigterm", "db-outage", "cut", "sigkill")
QUEUES = ("observer_event_queue_depth", "observer_db_pending_ops", "observer_rooms_watched")


@dataclass
class Daemon:
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    life: int = -1
    started: float = 0.0
    events: list[str] = field(default_factory=list)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # the child holds it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "observer", "run"],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.life += 1
        self.started = time.monotonic()

    async def stop(self, sig: signal.Signals) -> int | None:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon and its room processes
        else:
            self.proc.send_signal(sig)
        return await asyncio.to_thread(self.proc.wait, 120)


async def rows_written(conninfo: str) -> tuple[int, int] | None:
    """(rows, rows closed) in `sessions`; None while the database does not answer."""

    def count() -> tuple[int, int]:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            row = conn.execute("select count(*), count(left_at) from sessions").fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

    try:
        return await asyncio.to_thread(count)
    except psycopg.Error:
        return None


async def read_rows(conninfo: str) -> list[Row]:
    def read() -> list[Row]:
        with psycopg.connect(conninfo) as conn:
            return [
                Row(*r)
                for r in conn.execute(
                    "select participant_identity, joined_at, left_at, end_source,"
                    " end_uncertainty_ms from sessions order by id"
                )
            ]

    return await asyncio.to_thread(read)


async def prepare(
    server: LiveKitServer,
    proxy: TcpProxy,
    db_url: str,
    http_port: int,
    names: list[str],
    keep_s: int,
    **extra: str,
) -> dict[str, str]:
    """The observer's environment (its signal and API through the proxy), its database
    migrated, and the rooms created, kept open `keep_s` when empty."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))},
        "LIVEKIT_URL": proxy.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
        "OBSERVER_DATABASE_URL": db_url,
        "OBSERVER_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "OBSERVER_POLL_INTERVAL_S": "5",
        **extra,
    }
    subprocess.run(
        [sys.executable, "-m", "observer", "migrate"], env=env, check=True, capture_output=True
    )
    lkapi = server.api_client()
    for i in range(0, len(names), 50):
        await asyncio.gather(
            *(
                lkapi.room.create_room(api.CreateRoomRequest(name=x, empty_timeout=keep_s))
                for x in names[i : i + 50]
            )
        )
    await lkapi.aclose()
    return env


async def wait_watching(port: int, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = await measure.metrics(port, ("observer_rooms_watched",))
        if m["observer_rooms_watched"] >= n:
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    return float("nan")


def faults_arg(text: str) -> frozenset[str]:
    picked = frozenset() if text == "none" else frozenset(text.split(","))
    if unknown := picked - set(FAULTS):
        raise argparse.ArgumentTypeError(f"unknown fault {sorted(unknown)[0]!r}")
    return picked


async def main(args: argparse.Namespace) -> None:
    t_start = time.monotonic()

    def now_s() -> float:
        return time.monotonic() - t_start

    def say(text: str) -> None:
        print(f"[{now_s():7.0f} s] {text}", flush=True)

    http_port = free_tcp_port()
    keep = int(args.duration_s) + 3600
    pg = PostgresServer()
    await asyncio.to_thread(pg.start)
    server = LiveKitServer(
        empty_timeout=keep,
        departure_timeout=keep,
        webhook_urls=[f"http://127.0.0.1:{http_port}/webhook"],
        log_level="warn",
    )
    proxy = TcpProxy(server.port)
    tmp = tempfile.mkdtemp(prefix="soak-")
    try:
        await asyncio.to_thread(server.start)
        await proxy.start()
        db_url = pg.create_database("soak")
        conninfo = pg.conninfo("soak")
        names = [f"soak-{i}" for i in range(args.rooms)]
        env = await prepare(
            server,
            proxy,
            db_url,
            http_port,
            names,
            keep,
            OBSERVER_TRACK_KINDS="agent,standard",
            OBSERVER_LOG_LEVEL=args.log_level,
        )
        daemon = Daemon(env, Path(tmp) / "daemon.log")
        daemon.start()
        settle = await wait_watching(http_port, args.rooms, 300)
        say(
            f"{os.cpu_count()} cores; {args.rooms} rooms; inside all after {settle:.1f} s; "
            f"clients: {args.rate}/s joining, stays {args.stay_min_s:.0f}-{args.stay_max_s:.0f} s,"
            f" {args.stayers} for the whole run" + ("; no audio" if args.no_audio else "")
        )
        clients = ClientPool(
            LiveKitSettings(server.ws_url, server.api_key, server.api_secret),
            args.client_processes,
            args.clients_per_process,
            not args.no_audio,
        )
        await clients.start()
        for i in range(args.stayers):
            kind = "agent" if i % 2 == 0 else "standard"
            await clients.stay(f"stayer-{i}", names[i % len(names)], kind, args.duration_s)
        t_run = time.monotonic()
        t_end = t_run + args.duration_s
        samples: list[measure.Sample] = []

        async def churn() -> None:
            k = 0
            while time.monotonic() < t_end:
                kind = "agent" if random.random() < 0.5 else "standard"
                stay_s = random.uniform(args.stay_min_s, args.stay_max_s)
                stay_s = min(stay_s, max(1.0, t_end - time.monotonic()))
                await clients.stay(f"{kind[:5]}-{k}", random.choice(names), kind, stay_s)
                k += 1
                await asyncio.sleep(random.expovariate(args.rate))

        async def faults() -> None:
            plan = [
                (0.2, "sigterm", "observer restarted (SIGTERM)"),
                (0.4, "db-outage", f"PostgreSQL stopped for {args.db_outage_s:.0f} s"),
                (0.6, "cut", f"observer's signal cut for {args.cut_s:.0f} s"),
                (0.8, "sigkill", "observer killed (SIGKILL) and started again"),
            ]
            for at, fault, what in plan:
                if fault not in args.faults:
                    continue
                await asyncio.sleep(max(0.0, t_run + at * args.duration_s - time.monotonic()))
                say(what)
                if fault == "sigterm":
                    code = await daemon.stop(signal.SIGTERM)
                    say(f"  exit code {code}; starting again")
                    daemon.start()
                elif fault == "db-outage":
                    await asyncio.to_thread(pg.stop)
                    await asyncio.sleep(args.db_outage_s)
                    await asyncio.to_thread(pg.start)
                    say("  PostgreSQL back")
                elif fault == "cut":
                    proxy.cut()
                    await asyncio.sleep(args.cut_s)
                    proxy.restore()
                    say("  signal restored")
                else:
                    await daemon.stop(signal.SIGKILL)
                    await asyncio.sleep(2)
                    daemon.start()

        async def sampler() -> None:
            assert daemon.proc is not None
            last_report = time.monotonic()
            cpu_prev, life_prev, t_prev = 0.0, daemon.life, time.monotonic()
            cpu_used = 0.0
            while time.monotonic() < t_end:
                await asyncio.sleep(args.sample_s)
                assert daemon.proc is not None
                if daemon.proc.poll() is not None:
                    continue  # between a stop and the next start
                pid = daemon.proc.pid
                cpu = measure.cpu_s(pid)
                cpu_used += cpu - (cpu_prev if daemon.life == life_prev else 0.0)
                cpu_prev, life_prev = cpu, daemon.life
                life_s = time.monotonic() - daemon.started
                samples.append(
                    measure.Sample(
                        now_s(), daemon.life, life_s, measure.rss_mib(pid), measure.open_files(pid)
                    )
                )
                if time.monotonic() - last_report < args.interval_s:
                    continue
                span = time.monotonic() - t_prev
                m = await measure.metrics(http_port, QUEUES)
                rows = await rows_written(conninfo)
                s = samples[-1]
                say(
                    f"RSS {s.rss_mib:.0f} MiB, {s.open_files} open files, "
                    f"{measure.threads(pid)} threads, CPU {cpu_used / span * 100:.1f} % of a core; "
                    f"queue {m['observer_event_queue_depth']:.0f} events, "
                    f"{m['observer_db_pending_ops']:.0f} writes pending; "
                    f"inside {m['observer_rooms_watched']:.0f} rooms; rows "
                    + (f"{rows[0]} ({rows[1]} closed)" if rows else "(database down)")
                    + f"; {clients.live} clients in rooms; daemon process #{daemon.life + 1}"
                )
                last_report, t_prev, cpu_used = time.monotonic(), time.monotonic(), 0.0

        await asyncio.gather(churn(), faults(), sampler())
        await clients.close(timeout_s=args.stay_max_s + 120)
        await asyncio.sleep(args.settle_s)

        # the rows against the server's own record first: it holds every participant the
        # clients' record misses (connects that timed out on their side but not on the
        # server's), and it does not depend on the clients' processes holding up
        def against_server() -> list[str]:
            with psycopg.connect(conninfo) as conn:
                sv = server_record.compare(*server_record.read(conn), time.time(), args.tolerance_s)
            return server_record.report(sv, args.tolerance_s)

        for line in await asyncio.to_thread(against_server):
            say(line)
        rows = await read_rows(conninfo)
        v = compare(clients.stays, rows, args.tolerance_s)
        say(
            f"end: {v.stays} client sessions ({clients.failed} joins failed, of which"
            f" {clients.late_joined} connected past the limit and left at once; clients in"
            f" {clients.started} processes),"
            f" {len(rows)} rows: "
            f"lost {len(v.lost)}, doubled {len(v.doubled)}, left open {len(v.open)}, "
            f"shortened {len(v.shortened)}, lengthened {len(v.lengthened)} "
            f"(tolerance {args.tolerance_s} s plus a row's stated uncertainty)"
        )
        say(f"  rows by how the end was learned: {dict(sorted(v.by_source.items()))}")
        for label, ids in (
            ("lost", v.lost),
            ("doubled", v.doubled),
            ("left open", v.open),
            ("shortened", v.shortened),
            ("lengthened", v.lengthened),
        ):
            if ids:
                say(f"  {label}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}")
        for what, by in v.off_by.items():
            parts = [f"{src} {n} (up to {worst:.1f} s)" for src, (n, worst) in sorted(by.items())]
            say(f"  {what} by how the end was learned: {', '.join(parts)}")

        for life, span, rss, fds in measure.slopes(samples, args.warmup_s):
            fmt = lambda x: "n/a" if x is None else f"{x:+.1f}"  # noqa: E731
            say(
                f"daemon process #{life + 1}: {span:.0f} s measured after {args.warmup_s:.0f} s "
                f"of warm-up: RSS {fmt(rss)} MiB/h, open files {fmt(fds)}/h"
            )
        code = await daemon.stop(signal.SIGTERM)
        say(f"daemon stopped, exit code {code}")
        if args.keep_log:
            Path(args.keep_log).write_bytes(daemon.log_path.read_bytes())
    finally:
        await proxy.close()
        with contextlib.suppress(Exception):
            server.cleanup()
        await asyncio.to_thread(pg.cleanup)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=24 * 3600)
    p.add_argument("--interval-s", type=float, default=600, help="seconds between reports")
    p.add_argument("--sample-s", type=float, default=10, help="seconds between RSS samples")
    p.add_argument("--warmup-s", type=float, default=900, help="left out of the slopes")
    p.add_argument("--rate", type=float, default=2.0, help="client joins per second")
    p.add_argument("--stay-min-s", type=float, default=20)
    p.add_argument("--stay-max-s", type=float, default=120)
    p.add_argument("--stayers", type=int, default=20, help="clients in for the whole run")
    p.add_argument("--client-processes", type=int, default=4, help="processes of clients")
    p.add_argument(
        "--clients-per-process", type=int, default=1000, help="then the process is replaced"
    )
    p.add_argument(
        "--no-audio",
        action="store_true",
        help="clients publish no track (a published one costs the machine a silent encoder each)",
    )
    p.add_argument("--db-outage-s", type=float, default=60)
    p.add_argument("--cut-s", type=float, default=30)
    p.add_argument(
        "--faults",
        type=faults_arg,
        default=",".join(FAULTS),
        help=f"which of {','.join(FAULTS)} happen, comma-separated, or none",
    )
    p.add_argument("--settle-s", type=float, default=15, help="wait for rows after the end")
    p.add_argument("--tolerance-s", type=float, default=2.0)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--keep-log", help="copy the daemon's log here at the end")
    args = p.parse_args()
    if (
        min(args.rooms, args.client_processes, args.clients_per_process) < 1
        or min(args.duration_s, args.rate) <= 0
    ):
        print(
            "error: --rooms, --duration-s, --rate, --client-processes and"
            " --clients-per-process must be positive",
            file=sys.stderr,
        )
        sys.exit(2)
    # The clients' native core, started as the daemon starts its own: without forwarding its
    # logs to Python, which costs about 5 % of a core per idle client (hundreds here); an
    # SDK whose internals differ starts its own way, with one warning.
    from observer.daemon.sdk_internals import start_native_core_or_fall_back

    start_native_core_or_fall_back()
    asyncio.run(main(args))
