"""Telemetry: Prometheus metrics on a registry of the daemon's own, and what the tracker's
writes and notices mean for metrics and log lines.

Gauges are read when scraped (`set_function`), so nothing has to push them after each event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import assert_never

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from observer.core.changes import (
    Close,
    Notice,
    Open,
    RecordUsage,
    RefreshLastSeen,
    RequestListing,
    RoomEnded,
    RoomPresence,
    RoomSeen,
    RowWrite,
    SpanEnded,
    StuckAgents,
    UpdateAttributes,
    UsageDropped,
    UsageFlagged,
    Witnessed,
)
from observer.core.events import RoomLost
from observer.core.protocol_values import FIELDS, Field
from observer.core.timeline import span_ms
from observer.core.times import utcnow
from observer.core.vocab import END_RECONCILED, OBSERVER_LEFT, UNKNOWN_REASON

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION_BUCKETS_S = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)


def backed_up(events: int, writes: int, bound: int) -> list[str]:
    """Room events or database writes waiting past half their bound (`OBSERVER_QUEUE_MAX`,
    where the daemon stops): recording is falling behind."""
    problems = []
    if events > bound // 2:
        problems.append(f"room events backed up; {events} waiting")
    if writes > bound // 2:
        problems.append(f"database writes backed up; {writes} changes waiting")
    return problems


def fill_ratio(depth: Callable[[], float], capacity: int) -> Callable[[], float]:
    return lambda: depth() / capacity if capacity else 0.0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rooms_watched = Gauge(
            "observer_rooms_watched", "Rooms the observer is connected to", registry=r
        )
        self.sessions_open = Gauge(
            "observer_sessions_open", "Tracked participant sessions currently open", registry=r
        )
        self.sessions_opened = Counter(
            "observer_sessions_opened_total", "Sessions opened", ["kind"], registry=r
        )
        self.sessions_closed = Counter(
            "observer_sessions_closed_total",
            "Sessions closed, by disconnect reason and how the end was learned",
            ["reason", "end_source"],
            registry=r,
        )
        self.leave_to_row = Histogram(
            "observer_leave_to_row_seconds",
            "From a participant's leave to its row being closed in the database",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.room_join_latency = Histogram(
            "observer_room_join_latency_seconds",
            "From a room first being seen (listing or webhook) to the observer being inside",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.reconnects = Counter(
            "observer_reconnects_total", "The observer's own reconnects to rooms", registry=r
        )
        self.rooms_lost = Counter(
            "observer_rooms_lost_total",
            "Times the observer was put out of a room that goes on (removed by the server,"
            " e.g. DUPLICATE_IDENTITY or PARTICIPANT_REMOVED, or its connection given up),"
            " by reason",
            ["reason"],
            registry=r,
        )
        self.db_errors = Counter(
            "observer_db_errors_total", "Failed database write attempts", registry=r
        )
        self.db_retries = Counter(
            "observer_db_retries_total", "Database write batches retried", registry=r
        )
        self.db_pending_ops = Gauge(
            "observer_db_pending_ops", "Changes waiting to be written to the database", registry=r
        )
        self.webhooks = Counter(
            "observer_webhooks_total", "Webhook requests, by outcome", ["outcome"], registry=r
        )
        self.unknown_values = Counter(
            "observer_unknown_values_total",
            "Values from LiveKit this version has no word for, kept as they came, by field",
            ["field"],
            registry=r,
        )
        for field in FIELDS:
            self.unknown_values.labels(field=field)
        self.unknown_logged: set[tuple[str, str]] = set()
        self.session_duration = Histogram(
            "observer_agent_session_duration_seconds",
            "Standing time of closed agent sessions",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.stuck_agents = Gauge(
            "observer_stuck_agents", "Agents alone in a room longer than the limit", registry=r
        )
        self.rooms_unreachable = Gauge(
            "observer_rooms_unreachable",
            "Rooms LiveKit lists that no live node hosts (their node died)",
            registry=r,
        )
        self.stuck_alerts = Counter(
            "observer_stuck_agent_alerts_total", "Stuck-agent occurrences", registry=r
        )
        self.event_queue_depth = Gauge(
            "observer_event_queue_depth", "Room events waiting to be handled", registry=r
        )
        self.observers_alive = Gauge(
            "observer_fleet_observers_alive",
            "Observers sharing the database that this one counts as alive (itself included)",
            registry=r,
        )
        self.rooms_owned = Gauge(
            "observer_fleet_rooms_owned",
            "Rooms the placement gives this observer to watch",
            registry=r,
        )
        self.rooms_per_observer = Gauge(
            "observer_fleet_rooms_per_observer",
            "Rooms each live observer is inside, from its last heartbeat",
            ["observer"],
            registry=r,
        )
        self.takeovers = Counter(
            "observer_fleet_takeovers_total",
            "Observers found dead or stopped, whose rooms the others took over",
            registry=r,
        )
        self.usage_reports = Counter(
            "observer_usage_reports_total",
            "Agent usage reports received, by source (room, http) and outcome"
            " (accepted, undecodable, rejected)",
            ["source", "outcome"],
            registry=r,
        )
        self.usage_flags = Counter(
            "observer_usage_flags_total",
            "Suspicious usage: went_backwards (totals lower than kept ones), unseen_session"
            " (usage for a session this observer has not seen), silent_realtime (a realtime"
            " model reporting 0 output audio tokens)",
            ["flag"],
            registry=r,
        )
        self.sessions_seen_by_several = Gauge(
            "observer_fleet_sessions_seen_by_several",
            "Open sessions that more than one observer saw in the room itself",
            registry=r,
        )

        self.ready = Gauge(
            "observer_ready",
            "1 while recording works (LiveKit's last listing answered, the database takes"
            " heartbeats and writes, nothing backed up), else 0",
            registry=r,
        )
        self.buffer_capacity = Gauge(
            "observer_buffer_capacity",
            "Items a buffer holds before the daemon stops (OBSERVER_QUEUE_MAX): events, writes",
            ["buffer"],
            registry=r,
        )
        self.buffer_fill_ratio = Gauge(
            "observer_buffer_fill_ratio",
            "How full a buffer is, 0 to 1, of observer_buffer_capacity",
            ["buffer"],
            registry=r,
        )
        self.rooms_listed = Gauge(
            "observer_livekit_rooms_listed",
            "Rooms matching OBSERVER_ROOM_PATTERNS in LiveKit's last answered listing",
            registry=r,
        )
        self.replicas_wanted = Gauge(
            "observer_fleet_replicas_wanted",
            "OBSERVER_REPLICAS: observers wanted inside each room",
            registry=r,
        )
        self.room_process_open_fds = Gauge(
            "observer_room_process_open_fds_max",
            "Open file descriptors of the room process holding the most (0 without room"
            " processes); each has the daemon's limit, process_max_fds",
            registry=r,
        )
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        ProcessCollector(registry=r)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent); for tests and health output."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v

    def read_gauges(
        self,
        *,
        sessions_open: Callable[[], float],
        rooms_watched: Callable[[], float],
        stuck_agents: Callable[[], float],
        event_queue_depth: Callable[[], float],
        db_pending_ops: Callable[[], float],
        rooms_unreachable: Callable[[], float] = lambda: 0.0,
        ready: Callable[[], float] = lambda: 0.0,
        rooms_listed: Callable[[], float] = lambda: 0.0,
        room_process_fds: Callable[[], float] = lambda: 0.0,
        buffer_max: int = 0,
        replicas_wanted: int = 1,
    ) -> None:
        """Have each gauge read its value from its owner when scraped."""
        self.ready.set_function(ready)
        self.rooms_listed.set_function(rooms_listed)
        self.room_process_open_fds.set_function(room_process_fds)
        self.replicas_wanted.set(replicas_wanted)
        for buffer, depth in (("events", event_queue_depth), ("writes", db_pending_ops)):
            self.buffer_capacity.labels(buffer=buffer).set(buffer_max)
            self.buffer_fill_ratio.labels(buffer=buffer).set_function(fill_ratio(depth, buffer_max))
        self.rooms_unreachable.set_function(rooms_unreachable)
        self.sessions_open.set_function(sessions_open)
        self.rooms_watched.set_function(rooms_watched)
        self.stuck_agents.set_function(stuck_agents)
        self.event_queue_depth.set_function(event_queue_depth)
        self.db_pending_ops.set_function(db_pending_ops)


def count_decided_writes(m: Metrics, writes: Sequence[RowWrite]) -> None:
    """Count and log what the tracker decided to write."""
    for w in writes:
        match w:
            case Open(session=s):
                m.sessions_opened.labels(kind=s.kind).inc()
                log.info(
                    "session opened",
                    extra={
                        "room": s.room_name,
                        "participant_sid": s.participant_sid,
                        "identity": s.identity,
                        "kind": s.kind,
                        "agent_name": s.agent_name,
                        "joined_at": s.joined_at,
                    },
                )
            case Close(session=s):
                duration_s = max(0.0, (w.left_at - s.joined_at).total_seconds())
                m.sessions_closed.labels(
                    reason=w.reason or "UNKNOWN", end_source=w.end_source
                ).inc()
                if s.kind == "agent":
                    m.session_duration.observe(duration_s)
                log.info(
                    "session closed",
                    extra={
                        "room": s.room_name,
                        "participant_sid": s.participant_sid,
                        "identity": s.identity,
                        "reason": w.reason,
                        "end_source": w.end_source,
                        # as the row's, when this close is the one that counted
                        "duration_ms": span_ms(s.joined_at, w.left_at),
                    },
                )
            case RecordUsage():
                if w.report.source == "room":  # posted reports are counted as they arrive
                    m.usage_reports.labels(source="room", outcome="accepted").inc()
            case (
                RefreshLastSeen()
                | UpdateAttributes()
                | Witnessed()
                | RoomSeen()
                | RoomPresence()
                | RoomEnded()
                | SpanEnded()
            ):
                pass
            case _:
                assert_never(w)


def record_room_lost(m: Metrics, ev: RoomLost, room_names: Callable[[], Mapping[str, str]]) -> None:
    """The observer is out of a room that goes on: an alarm, as it sees nothing there until
    the next listing joins the room again. Nothing recorded changes because of it (the
    tracker closes no session on it). Losses the observer causes itself (`OBSERVER_*`: its
    stop, a room process exiting, too many held events) are logged where they happen."""
    if ev.reason in OBSERVER_LEFT:
        return
    reason = ev.reason or UNKNOWN_REASON
    m.rooms_lost.labels(reason=reason).inc()
    log.error(
        "put out of a room; watching it again from the next listing",
        extra={
            "room": room_names().get(ev.room_sid, ""),
            "room_sid": ev.room_sid,
            "reason": reason,
        },
    )


def record_backwards(m: Metrics, notes: Sequence[str]) -> None:
    """Usage totals lower than the ones kept (see `observer.db.writes.record_usage`)."""
    m.usage_flags.labels(flag="went_backwards").inc(len(notes))
    for note in notes:
        log.warning("usage totals went backwards; kept the larger", extra={"usage": note})


def record_notice(m: Metrics, notice: Notice, *, stuck_limit_s: float) -> None:
    match notice:
        case StuckAgents():
            m.stuck_alerts.inc()
            log.warning(
                "agent alone in room",
                extra={
                    "room": notice.room_name,
                    "room_sid": notice.room_sid,
                    "identities": ",".join(notice.identities),
                    "alone_since": notice.alone_since,
                    "limit_s": stuck_limit_s,
                },
            )
        case UsageFlagged():
            m.usage_flags.labels(flag=notice.flag).inc()
            log.warning(
                "suspicious usage",
                extra={
                    "flag": notice.flag,
                    "room_sid": notice.room_sid,
                    "participant_sid": notice.participant_sid,
                    "identity": notice.identity,
                },
            )
        case UsageDropped():
            m.usage_reports.labels(source="room", outcome="undecodable").inc()
            log.warning(
                "unreadable agent session message",
                extra={"room_sid": notice.room_sid, "identity": notice.identity},
            )
        case RequestListing():
            pass
        case _:
            assert_never(notice)


def observe_stored_writes(m: Metrics, writes: Sequence[object]) -> None:
    """A batch reached the database: how long after each live leave its row was closed."""
    now = utcnow()
    for w in writes:
        if isinstance(w, Close) and w.end_source != END_RECONCILED:
            m.leave_to_row.observe(max(0.0, (now - w.left_at).total_seconds()))


def record_unknown(m: Metrics, found: Sequence[tuple[Field, str]]) -> None:
    """Count values LiveKit sent that this version has no word for; log each one once."""
    for field, value in found:
        m.unknown_values.labels(field=field).inc()
        if (field, value) not in m.unknown_logged and len(m.unknown_logged) < 1000:
            m.unknown_logged.add((field, value))
            log.warning(
                "livekit sent a value this version does not know; kept as it came",
                extra={"field": field, "value": value},
            )
