"""The compatibility matrix: which live tests make up each scenario, what a run against one
livekit-server release gave, and the table of releases x scenarios (scripts/compat.sh).

A test joins the matrix with ``@pytest.mark.compat("scenario")``; ``pytest -m compat``
runs them against whatever binary ``LIVEKIT_SERVER_BIN`` names, and
``--compat-report=FILE`` writes each scenario's outcome there as JSON.

    python tests/compat.py REPORT.json...      prints the table
    python tests/compat.py --agents FILE...     prints what the observer made of each
                                                framework's agent (AGENT_MATRIX_OUT lines)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The scenarios, in the table's order, and what each one shows.
SCENARIOS: dict[str, str] = {
    "invisible": "rooms close on their own timeouts with the observer inside; no seat taken",
    "creates-no-room": "the observer creates no room: not a gone one, not after a restart",
    "join-time": "an agent present before the observer gets the server's join time",
    "leave-reason": "a leave is recorded at once with the server's reason",
    "crash-leave": "a killed agent's session closes when the server announces it",
    "signal-cut": "a 2 s cut of the observer's signal connection changes no row",
    "server-restart": "livekit-server killed and restarted with agents inside",
    "webhooks": "sessions the observer did not see are recorded from webhooks",
    "usage": "model usage from lk.agent.session lands with its session",
    "python-agent": "a livekit-agents worker process: its agent, name, times and usage or none",
    "node-agent": "an @livekit/agents (Node) worker: its agent, name, times, no usage",
}

PASSED, FAILED, SKIPPED = "pass", "FAIL", "skip"


def scenario_of(marker_args: tuple[object, ...], nodeid: str) -> str:
    """The scenario a ``compat`` mark names; a mark without a known one is a usage error."""
    if len(marker_args) != 1 or marker_args[0] not in SCENARIOS:
        raise ValueError(
            f"{nodeid}: @pytest.mark.compat takes one of {', '.join(SCENARIOS)}, "
            f"got {marker_args!r}"
        )
    return str(marker_args[0])


def server_version(binary: Path) -> str:
    """What ``server --version`` says (its last word), or why it could not say."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc.__class__.__name__})"
    words = out.split()
    return words[-1] if words else "unknown"


def outcome(outcomes: Iterable[str]) -> str:
    """A scenario's cell: FAIL if any of its tests failed, pass if all passed, else skip."""
    seen = list(outcomes)
    if FAILED in seen:
        return FAILED
    if seen and all(o == PASSED for o in seen):
        return PASSED
    return SKIPPED if seen else "-"


def report(version: str, tests: Mapping[str, tuple[str, str]]) -> dict[str, object]:
    """The JSON a run writes: per scenario its tests' outcomes (node id -> outcome)."""
    scenarios: dict[str, dict[str, str]] = {s: {} for s in SCENARIOS}
    for nodeid, (scenario, result) in tests.items():
        scenarios[scenario][nodeid] = result
    return {"server_version": version, "scenarios": scenarios}


def table(reports: list[Mapping[str, object]]) -> str:
    """Releases down, scenarios across; the failing tests listed under the table."""
    head = ["release", *SCENARIOS]
    rows = []
    failures = []
    for rep in reports:
        scenarios = rep["scenarios"]
        assert isinstance(scenarios, dict)
        cells = [str(rep["server_version"])]
        for name in SCENARIOS:
            tests = scenarios.get(name, {})
            cells.append(outcome(tests.values()))
            failures += [f"{rep['server_version']}: {t}" for t, o in tests.items() if o == FAILED]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if failures:
        lines += ["", "failed:", *(f"  {f}" for f in failures)]
    return "\n".join(lines)


def agents_table(observations: list[Mapping[str, object]]) -> str:
    """Agent frameworks x releases x livekit-server releases: recognised as an agent, the
    agent name recorded, and model usage captured ("none reported" when the report says
    `no_usage_reported`)."""
    head = ["framework", "version", "server", "agent", "agent_name", "usage"]
    rows = []
    for o in observations:
        report = o.get("report")
        usage = "none reported"
        if isinstance(report, dict) and not report.get("no_usage_reported"):
            usage = f"yes ({o['usage_rows']} model rows)" if o.get("usage_rows") else "0 rows"
        rows.append(
            [
                str(o["framework"]),
                str(o["version"]),
                str(o["server"]),
                "yes" if o["kind"] == "agent" else f"no ({o['kind']})",
                str(o["agent_name"]) if o["agent_name"] else "missing",
                usage,
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "--agents":
        seen = [json.loads(line) for p in argv[1:] for line in Path(p).read_text().splitlines()]
        print(agents_table(seen))
        return 0
    print(table([json.loads(Path(p).read_text()) for p in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
