"""Benchmark: the page's live view with 1,000 watched rooms and one browser open.

The browser asks `/now/live` every 5 s. Fills a SQLite file with 1,000 live rooms (an agent
in each, a tenth of them alone), serves the page with `observer web` in its own process and
reads that process's CPU time from /proc around each request: refreshes when nothing but the
clock moved (answered 304), and refreshes after some 25 joins and leaves each.

    .venv/bin/python bench/bench_live_view.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from observer.core.changes import Close, Open, RoomPresence, RoomSeen
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db import migrate
from observer.db.store import Store

ROOMS = 1000
REFRESH_S = 5.0


def fill(url: str) -> None:
    store = Store(url)
    now = datetime.now(UTC)
    ops: list[object] = []
    for n in range(ROOMS):
        room, sid = f"room-{n:04d}", f"RM_{n}"
        s = TrackedSession(
            room,
            sid,
            f"PA_{n}",
            f"agent-{n}",
            "",
            "agent",
            f"bot-{n % 20}",
            {},
            now - timedelta(minutes=n % 90),
            now,
        )
        alone = now - timedelta(minutes=8) if n % 10 == 0 else None
        ops += [
            RoomSeen(sid, room, "", now, now, 1, 2),
            Open(s),
            RoomPresence(sid, room, 1, 0 if alone else 1, alone, now),
        ]
    store.apply(ops, "bench")  # type: ignore[arg-type]
    store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/live.db"
        migrate.upgrade(url)
        fill(url)
        port = 9400 + os.getpid() % 500
        env = dict(os.environ, OBSERVER_DATABASE_URL=url)
        web = subprocess.Popen(
            [sys.executable, "-m", "observer", "web", "--addr", f"127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}/now/live"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(base).read()
                    break
                except OSError:
                    time.sleep(0.1)

            def cpu() -> float:
                f = Path(f"/proc/{web.pid}/stat").read_text().split()
                return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")

            def get(etag: str | None = None) -> str | None:
                req = urllib.request.Request(base, headers={"If-None-Match": etag} if etag else {})
                try:
                    with urllib.request.urlopen(req) as r:
                        r.read()
                        return r.headers["ETag"]
                except urllib.error.HTTPError as e:
                    assert e.code == 304
                    return etag

            etag = get()
            n, c0 = 40, cpu()
            for _ in range(n):
                etag = get(etag)
            same = (cpu() - c0) / n

            store = Store(url)
            used = 0.0
            for i in range(n):
                now, ops = datetime.now(UTC), []
                for j in range(25):
                    k = 10_000 + i * 25 + j
                    s = TrackedSession(
                        f"room-{k % ROOMS:04d}",
                        f"RM_{k % ROOMS}",
                        f"PA_x{k}",
                        f"churn-{k}",
                        "",
                        "agent",
                        "churner",
                        {},
                        now,
                        now,
                    )
                    ops.append(Open(s))
                    if j % 2:
                        ops.append(Close(s.key, now, "CLIENT_INITIATED", END_RTC, None, now, s))
                store.apply(ops, "bench")
                c0 = cpu()
                etag = get(etag)
                used += cpu() - c0
            store.close()
            changed = used / n
        finally:
            web.terminate()
            web.wait()
    for what, per in (("unchanged (304)", same), ("after ~25 joins and leaves", changed)):
        print(
            f"/now/live with {ROOMS} live rooms, {what}: {per * 1000:.1f} ms of server CPU"
            f" per refresh = {per / REFRESH_S * 100:.2f} % of one core at one per {REFRESH_S:g} s"
        )


if __name__ == "__main__":
    main()
