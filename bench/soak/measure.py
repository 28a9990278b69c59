"""What the soak run reads of the daemon: its processes' RSS, open files, threads and CPU
(from /proc, the daemon and its room processes together), its /metrics, and straight-line
slopes of a figure over time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """The process and its children (the daemon's room processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(c) for c in children)]


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    return sum(_status(p, "VmRSS") for p in family(pid)) / 1024


def threads(pid: int) -> int:
    return sum(_status(p, "Threads") for p in family(pid))


def open_files(pid: int) -> int:
    total = 0
    for p in family(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def cpu_s_one(pid: int) -> float:
    """CPU seconds (user and system) of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_s(pid: int) -> float:
    return sum(cpu_s_one(p) for p in family(pid))


async def metrics(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """The sum of each named metric's samples on the daemon's /metrics (nan if down)."""
    out = dict.fromkeys(names, 0.0)
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as r,
        ):
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return dict.fromkeys(names, float("nan"))
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Sample:
    at_s: float  # seconds since the run's start
    life: int  # which daemon process (a restart starts a new life)
    life_s: float  # seconds since this daemon process started
    rss_mib: float
    open_files: int


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None for too few points."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600


def slopes(
    samples: list[Sample], warmup_s: float
) -> list[tuple[int, float, float | None, float | None]]:
    """Per daemon life: (life, seconds measured, RSS MiB/h, open files/h), from the samples
    taken `warmup_s` or more after that process started (a restart resets both figures)."""
    out = []
    for life in sorted({s.life for s in samples}):
        kept = [s for s in samples if s.life == life and s.life_s >= warmup_s]
        if not kept:
            continue
        span = kept[-1].life_s - kept[0].life_s
        rss = slope_per_hour([(s.life_s, s.rss_mib) for s in kept])
        fds = slope_per_hour([(s.life_s, float(s.open_files)) for s in kept])
        out.append((life, span, rss, fds))
    return out
