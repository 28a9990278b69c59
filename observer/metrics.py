"""Prometheus metrics, on a registry of the daemon's own (tests read sample values from it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION_BUCKETS_S = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)


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
        self.session_duration = Histogram(
            "observer_agent_session_duration_seconds",
            "Standing time of closed agent sessions",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.stuck_agents = Gauge(
            "observer_stuck_agents", "Agents alone in a room longer than the limit", registry=r
        )
        self.stuck_alerts = Counter(
            "observer_stuck_agent_alerts_total", "Stuck-agent occurrences", registry=r
        )
        self.event_queue_depth = Gauge(
            "observer_event_queue_depth", "Room events waiting to be handled", registry=r
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent); for tests and health output."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
