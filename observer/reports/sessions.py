"""Rendering session rows as a table, CSV or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from observer.core.times import iso
from observer.db.schema import RoomRow, SessionRow
from observer.reports.render import csv_records, csv_text, table

COLUMNS = (
    "id",
    "room_name",
    "room_sid",
    "participant_sid",
    "participant_identity",
    "participant_name",
    "participant_kind",
    "agent_name",
    "joined_at",
    "left_at",
    "duration_ms",
    "disconnect_reason",
    "end_source",
    "end_uncertainty_ms",
    "last_seen_at",
    "observer_id",
    "observed_from",
    "state_initializing_ms",
    "state_idle_ms",
    "state_listening_ms",
    "state_thinking_ms",
    "state_speaking_ms",
    "state_other_ms",
    "state_unknown_ms",
    "alone_ms",
)


def _iso(v: datetime | None) -> str | None:
    return iso(v, "milliseconds") if v else None


def row_dict(r: SessionRow | Row[Any]) -> dict[str, Any]:
    d: dict[str, Any] = {c: getattr(r, c) for c in COLUMNS}
    for c in ("joined_at", "left_at", "last_seen_at", "observed_from"):
        d[c] = _iso(d[c])
    d["attributes"] = dict(r.attributes or {})
    return d


def human_duration(ms: int | None) -> str:
    if ms is None:
        return "open"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def session_chunks(batches: Iterable[Sequence[SessionRow | Row[Any]]], fmt: str) -> Iterator[str]:
    """`render_sessions` as JSON or CSV, a part per batch of rows (an export streamed)."""
    if fmt == "csv":
        yield csv_text(COLUMNS, [])
        for rows in batches:
            yield csv_records([d[c] for c in COLUMNS] for d in map(row_dict, rows))
        return
    if fmt != "json":
        raise ValueError(f"no streamed format {fmt!r}")
    first = True
    for rows in batches:
        if rows:
            # each row as json.dumps(list, indent=2) writes the list's items (the lines of
            # JSON text are its structure: a newline inside a string is escaped)
            items = ("  " + json.dumps(row_dict(r), indent=2).replace("\n", "\n  ") for r in rows)
            yield ("[\n" if first else ",\n") + ",\n".join(items)
            first = False
    yield "[]\n" if first else "\n]\n"


def render_sessions(rows: Sequence[SessionRow], fmt: str) -> str:
    if fmt in ("json", "csv"):
        return "".join(session_chunks([rows], fmt))
    header = ("joined_at", "room", "identity", "agent", "kind", "duration", "reason", "source")
    lines = table(
        [header]
        + [
            (
                _iso(r.joined_at) or "",
                r.room_name,
                r.participant_identity,
                r.agent_name or "",
                r.participant_kind,
                human_duration(r.duration_ms),
                r.disconnect_reason or "",
                r.end_source or "",
            )
            for r in rows
        ]
    )
    lines.append(f"({len(rows)} sessions)")
    return "\n".join(lines) + "\n"


ROOM_COLUMNS = (
    "sid",
    "name",
    "metadata",
    "created_at",
    "first_seen_at",
    "ended_at",
    "end_reason",
    "duration_ms",
    "max_agents",
    "max_participants",
)


def room_dict(r: RoomRow) -> dict[str, Any]:
    start = r.created_at or r.first_seen_at
    d: dict[str, Any] = {
        "sid": r.sid,
        "name": r.name,
        "metadata": r.metadata_,
        "created_at": _iso(r.created_at),
        "first_seen_at": _iso(r.first_seen_at),
        "ended_at": _iso(r.ended_at),
        "end_reason": r.end_reason,
        "duration_ms": (
            max(0, round((r.ended_at - start).total_seconds() * 1000)) if r.ended_at else None
        ),
        "max_agents": r.max_agents,
        "max_participants": r.max_participants,
    }
    return d


def render_rooms(rows: Sequence[RoomRow], fmt: str) -> str:
    """Rooms as a table, CSV or JSON; a room's duration runs from the server's creation
    time (or when first seen) to its end, and is empty while it is live."""
    dicts = [room_dict(r) for r in rows]
    if fmt == "json":
        return json.dumps(dicts, indent=2) + "\n"
    if fmt == "csv":
        return csv_text(ROOM_COLUMNS, ([d[c] for c in ROOM_COLUMNS] for d in dicts))
    header = ("created_at", "room", "duration", "end", "agents", "participants", "metadata")
    lines = table(
        [header]
        + [
            (
                d["created_at"] or d["first_seen_at"] or "",
                d["name"],
                human_duration(d["duration_ms"]) if d["ended_at"] else "live",
                d["end_reason"] or "",
                str(d["max_agents"]),
                str(d["max_participants"]),
                d["metadata"] if len(d["metadata"]) <= 40 else d["metadata"][:39] + "…",
            )
            for d in dicts
        ]
    )
    lines.append(f"({len(rows)} rooms)")
    return "\n".join(lines) + "\n"
