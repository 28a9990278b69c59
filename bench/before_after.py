"""Benchmark two revisions side by side: usage and reconcile, the page, the fleet.

Checks each revision out into its own temporary, detached `git worktree`, runs that
revision's own bench/bench_usage.py, bench/bench_web.py and bench/bench_fleet.py with this
checkout's Python (cwd and PYTHONPATH the worktree, so `observer` is that revision's code),
before and after taking turns to spread the machine's noise, and prints one table: the
median of each case per revision and the ratio after/before.

    .venv/bin/python bench/before_after.py                          # cc3c06c against HEAD
    .venv/bin/python bench/before_after.py --sessions 20000 --runs 1 --fleet-rooms 20

Both revisions' scripts generate the same rows (the generator is seeded); the script checks
that they do before timing anything. Each fills its own fresh databases, through its own
revision's migrations, so only the code and the schema it owns differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("usage", "web", "fleet")

# one row of a bench script's output -> (case, unit, value); a list per script
Sample = tuple[str, str, float]

USAGE_LINE = re.compile(r"^\s+(usage .*?), month \(([\d,]+) groups\): median ([\d.]+) s")
RECONCILE_FIRST = re.compile(r"^\s+reconcile month, first run .*?: ([\d.]+) s")
RECONCILE_AGAIN = re.compile(r"^\s+reconcile month, again: median ([\d.]+) s")
DATABASE = re.compile(r"^(sqlite|postgresql): filled in (\d+) s")
PG_VERSION = re.compile(r"^postgresql ([\d.]+\S*): private instance")
STARTUP = re.compile(r"^\s+start-up(, nothing kept)?: ([\d.]+) s")
# the Minutes view: the older script keeps the sums of past days and reports three numbers
MINUTES_OLD = re.compile(
    r"^\s+(/minutes\S*): first computation on the database ([\d.]+) s;"
    r" first visit of a process median ([\d.]+) s; later visits median ([\d.]+) s"
)
MINUTES_NEW = re.compile(
    r"^\s+(/minutes\S*): computed afresh median ([\d.]+) s; from the cache median ([\d.]+) s"
)
VIEW = re.compile(r"^\s+(/\S*): median ([\d.]+) s")


def parse_usage(text: str) -> list[Sample]:
    out: list[Sample] = []
    db = "?"
    for line in text.splitlines():
        if m := DATABASE.match(line):
            db = m[1]
            out.append((f"{db} fill (whole seconds)", "s", float(m[2])))
        elif m := USAGE_LINE.match(line):
            out.append((f"{db} {m[1]}", "s", float(m[3])))
            out.append((f"{db} {m[1]} [groups]", "n", float(m[2].replace(",", ""))))
        elif m := RECONCILE_FIRST.match(line):
            out.append((f"{db} reconcile month, first run", "s", float(m[1])))
        elif m := RECONCILE_AGAIN.match(line):
            out.append((f"{db} reconcile month, again", "s", float(m[1])))
    return out


def parse_web(text: str) -> list[Sample]:
    out: list[Sample] = []
    db = "?"
    for line in text.splitlines():
        if m := DATABASE.match(line):
            db = m[1]
        elif m := STARTUP.match(line):
            out.append((f"{db} start-up, every grouping", "s", float(m[2])))
        elif m := MINUTES_OLD.match(line):
            # the newer code keeps no sums of past days: its "afresh" is the older code's
            # first computation on a database; its first visit of a process is shown too.
            # "visited again": the older script's later visits, the newer one's "from the
            # cache" (which the newer page answers only while no session is open)
            out.append((f"{db} {m[1]} afresh (before: nothing kept)", "s", float(m[2])))
            out.append((f"{db} {m[1]} afresh (before: past days kept)", "s", float(m[3])))
            out.append((f"{db} {m[1]} visited again", "s", float(m[4])))
        elif m := MINUTES_NEW.match(line):
            out.append((f"{db} {m[1]} afresh (before: nothing kept)", "s", float(m[2])))
            out.append((f"{db} {m[1]} afresh (before: past days kept)", "s", float(m[2])))
            out.append((f"{db} {m[1]} visited again", "s", float(m[3])))
        elif m := VIEW.match(line):
            out.append((f"{db} {m[1]}", "s", float(m[2])))
    return out


FLEET = (
    (re.compile(r"^settling: ([\d.]+) s"), (("settling", "s"),)),
    (
        re.compile(r"^idle: observer CPU ([\d.]+) %.*RSS (\d+) MiB; \d+ fds = ([\d.]+) per room"),
        (("idle CPU", "%"), ("idle RSS", "MiB"), ("fds per room", "n")),
    ),
    (
        re.compile(r"^livekit-server CPU: ([\d.]+) % without the observer, ([\d.]+) % with it"),
        (("livekit-server CPU without", "%"), ("livekit-server CPU with", "%")),
    ),
    (
        re.compile(r"^room created -> observer inside .*: p50 (\d+) ms, p95 (\d+) ms"),
        (("room created -> inside p50", "ms"), ("room created -> inside p95", "ms")),
    ),
    (re.compile(r"^cold start into \d+ live rooms: ([\d.]+) s"), (("cold start", "s"),)),
    (
        re.compile(r"^\s+of which leave -> seen by the observer: p50 (\d+) ms, p95 (\d+) ms"),
        (("leave -> seen p50", "ms"), ("leave -> seen p95", "ms")),
    ),
    (
        re.compile(
            r"^churn: .*observer CPU ([\d.]+) %;"
            r" leave -> row p50 (\d+) ms, p95 (\d+) ms; lost (\d+)"
        ),
        (("churn CPU", "%"), ("leave -> row p50", "ms"), ("leave -> row p95", "ms"), ("lost", "n")),
    ),
)


def parse_fleet(text: str) -> list[Sample]:
    out: list[Sample] = []
    for line in text.splitlines():
        for pattern, names in FLEET:
            if m := pattern.match(line):
                values = zip(names, m.groups(), strict=True)
                out.extend((case, unit, float(v)) for (case, unit), v in values)
    return out


def last_line(bench: str, args: argparse.Namespace) -> tuple[str, int]:
    """The start of the script's last line, and how many times it comes (once a database)."""
    if bench == "fleet":
        return "churn:", 1
    dbs = 2 - args.skip_sqlite - args.skip_postgres
    return ("reconcile month, again" if bench == "usage" else "/health"), dbs


PARSERS = {"usage": parse_usage, "web": parse_web, "fleet": parse_fleet}


@dataclass
class Revision:
    label: str  # before / after
    rev: str
    commit: str
    tree: Path
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # bench -> case
    units: dict[str, str] = field(default_factory=dict)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def child_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(tree)
    env.setdefault(
        "LIVEKIT_SERVER_BIN", str(Path.home() / ".cache" / "lk-observer" / "bin" / "server")
    )
    return env


def run_py(
    tree: Path, args: list[str], log: Path | None = None, *, done: tuple[str, int] | None = None
) -> str:
    """This checkout's Python in the worktree; the output (also copied to `log`). With
    `done` (a line's start, how many times): a failed exit after those lines is only warned
    of (the rtc SDK may abort while the interpreter exits, after the benchmark printed all)."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env=child_env(tree),
        capture_output=True,
        text=True,
    )
    if log is not None:
        log.write_text(proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else ""))
    finished = done is not None and done[1] <= sum(
        line.lstrip().startswith(done[0]) for line in proc.stdout.splitlines()
    )
    if proc.returncode != 0 and finished:
        print(f"  (exit {proc.returncode} after its last line; stderr in {log})", flush=True)
    elif proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(args)} failed in {tree} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def check_imports(r: Revision) -> str:
    where = run_py(r.tree, ["-c", "import observer; print(observer.__file__)"]).strip()
    if not Path(where).resolve().is_relative_to(r.tree.resolve()):
        raise SystemExit(f"{r.label}: observer resolves to {where}, not into {r.tree}")
    return where


DATA_DIGEST = """
import hashlib, sys
sys.path.insert(0, "bench")
import bench_usage
h = hashlib.sha256()
for row in bench_usage.sessions({n}, 1000, 50000):
    h.update(repr(row).encode())
for row in bench_usage.room_rows(50000):
    h.update(repr(row).encode())
print(h.hexdigest())
"""


def data_digest(r: Revision, sessions: int) -> str:
    """A digest of the rows this revision's benchmarks would generate (its own generator)."""
    return run_py(r.tree, ["-c", DATA_DIGEST.format(n=sessions)]).strip()


def bench_args(bench: str, args: argparse.Namespace) -> list[str]:
    """Options every revision's script understands (the newer ones have a few more)."""
    skip = [
        *(["--skip-sqlite"] if args.skip_sqlite else []),
        *(["--skip-postgres"] if args.skip_postgres else []),
    ]
    sized = ["--sessions", str(args.sessions), "--runs", str(args.runs)]
    if bench == "usage":
        return ["bench/bench_usage.py", *sized, *skip]
    if bench == "web":
        return ["bench/bench_web.py", *sized, *skip]
    return [
        "bench/bench_fleet.py",
        *("--rooms", str(args.fleet_rooms)),
        *("--settle-s", str(args.fleet_settle_s)),
        *("--window-s", str(args.fleet_window_s)),
        *("--new-rooms", str(args.fleet_new_rooms)),
        *("--rate", str(args.fleet_rate)),
        *("--churn-s", str(args.fleet_churn_s)),
        *("--stayers", str(args.fleet_stayers)),
    ]


def pairs(benches: list[str], rounds: dict[str, int]) -> Iterator[tuple[str, int, bool]]:
    """(bench, round, before first?): the order flips from one pair to the next."""
    k = 0
    for bench in benches:
        for n in range(rounds[bench]):
            yield bench, n, k % 2 == 0
            k += 1


def machine(pg_version: str | None) -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    if pg_version is None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if found:
            out = subprocess.run([str(found[-1]), "--version"], capture_output=True, text=True)
            if m := re.search(r"PostgreSQL\)? ([\d.]+)", out.stdout):
                pg_version = m[1]
    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {ram} RAM, {os_name};"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" PostgreSQL {pg_version or '?'}; load average now {os.getloadavg()[0]:.2f}"
    )


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "n":
        return f"{value:,.0f}" if value == int(value) else f"{value:.2f}"
    return f"{value:.1f} {unit}"


def table(before: Revision, after: Revision) -> str:
    rows = [("benchmark", "case", f"before {before.rev}", f"after {after.rev}", "after/before")]
    for bench in BENCHES:
        cases = list(before.samples.get(bench, {}))
        cases += [c for c in after.samples.get(bench, {}) if c not in cases]
        for case in cases:
            unit = before.units.get(case) or after.units.get(case) or ""
            b = before.samples.get(bench, {}).get(case)
            a = after.samples.get(bench, {}).get(case)
            mb = statistics.median(b) if b else None
            ma = statistics.median(a) if a else None
            ratio = f"{ma / mb:.2f}" if mb and ma is not None else "-"
            rows.append(
                (
                    bench,
                    case,
                    fmt(mb, unit) if mb is not None else "-",
                    fmt(ma, unit) if ma is not None else "-",
                    ratio,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("before", nargs="?", default="cc3c06c", help="a revision (default cc3c06c)")
    ap.add_argument("after", nargs="?", default="HEAD", help="a revision (default HEAD)")
    ap.add_argument("--sessions", type=int, default=200_000, help="usage and page data set")
    ap.add_argument("--runs", type=int, default=3, help="timed runs inside each usage/page run")
    ap.add_argument("--rounds", type=int, default=2, help="usage and page runs per revision")
    ap.add_argument("--fleet-rounds", type=int, default=2, help="fleet runs per revision")
    ap.add_argument("--only", default=",".join(BENCHES), help="of usage,web,fleet")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--fleet-rooms", type=int, default=200)
    ap.add_argument("--fleet-settle-s", type=float, default=5.0)
    ap.add_argument("--fleet-window-s", type=float, default=5.0)
    ap.add_argument("--fleet-new-rooms", type=int, default=10)
    ap.add_argument("--fleet-rate", type=float, default=5.0)
    ap.add_argument("--fleet-churn-s", type=float, default=15.0)
    ap.add_argument("--fleet-stayers", type=int, default=20)
    ap.add_argument("--logs", type=Path, help="keep each script's output in this folder")
    args = ap.parse_args(argv)
    benches = [b for b in args.only.split(",") if b]
    if unknown := set(benches) - set(BENCHES):
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}")
    rounds = {"usage": args.rounds, "web": args.rounds, "fleet": args.fleet_rounds}

    work = Path(tempfile.mkdtemp(prefix="before-after-"))
    logs = args.logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    revs: list[Revision] = []
    t_start = time.monotonic()
    pg_version: str | None = None
    try:
        for label, rev in (("before", args.before), ("after", args.after)):
            commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
            tree = work / label
            git("worktree", "add", "--detach", str(tree), commit)
            r = Revision(label, rev, commit, tree)
            print(f"{label}: {rev} = {commit[:12]}; observer from {check_imports(r)}", flush=True)
            revs.append(r)
        before, after = revs
        if "usage" in benches or "web" in benches:
            digests = {r.label: data_digest(r, args.sessions) for r in revs}
            if len(set(digests.values())) != 1:
                raise SystemExit(f"the two revisions generate different data: {digests}")
            print(
                f"data: the same {args.sessions:,} sessions for both (sha256 "
                f"{digests['after'][:16]})",
                flush=True,
            )
        for bench, n, before_first in pairs(benches, rounds):
            for r in (before, after) if before_first else (after, before):
                t0 = time.monotonic()
                log = logs / f"{bench}-{n}-{r.label}.txt"
                out = run_py(r.tree, bench_args(bench, args), log, done=last_line(bench, args))
                if m := next(filter(None, map(PG_VERSION.match, out.splitlines())), None):
                    pg_version = m[1]
                samples = PARSERS[bench](out)
                if not samples:
                    raise SystemExit(f"{bench} at {r.rev}: nothing parsed; see {log}")
                for case, unit, value in samples:
                    r.samples.setdefault(bench, {}).setdefault(case, []).append(value)
                    r.units[case] = unit
                print(
                    f"{bench} round {n + 1} {r.label}: {time.monotonic() - t0:.0f} s"
                    f" ({len(samples)} numbers)",
                    flush=True,
                )
        print()
        print(machine(pg_version))
        print(
            f"sessions {args.sessions:,}, runs {args.runs}, rounds {args.rounds},"
            f" fleet: {args.fleet_rooms} rooms, rounds {args.fleet_rounds};"
            f" took {(time.monotonic() - t_start) / 60:.1f} min"
        )
        print(table(before, after))
        if args.logs:
            print(f"logs: {logs}")
    finally:
        for r in revs:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(r.tree)],
                cwd=ROOT,
                capture_output=True,
            )
        git("worktree", "prune")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
