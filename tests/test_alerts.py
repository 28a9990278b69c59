"""The alerting rules and the Grafana dashboard in deploy/: promtool checks the rules and
runs their unit tests, and every metric they name is one the daemon really exports (the
names come from a constructed observer's own registry, not from a list kept here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from observer.config import Settings
from observer.core.events import Tick
from observer.core.times import utcnow
from observer.daemon.service import Observer
from observer.db.store import Store

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "observer-rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "observer-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "observer-dashboard.json"
# Series Prometheus makes itself for every target, not exported by the daemon.
FROM_PROMETHEUS = {"up"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Each family's exposed sample names, by type (the registry drops `_total` from a counter's
# family name).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/ensure-promtool.sh")
    return path


def observer(**settings: str) -> Observer:
    s = Settings.from_mapping(
        {
            "LIVEKIT_URL": "ws://127.0.0.1:9",
            "LIVEKIT_API_KEY": "k",
            "LIVEKIT_API_SECRET": "s",
            "OBSERVER_DATABASE_URL": "sqlite://",
            **settings,
        },
        need_livekit=True,
    )
    assert s.livekit is not None
    return Observer(s, Store("sqlite://"), s.livekit)


def exported_names() -> set[str]:
    """Every sample name the daemon's /metrics can show, from a constructed observer (its
    registry, with the gauges read on scrape already wired)."""
    names = set()
    for family in observer().metrics.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    found = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(\s*\()?", e):
        if m.group(2) is None and m.group(1) not in PROMQL_WORDS:
            found.add(m.group(1))
    return found


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_the_gauges_the_alerts_need_read_the_daemon() -> None:
    obs = observer(OBSERVER_QUEUE_MAX="10", OBSERVER_REPLICAS="2")
    m = obs.metrics
    assert m.value("observer_buffer_capacity", {"buffer": "events"}) == 10
    assert m.value("observer_buffer_capacity", {"buffer": "writes"}) == 10
    assert m.value("observer_fleet_replicas_wanted") == 2
    assert m.value("observer_ready") == 0  # not started: no listing answered yet
    obs.rooms = SimpleNamespace(listing_ok=True, listed_count=lambda: 3, unreachable={})
    obs.fleet = SimpleNamespace(database_answers=True)
    assert m.value("observer_ready") == 1
    assert m.value("observer_livekit_rooms_listed") == 3
    for _ in range(6):  # over half of OBSERVER_QUEUE_MAX: backed up
        obs.queue.put_nowait(Tick(utcnow()))
    assert m.value("observer_buffer_fill_ratio", {"buffer": "events"}) == 0.6
    assert m.value("observer_buffer_fill_ratio", {"buffer": "writes"}) == 0
    assert m.value("observer_ready") == 0
    while not obs.queue.empty():
        obs.queue.get_nowait()
    assert m.value("observer_ready") == 1
    obs.writer.failing_since = 1.0
    assert m.value("observer_ready") == 0
    obs.writer.failing_since = None
    obs.fleet.database_answers = False
    assert m.value("observer_ready") == 0


def test_metric_names_are_read_out_of_expressions() -> None:
    assert metric_names(
        'sum by (job, le) (rate(a_bucket{job="$job", x=~"b|c"}[5m])) > 0.05 * b_total'
        " and on (job) max(c) / 2^20 unless bool d offset 5m"
    ) == {"a_bucket", "b_total", "c", "d"}


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=RULES_TEST.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {str(r["alert"]) for r in rules()}
    cases = [
        case
        for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert firing == alerts and quiet == alerts
    assert len(alerts) == 13


def test_the_rules_name_only_exported_metrics() -> None:
    exported = exported_names() | FROM_PROMETHEUS
    for rule in rules():
        names = metric_names(str(rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], sorted(names - exported))


def test_the_dashboard_names_only_exported_metrics() -> None:
    exported = exported_names() | FROM_PROMETHEUS
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, sorted(names - exported))


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query, given to it as a recording rule."""
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"panel:query_{i}", "expr": e}
                    for i, e in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr
