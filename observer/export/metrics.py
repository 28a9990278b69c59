"""The export's metrics, read from the `exports` ledger when collected (a custom collector
on a registry of their own): what was acknowledged, refused, retried and is pending is
counted from the rows, so a run killed halfway, or a run of another host, leaves them
true. `observer export --metrics-file` writes them after each run, for node_exporter's
textfile collector."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.db.export_summary import TargetSummary


class LedgerCollector(Collector):
    """Per target: the ledger's counts (`read` is called on each collection), the time of
    the last run and the negative corrections it left to settle by hand."""

    def __init__(
        self,
        read: Callable[[], Sequence[TargetSummary]],
        *,
        last_run: Callable[[], dict[str, float]] = dict,
        to_settle: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.read = read
        self.last_run = last_run
        self.to_settle = to_settle

    def collect(self) -> Iterator[Metric]:
        labels = ["target"]
        sent = CounterMetricFamily(
            "observer_export_events_sent",
            "Events the billing system acknowledged (not those recorded without being sent)",
            labels=labels,
        )
        settled = CounterMetricFamily(
            "observer_export_events_settled",
            "Events recorded acknowledged without being sent: negative corrections settled"
            " by hand (--settled), refused keys released (--retry-refused)",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "observer_export_events_refused",
            "Events the billing system refused, retried or not",
            labels=labels,
        )
        retried = CounterMetricFamily(
            "observer_export_events_retried",
            "Tries beyond each event's first (5xx, 429, timeouts, an unreachable API)",
            labels=labels,
        )
        outstanding = GaugeMetricFamily(
            "observer_export_events_refused_outstanding",
            "Refused events not sent again since (observer export --retry-refused)",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "observer_export_events_pending",
            "Events recorded and not acknowledged yet",
            labels=labels,
        )
        answered = GaugeMetricFamily(
            "observer_export_last_answer_timestamp_seconds",
            "When the billing system last answered an event (Unix time)",
            labels=labels,
        )
        for s in self.read():
            t = [s.target]
            sent.add_metric(t, s.acknowledged - s.settled)
            settled.add_metric(t, s.settled)
            refused.add_metric(t, s.refused)
            retried.add_metric(t, s.retries)
            outstanding.add_metric(t, s.refused_outstanding)
            pending.add_metric(t, s.pending)
            if s.last_answered_at is not None:
                answered.add_metric(t, s.last_answered_at.timestamp())
        yield from (sent, settled, refused, retried, outstanding, pending, answered)
        last = GaugeMetricFamily(
            "observer_export_last_run_timestamp_seconds",
            "When observer export last ran to its end (Unix time)",
            labels=labels,
        )
        for target, at in self.last_run().items():
            last.add_metric([target], at)
        yield last
        by_hand = GaugeMetricFamily(
            "observer_export_corrections_to_settle",
            "Negative corrections the target cannot carry, listed and waiting for --settled",
            labels=labels,
        )
        for target, n in self.to_settle().items():
            by_hand.add_metric([target], n)
        yield by_hand


def ledger_registry(
    read: Callable[[], Sequence[TargetSummary]],
    *,
    last_run: Callable[[], dict[str, float]] = dict,
    to_settle: Callable[[], dict[str, int]] = dict,
) -> CollectorRegistry:
    """A registry holding only the export's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(read, last_run=last_run, to_settle=to_settle))
    return registry
