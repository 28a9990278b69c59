"""Benchmark: how many bytes one agent session costs on disk, on SQLite and PostgreSQL, with
what the daemon writes beside its row, and the projection for 1,000,000 sessions.

The data set is written through the store's own write path (`Store.apply`, the daemon's
writer's one call): per session a room seen with its metadata, the agent opened and
witnessed by two observers (`OBSERVER_REPLICAS`' default), closed with its timeline, three
models' usage, and LiveKit's webhook events of the room as it sends them. The profile (one
agent and one caller per room, a turn every 12 s, three state spans a turn) is printed with
the numbers. Sizes: SQLite's `dbstat` (pages of each table and its indexes), PostgreSQL's
`pg_total_relation_size` (heap, TOAST and indexes), each less the empty schema's.

    .venv/bin/python bench/bench_capacity.py --sessions 5000
    .venv/bin/python bench/bench_capacity.py --pg-url postgresql://user@host/empty_db
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sqlalchemy import text

from observer.config import normalize_database_url
from observer.core.agent_usage import ModelUsage, UsageReport
from observer.core.changes import Close, Open, RecordUsage, RoomSeen, Witnessed
from observer.core.events import TrackedSession
from observer.core.timeline import Span, Timeline
from observer.core.vocab import END_RTC
from observer.db import migrate
from observer.db.store import Store
from observer.db.writes import WebhookRecord

TABLES = (
    "sessions",
    "session_spans",
    "session_witnesses",
    "webhook_events",
    "agent_usage",
    "rooms",
)
TURN_S = 12.0  # a caller's turn and the agent's answer
STATES = ("listening", "thinking", "speaking")
OBSERVERS = ("observer-a", "observer-b")
START = datetime(2026, 3, 1, tzinfo=UTC)
PROFILE = (
    "one agent and one caller per room; calls of 1-8 min (4.5 on average); a turn every"
    f" {TURN_S:.0f} s, three state spans a turn, two alone spans; witnessed by"
    f" {len(OBSERVERS)} observers; 10 webhook events a room (room started and finished,"
    " each participant joined and left, each one's track published and unpublished);"
    " usage of an LLM, a TTS and an STT model"
)


def participant(
    sid: str, identity: str, name: str, joined: datetime, agent: bool
) -> dict[str, Any]:
    """A participant as LiveKit's webhooks carry it (protojson)."""
    p: dict[str, Any] = {
        "sid": sid,
        "identity": identity,
        "state": "ACTIVE",
        "joinedAt": str(int(joined.timestamp())),
        "joinedAtMs": str(int(joined.timestamp() * 1000)),
        "name": name,
        "version": 3,
        "permission": {
            "canSubscribe": True,
            "canPublish": True,
            "canPublishData": True,
            "agent": agent,
        },
        "isPublisher": True,
    }
    if agent:
        p["kind"] = "AGENT"
        p["attributes"] = {"lk.agent.state": "listening", "customer": "customer-042"}
    return p


def room(sid: str, name: str, meta: str, created: datetime) -> dict[str, Any]:
    return {
        "sid": sid,
        "name": name,
        "emptyTimeout": 300,
        "departureTimeout": 20,
        "creationTime": str(int(created.timestamp())),
        "creationTimeMs": str(int(created.timestamp() * 1000)),
        "turnPassword": "",
        "enabledCodecs": [{"mime": "audio/opus"}, {"mime": "video/VP8"}, {"mime": "video/H264"}],
        "metadata": meta,
        "numParticipants": 2,
    }


def hook(
    n: int, event: str, rm: dict[str, Any], at: datetime, who: dict[str, Any] | None
) -> WebhookRecord:
    eid = f"EV_{n:012d}{random.getrandbits(32):08x}"
    body: dict[str, Any] = {
        "event": event,
        "room": rm,
        "id": eid,
        "createdAt": str(int(at.timestamp())),
    }
    if who is not None:
        body["participant"] = who
    if event.startswith("track_"):
        body["track"] = {
            "sid": f"TR_{random.getrandbits(48):012x}",
            "type": "AUDIO",
            "source": "MICROPHONE",
            "mimeType": "audio/red",
            "mid": "0",
            "stream": "camera",
            "audioFeatures": ["TF_NO_NOISE_SUPPRESSION"],
        }
    return WebhookRecord(
        id=eid,
        event=event,
        room_name=rm["name"],
        room_sid=rm["sid"],
        participant_sid=who["sid"] if who else None,
        participant_identity=who["identity"] if who else None,
        created_at=at,
        received_at=at + timedelta(milliseconds=40),
        body=json.dumps(body, separators=(",", ":")),
    )


def session_ops(i: int, joined: datetime, rng: random.Random) -> tuple[list[Any], list[Any]]:
    """What the observers write for session `i`: (the first observer's ops, the second's)."""
    duration = timedelta(seconds=rng.uniform(60, 480))
    left = joined + duration
    sid, room_sid = f"PA_{i:010d}", f"RM_{i:010d}"
    room_name = f"call-{i:010d}"
    meta = json.dumps({"customer": f"customer-{i % 200:03d}", "plan": "pro"})
    agent = TrackedSession(
        room_name=room_name,
        room_sid=room_sid,
        participant_sid=sid,
        identity=f"agent-{i % 50:02d}-{i:08x}",
        name="support agent",
        kind="agent",
        agent_name=f"support-{i % 5}",
        attributes={"lk.agent.state": "listening", "customer": f"customer-{i % 200:03d}"},
        joined_at=joined,
        last_seen_at=joined,
    )
    turns = max(1, int(duration.total_seconds() / TURN_S))
    step = duration / (turns * 3)
    spans = [
        Span("state", STATES[k % 3], joined + step * k, joined + step * (k + 1))
        for k in range(turns * 3)
    ]
    spans.append(Span("alone", "", joined, joined + timedelta(seconds=2)))
    spans.append(Span("alone", "", left - timedelta(seconds=3), left))
    close = Close(
        agent.key,
        left,
        "CLIENT_INITIATED",
        END_RTC,
        None,
        left,
        agent,
        Timeline(joined, tuple(spans)),
    )
    usage = UsageReport(
        room_sid,
        sid,
        agent.identity,
        left,
        left,
        "room",
        (
            ModelUsage(
                "llm", "openai", "gpt-4o-mini", input_tokens=turns * 900, output_tokens=turns * 60
            ),
            ModelUsage("tts", "cartesia", "sonic-2", characters=turns * 180, audio_ms=turns * 4000),
            ModelUsage("stt", "deepgram", "nova-3", audio_ms=int(duration.total_seconds() * 1000)),
        ),
    )
    rm = room(room_sid, room_name, meta, joined - timedelta(seconds=2))
    caller = participant(f"PA_c{i:09d}", f"caller-{i:08x}", "Caller", joined, False)
    ag = participant(sid, agent.identity, agent.name, joined, True)
    hooks = [
        hook(i * 10 + 0, "room_started", rm, joined - timedelta(seconds=2), None),
        hook(i * 10 + 1, "participant_joined", rm, joined - timedelta(seconds=1), caller),
        hook(i * 10 + 2, "track_published", rm, joined, caller),
        hook(i * 10 + 3, "participant_joined", rm, joined, ag),
        hook(i * 10 + 4, "track_published", rm, joined + timedelta(seconds=1), ag),
        hook(i * 10 + 5, "track_unpublished", rm, left, caller),
        hook(i * 10 + 6, "participant_left", rm, left, caller),
        hook(i * 10 + 7, "track_unpublished", rm, left, ag),
        hook(i * 10 + 8, "participant_left", rm, left, ag),
        hook(i * 10 + 9, "room_finished", rm, left + timedelta(seconds=20), None),
    ]
    first: list[Any] = [
        RoomSeen(room_sid, room_name, meta, joined - timedelta(seconds=2), joined, 1, 2),
        Open(agent),
        Witnessed((agent.key,), joined),
        *hooks[:5],
        RecordUsage(usage),
        close,
        *hooks[5:],
    ]
    second: list[Any] = [Witnessed((agent.key,), joined + timedelta(milliseconds=300))]
    return first, second


def fill(store: Store, sessions: int, *, start: datetime = START, seed: int = 7) -> None:
    """`sessions` sessions through the store's write path, a batch of 100 per apply."""
    rng = random.Random(seed)
    random.seed(seed)
    batch_a: list[Any] = []
    batch_b: list[Any] = []
    gap = timedelta(days=30) / max(sessions, 1)
    for i in range(sessions):
        a, b = session_ops(i, start + gap * i, rng)
        batch_a += a
        batch_b += b
        if len(batch_a) > 1500 or i == sessions - 1:
            store.apply(batch_a, OBSERVERS[0])
            store.apply(batch_b, OBSERVERS[1])
            batch_a, batch_b = [], []


def sizes(store: Store) -> dict[str, int]:
    """Bytes on disk per table, its indexes (and TOAST) included."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            owner = dict(conn.execute(text("SELECT name, tbl_name FROM sqlite_master")).all())
            out = dict.fromkeys(TABLES, 0)
            for name, size in conn.execute(
                text("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
            ):
                table = owner.get(name, name)
                if table in out:
                    out[table] += int(size)
            return out
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        return {
            t: int(conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar_one())
            for t in TABLES
        }


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES
        }


def measure(label: str, url: str, sessions: int) -> dict[str, Any]:
    migrate.upgrade(url)
    store = Store(url)
    try:
        empty = sizes(store)
        began = time.perf_counter()
        fill(store, sessions)
        took = time.perf_counter() - began
        full = sizes(store)
        rows = counts(store)
    finally:
        store.close()
    per = {t: (full[t] - empty[t]) / sessions for t in TABLES}
    total = sum(per.values())
    print(f"\n{label}: {sessions:,} sessions written in {took:.1f} s ({sessions / took:,.0f}/s)")
    print(f"{'table':<20}{'rows/session':>14}{'bytes/session':>15}{'1,000,000 sessions':>20}")
    for t in TABLES:
        print(
            f"{t:<20}{rows[t] / sessions:>14.1f}{per[t]:>15,.0f}{per[t] * 1e6 / 2**30:>16.2f} GiB"
        )
    print(f"{'all':<20}{'':>14}{total:>15,.0f}{total * 1e6 / 2**30:>16.2f} GiB")
    detail = per["session_spans"] + per["session_witnesses"] + per["webhook_events"]
    print(
        f"what prune can delete (spans, witnesses, webhook events): {detail:,.0f} B/session,"
        f" {detail / total:.0%} of all"
    )
    return {"per_session": per, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--pg-url", help="an empty PostgreSQL database (default: a private instance)")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    print(f"profile: {PROFILE}")
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            measure("sqlite", f"sqlite:///{tmp}/capacity.db", args.sessions)
    if args.skip_postgres:
        return
    if args.pg_url:
        measure("postgresql", normalize_database_url(args.pg_url), args.sessions)
        return
    import postgres_server

    with postgres_server.PostgresServer() as pg:
        measure("postgresql", pg.create_database("capacity"), args.sessions)


if __name__ == "__main__":
    main()
