"""The rows against LiveKit's own record of each participant: the webhooks the server sent
(stored by the observer in `webhook_events`). Each participant whose end arrived
(`participant_left`, or `participant_connection_aborted` for one that never became active;
its participant info carries the server's `joinedAtMs`) is compared with the rows of its
participant sid: exactly one row, its join at `joinedAtMs`, its leave within the tolerance of
the end event's `createdAt` (whole seconds: the end lies in that second) plus the row's
stated uncertainty. Participants whose end is later than `until` are left out (their rows
may not be final yet); so are those whose end webhook was lost (the observer down when it
was sent).

    .venv/bin/python bench/soak/server_record.py postgresql://...  [--until EPOCH_S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

ENDS = ("participant_left", "participant_connection_aborted")


@dataclass
class ServerVerdict:
    participants: int = 0  # their end received, before `until`
    by_end: dict[str, int] = field(default_factory=dict)  # end event -> participants
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    left_open: list[str] = field(default_factory=list)
    join_off: list[tuple[str, float]] = field(default_factory=list)  # sid, seconds
    end_off: list[tuple[str, float]] = field(default_factory=list)  # sid, seconds
    worst_end_s: float = 0.0  # the largest |row end - server end| among those within bounds


def read(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[Any]]:
    """The end webhooks (event, body) and the rows (participant sid, joined_at, left_at,
    end_uncertainty_ms) `compare` takes."""
    ends = conn.execute(
        "select event, body from webhook_events where event = any(%s)", (list(ENDS),)
    ).fetchall()
    rows = conn.execute(
        "select participant_sid, joined_at, left_at, end_uncertainty_ms from sessions"
    ).fetchall()
    return ends, rows


def compare(
    webhooks: Iterable[tuple[str, str]],
    sessions: Iterable[tuple[str, datetime, datetime | None, int | None]],
    until: float,
    tolerance_s: float = 2.0,
) -> ServerVerdict:
    ends: dict[str, tuple[str, float, int]] = {}  # sid -> (event, createdAt, joinedAtMs)
    for event, body in webhooks:
        if event not in ENDS:
            continue
        e = json.loads(body)
        p = e.get("participant") or {}
        sid = p.get("sid")
        if not sid or (p.get("permission") or {}).get("hidden"):
            continue  # the observer itself
        joined_ms = int(p.get("joinedAtMs") or int(p.get("joinedAt", 0)) * 1000)
        ends.setdefault(sid, (event, float(e.get("createdAt", 0)), joined_ms))
    rows: dict[str, list[tuple[float, float | None, int]]] = {}
    for sid, joined, left, uncertainty in sessions:
        rows.setdefault(sid, []).append(
            (joined.timestamp(), left.timestamp() if left else None, uncertainty or 0)
        )
    v = ServerVerdict()
    for sid, (event, ended, joined_ms) in ends.items():
        if ended > until:
            continue
        v.participants += 1
        v.by_end[event] = v.by_end.get(event, 0) + 1
        mine = rows.get(sid, [])
        if not mine:
            v.lost.append(sid)
            continue
        if len(mine) > 1:
            v.doubled.append(sid)
        joined, left, uncertainty_ms = mine[0]
        if abs(joined - joined_ms / 1000) > 0.001:
            v.join_off.append((sid, joined - joined_ms / 1000))
        if left is None:
            v.left_open.append(sid)
            continue
        # createdAt is the end's second, truncated: the end lies in [createdAt, createdAt + 1)
        off = 0.0 if ended <= left < ended + 1 else min(abs(left - ended), abs(left - ended - 1))
        if off > tolerance_s + uncertainty_ms / 1000:
            v.end_off.append((sid, left - ended))
        else:
            v.worst_end_s = max(v.worst_end_s, off)
    return v


def report(v: ServerVerdict, tolerance_s: float) -> list[str]:
    lines = [
        f"against LiveKit's webhooks: {v.participants} participants ended"
        f" ({', '.join(f'{k} {n}' for k, n in sorted(v.by_end.items()))}): lost {len(v.lost)},"
        f" doubled {len(v.doubled)}, left open {len(v.left_open)}, join off"
        f" {len(v.join_off)}, end off by more than {tolerance_s} s plus the row's uncertainty"
        f" {len(v.end_off)}; the largest end difference within that {v.worst_end_s:.2f} s"
    ]
    for label, items in (
        ("lost", v.lost),
        ("doubled", v.doubled),
        ("left open", v.left_open),
        ("join off", [f"{s} {d:+.3f} s" for s, d in v.join_off]),
        ("end off", [f"{s} {d:+.1f} s" for s, d in v.end_off]),
    ):
        if items:
            lines.append(f"  {label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("conninfo")
    p.add_argument("--until", type=float, help="epoch seconds (default: 60 s ago)")
    p.add_argument("--tolerance-s", type=float, default=2.0)
    args = p.parse_args()
    until = args.until if args.until is not None else time.time() - 60
    with psycopg.connect(args.conninfo) as conn:
        v = compare(*read(conn), until, args.tolerance_s)
    print("\n".join(report(v, args.tolerance_s)))
    bad = v.lost or v.doubled or v.left_open or v.join_off or v.end_off
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
