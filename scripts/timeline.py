#!/usr/bin/env python3
"""Where a parallel test run's time went, from the file `pytest --timeline=FILE` writes:
each worker's busy time and when it finished, the modules and the tests that took longest,
and those that used the most CPU (the worker's own and its ended children's).

    scripts/timeline.py FILE [N]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: scripts/timeline.py FILE [N]", file=sys.stderr)
        return 2
    top = int(argv[1]) if len(argv) == 2 else 15
    try:
        with open(argv[0], encoding="utf-8") as f:
            spans = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        print(f"timeline: cannot read {argv[0]}: {exc}", file=sys.stderr)
        return 2
    if not spans:
        print(f"timeline: {argv[0]} holds no test", file=sys.stderr)
        return 2
    t0 = min(s["start"] for s in spans)
    busy: dict[str, float] = defaultdict(float)
    end: dict[str, float] = defaultdict(float)
    modules: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    for s in spans:
        took = s["stop"] - s["start"]
        busy[s["worker"]] += took
        end[s["worker"]] = max(end[s["worker"]], s["stop"] - t0)
        modules[s["test"].split("::")[0]] += took
        cpu[s["test"].split("::")[0]] += s.get("cpu_s", 0.0)
    print(f"{len(spans)} tests, {sum(busy.values()):.0f} s of test time")
    for w in sorted(busy):
        print(f"  {w:>6}: busy {busy[w]:6.0f} s, last test ended at {end[w]:6.0f} s")
    print(f"modules by time (top {top}):")
    for mod, took in sorted(modules.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {took:6.1f} s  {mod}")
    print(f"tests by time (top {top}):")
    for s in sorted(spans, key=lambda s: s["start"] - s["stop"])[:top]:
        took = s["stop"] - s["start"]
        print(f"  {took:6.1f} s  {s['worker']:>6} @ {s['start'] - t0:5.0f} s  {s['test']}")
    if any("cpu_s" in s for s in spans):
        print(f"CPU: {sum(cpu.values()):.0f} s in all; modules by CPU (top {top}):")
        for mod, used in sorted(cpu.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {used:6.1f} s  {mod}")
        print(f"tests by CPU (top {top}):")
        for s in sorted(spans, key=lambda s: -s.get("cpu_s", 0.0))[:top]:
            print(f"  {s.get('cpu_s', 0.0):6.1f} s  {s['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
