"""`observer export` to an HTTP endpoint (a fake billing system of these tests that
deduplicates by identifier), on SQLite and PostgreSQL: exactly once through every fault,
and what the fake holds == the ledger == `observer usage`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billing_fake import BillingFake, billing_fake
from livekit_server import free_tcp_port

from observer.cli import main
from observer.core.changes import Close, Open
from observer.core.events import TrackedSession
from observer.core.vocab import END_RTC
from observer.db.store import Store

pytestmark = pytest.mark.unit

MAR = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "whsec-test-0123456789abcdef"
FINAL = "2026-04-01T02:00:00Z"


def session(
    sid: str, joined: datetime, seconds: int, *, customer: str | None, agent: str = "bot"
) -> list[Any]:
    s = TrackedSession(
        room_name=f"room-{sid}",
        room_sid=f"RM_{sid}",
        participant_sid=sid,
        identity=f"id-{sid}",
        name="",
        kind="agent",
        agent_name=agent,
        attributes={} if customer is None else {"customer": customer},
        joined_at=joined,
        last_seen_at=joined,
    )
    left = joined + timedelta(seconds=seconds)
    return [Open(s), Close(s.key, left, "CLIENT_INITIATED", END_RTC, None, left, s)]


def add(db_url: str, *ops: list[Any]) -> None:
    store = Store(db_url)
    try:
        store.apply([op for o in ops for op in o], "obs")
    finally:
        store.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def march(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Agent sessions of two customers over three days of March 2026, the month finalized."""
    add(
        db_url,
        session("a1", MAR + timedelta(hours=9), 150, customer="acme"),  # 3 minutes
        session("a2", MAR + timedelta(hours=10), 20, customer="acme"),  # 1
        session("a3", MAR + timedelta(days=1, hours=9), 600, customer="acme", agent="sales"),
        session("b1", MAR + timedelta(days=2, hours=9), 61, customer="beta"),  # 2
        # across midnight: 30 s on the 3rd, 70 s on the 4th
        session("b2", MAR + timedelta(days=3, seconds=-30), 100, customer="beta"),
    )
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(("OBSERVER_", "LIVEKIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", db_url)
    code = main(["reconcile", "--period", "2026-03", "--no-settle", "--now", FINAL])
    assert code == 0
    return db_url


def use(monkeypatch: pytest.MonkeyPatch, url: str, **more: str) -> None:
    monkeypatch.setenv("OBSERVER_EXPORT_TARGET", "http")
    monkeypatch.setenv("OBSERVER_EXPORT_URL", url)
    monkeypatch.setenv("OBSERVER_EXPORT_SECRET", SECRET)
    monkeypatch.setenv("OBSERVER_EXPORT_CUSTOMER_KEY", "attribute:customer")
    monkeypatch.setenv("OBSERVER_EXPORT_RATE_PER_S", "1000")
    for k, v in more.items():
        monkeypatch.setenv(f"OBSERVER_EXPORT_{k.upper()}", v)


def usage_minutes(capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str, str], Decimal]:
    code, out, _ = run(
        capsys,
        "usage",
        "--from",
        "2026-03-01",
        "--to",
        "2026-04-01",
        "--by",
        "attribute:customer,agent,day",
        "--format",
        "json",
        "--now",
        FINAL,
    )
    assert code == 0
    return {
        (r["attribute:customer"], r["agent"], r["day"]): Decimal(r["billable_minutes"])
        for r in json.loads(out)
        if r["billable_minutes"]
    }


def ledger_minutes(db_url: str, target: str = "http") -> dict[tuple[str, str, str], Decimal]:
    store = Store(db_url)
    try:
        out: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        for r in store.export_rows(target):
            if r.state != "refused" and r.key.kind == "minutes":
                out[(r.key.customer, r.key.agent, f"{r.key.start:%Y-%m-%d}")] += r.quantity
        return {k: v for k, v in out.items() if v}
    finally:
        store.close()


def fake_minutes(fake: BillingFake) -> dict[tuple[str, str, str], Decimal]:
    return {(c, a, d): q for (c, a, d, kind), q in fake.totals().items() if kind == "minutes" and q}


def assert_counted(
    capsys: pytest.CaptureFixture[str], db_url: str, fake: BillingFake, target: str = "http"
) -> None:
    """What the fake holds == the ledger == `observer usage`."""
    expected = usage_minutes(capsys)
    assert fake_minutes(fake) == ledger_minutes(db_url, target) == expected
    store = Store(db_url)
    try:
        assert not store.export_pending(target)
    finally:
        store.close()


EXPECTED = {
    ("acme", "bot", "2026-03-01"): Decimal(4),
    ("acme", "sales", "2026-03-02"): Decimal(10),
    ("beta", "bot", "2026-03-03"): Decimal(3),  # 61 s -> 2, and 30 s before midnight -> 1
    ("beta", "bot", "2026-03-04"): Decimal(2),
}


def test_sends_once_and_the_second_run_sends_nothing(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        code, out, err = run(capsys, "export")
        assert code == 0, out + err
        assert "4 new event(s) (0 correction(s))" in out
        assert "4 acknowledged, 0 refused, 0 still pending" in out
        assert fake_minutes(fake) == EXPECTED
        assert fake.bad_signatures == 0
        requests = fake.requests
        code, out, _ = run(capsys, "export")
        assert code == 0
        assert "0 new event(s)" in out and "4 unchanged" in out
        assert fake.requests == requests  # nothing sent the second time
        assert_counted(capsys, march, fake)
        assert SECRET not in out + err


def test_faults_lose_nothing_and_double_nothing(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events", timeout_s="0.5", attempts="6")
        fake.faults.extend(["500", "429", "slow", "500", "slow"])
        metrics = tmp_path / "export.prom"
        code, out, err = run(capsys, "export", "--metrics-file", str(metrics))
        assert code == 0, out + err
        assert "4 acknowledged" in out and "5 retried" in out
        # the slow answers' events arrived, and their retries were taken as duplicates
        assert fake.duplicates == 2
        assert len(fake.events) == 4
        assert_counted(capsys, march, fake)
        prom = metrics.read_text()
        assert 'observer_export_events_retried_total{target="http"} 5.0' in prom
        assert 'observer_export_events_sent_total{target="http"} 4.0' in prom
        assert 'observer_export_events_pending{target="http"} 0.0' in prom


def test_api_down_leaves_events_pending_then_sends_them(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_tcp_port()
    use(monkeypatch, f"http://127.0.0.1:{port}/events", attempts="1")
    code, out, _ = run(capsys, "export")
    assert code == 1
    assert "0 acknowledged, 0 refused, 4 still pending" in out
    with billing_fake(SECRET, port=port) as fake:
        code, out, _ = run(capsys, "export")
        assert code == 0, out
        assert "0 new event(s)" in out and "4 acknowledged" in out
        assert_counted(capsys, march, fake)


def test_refused_event_is_held_once_and_retried_on_demand(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        fake.faults.append("400")
        code, out, _ = run(capsys, "export")
        assert code == 1
        assert "3 acknowledged, 1 refused" in out
        refused = [line for line in out.splitlines() if line.startswith("refused: ")]
        assert len(refused) == 1 and "400 customer unknown" in refused[0]
        assert "--retry-refused" in refused[0]
        requests = fake.requests
        # the next runs send nothing for it, and keep saying so (exit 1)
        for _ in range(2):
            metrics = tmp_path / "export.prom"
            code, out, _ = run(capsys, "export", "--metrics-file", str(metrics))
            assert code == 1, out
            assert "0 new event(s)" in out and "1 key(s) held by a refusal" in out
            assert [line for line in out.splitlines() if line.startswith("refused: ")] == refused
        assert fake.requests == requests
        prom = metrics.read_text()
        assert 'observer_export_events_refused_outstanding{target="http"} 1.0' in prom
        assert 'observer_export_events_refused_total{target="http"} 1.0' in prom
        assert 'observer_export_events_sent_total{target="http"} 3.0' in prom
        assert 'observer_export_last_run_timestamp_seconds{target="http"}' in prom
        store = Store(march)
        try:
            rows = store.export_rows("http")
            assert [r.state for r in rows].count("refused") == 1 and len(rows) == 4
        finally:
            store.close()
        # the operator fixed it: sent again, under a new identifier, once
        code, out, _ = run(capsys, "export", "--retry-refused", "--metrics-file", str(metrics))
        assert code == 0, out
        assert "1 new event(s) (1 correction(s))" in out and "1 acknowledged" in out
        assert "refused: " not in out
        prom = metrics.read_text()
        assert 'observer_export_events_refused_outstanding{target="http"} 0.0' in prom
        assert 'observer_export_events_refused_total{target="http"} 1.0' in prom
        assert 'observer_export_events_sent_total{target="http"} 4.0' in prom
        code, out, _ = run(capsys, "export")
        assert code == 0 and "0 new event(s)" in out
        assert_counted(capsys, march, fake)


def test_a_refusal_fixed_by_the_mapping_is_released_by_retry_refused(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        fake.faults.append("400")
        assert run(capsys, "export")[0] == 1
        store = Store(march)
        try:
            (refused,) = store.export_refused("http")
        finally:
            store.close()
        # the customer value was not the billing id: the operator maps it
        value = refused.customer_value
        other = ({"acme", "beta"} - {value}).pop()
        mapping = tmp_path / "export.toml"
        mapping.write_text(f'[customers]\n{value} = "cus_{value}"\n{other} = "{other}"\n')
        monkeypatch.setenv("OBSERVER_EXPORT_FILE", str(mapping))
        code, out, _ = run(capsys, "export")
        # the refused usage billed nothing: it is sent under the new id; what the old id
        # acknowledged stays billed there (a mapping change takes nothing back); the
        # refusal stays listed until dealt with
        assert code == 1 and "refused: " in out and "0 still pending" in out
        assert f"remapped: customer {value!r} now maps to 'cus_{value}'" in out
        requests = fake.requests
        code, out, _ = run(capsys, "export", "--retry-refused")
        assert code == 0, out
        assert "1 refused key(s) released" in out and "refused: " not in out
        assert fake.requests == requests  # nothing sent under the refused id
        assert run(capsys, "export")[0] == 0
        assert fake_minutes(fake) == ledger_minutes(march)
        assert sum(fake_minutes(fake).values()) == sum(EXPECTED.values())
        billed = fake_minutes(fake)
        day = f"{refused.key.start:%Y-%m-%d}"
        assert billed[(f"cus_{value}", refused.key.agent, day)] == refused.quantity
        assert {(c, d) for c, _a, d in billed if c.startswith("cus_")} == {(f"cus_{value}", day)}
        assert all(Decimal(e["raw"]["quantity"]) > 0 for e in fake.events.values())


def test_late_data_sends_only_the_difference(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        assert run(capsys, "export")[0] == 0
        # a session learned late, in a day already sent: 2 more minutes for acme on the 1st
        add(march, session("late", MAR + timedelta(hours=15), 90, customer="acme"))
        code, out, _ = run(capsys, "export")
        assert code == 0
        assert "1 new event(s) (1 correction(s))" in out
        corrections = [e["raw"] for e in fake.events.values() if e["raw"]["correction"]]
        assert [(c["customer"], c["quantity"], c["sequence"]) for c in corrections] == [
            ("acme", "2", 1)
        ]
        assert fake_minutes(fake)[("acme", "bot", "2026-03-01")] == 6
        assert_counted(capsys, march, fake)


def test_dry_run_prints_and_writes_nothing(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        code, out, _ = run(capsys, "export", "--dry-run", "--format", "json")
        assert code == 0
        doc = json.loads(out)
        assert [(e["customer"], e["agent"], e["quantity"]) for e in doc["events"]] == [
            ("acme", "bot", "4"),
            ("acme", "sales", "10"),
            ("beta", "bot", "3"),
            ("beta", "bot", "2"),
        ]
        assert all(len(e["identifier"]) <= 100 for e in doc["events"])
        code, out, _ = run(capsys, "export", "--dry-run")
        assert code == 0 and "acme" in out and "sales" in out
        assert fake.requests == 0
        assert ledger_minutes(march) == {}


def test_unmapped_customer_is_listed_and_not_sent(
    march: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    add(march, session("n1", MAR + timedelta(hours=12), 30, customer=None))
    mapping = tmp_path / "export.toml"
    mapping.write_text('[customers]\nacme = "cus_ACME"\n')
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events", file=str(mapping))
        code, out, _ = run(capsys, "export")
        assert code == 1
        assert "customer 'beta' has no billing id (5 minute(s))" in out
        assert "1 minute(s) of sessions without attribute:customer" in out
        assert {c for c, _a, _d in fake_minutes(fake)} == {"cus_ACME"}


def test_a_mapping_change_never_corrects_what_was_sent(
    march: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    mapping = tmp_path / "export.toml"
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events", file=str(mapping))
        mapping.write_text('[customers]\nacme = "cus_ACME"\nbeta = "cus_BETA"\n')
        assert run(capsys, "export")[0] == 0
        before = fake_minutes(fake)
        assert before[("cus_ACME", "bot", "2026-03-01")] == 4
        # acme dropped from the table: listed, exit 1, nothing sent or taken back
        mapping.write_text('[customers]\nbeta = "cus_BETA"\n')
        for _ in range(2):
            code, out, _ = run(capsys, "export")
            assert code == 1
            assert "customer 'acme' has no billing id (14 minute(s))" in out
            assert "2 key(s) sent for it before are left as sent" in out
            assert "0 new event(s)" in out
        assert fake_minutes(fake) == before
        # acme mapped to another id, and a late session on a day billed as cus_ACME: the
        # day stays with cus_ACME (corrected there by the difference), never billed twice
        mapping.write_text('[customers]\nacme = "cus_NEW"\nbeta = "cus_BETA"\n')
        add(march, session("late", MAR + timedelta(hours=15), 90, customer="acme"))
        code, out, _ = run(capsys, "export")
        assert code == 0
        assert "remapped: customer 'acme' now maps to 'cus_NEW', was 'cus_ACME'" in out
        after = fake_minutes(fake)
        assert after == {**before, ("cus_ACME", "bot", "2026-03-01"): Decimal(6)}
        assert not any(c == "cus_NEW" for c, _a, _d in after)
        assert all(q > 0 for e in fake.events.values() for q in [Decimal(e["raw"]["quantity"])])
        assert run(capsys, "export")[0] == 0
        assert fake_minutes(fake) == after


@pytest.mark.parametrize(
    ("env", "file", "says"),
    [
        ({"TARGET": "paypal"}, None, "OBSERVER_EXPORT_TARGET must be one of http, stripe"),
        ({"URL": "ftp://x"}, None, "export url must be an http:// or https:// URL"),
        ({"CUSTOMER_KEY": "customer"}, None, "customer_key must be attribute:KEY"),
        ({}, "[customers]\nacme = 5\n", "export [customers] maps 'acme' to no text"),
        ({}, "[customers\n", "is not TOML"),
        ({}, 'secret = "sk_live_x"\n', "holds a secret"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    march: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: dict[str, str],
    file: str | None,
    says: str,
) -> None:
    use(monkeypatch, "http://127.0.0.1:9/events", **env)
    if file is not None:
        (tmp_path / "export.toml").write_text(file)
        monkeypatch.setenv("OBSERVER_EXPORT_FILE", str(tmp_path / "export.toml"))
    code, out, err = run(capsys, "export")
    assert code == 2
    assert out == "" and len(err.strip().splitlines()) == 1 and says in err
    assert SECRET not in err and "sk_live_x" not in err
    assert ledger_minutes(march) == {}


@pytest.mark.databases("sqlite")
def test_killed_mid_batch_resends_only_what_was_not_acknowledged(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # more events: 40 customers on the 10th of March
    add(
        march,
        *(
            session(f"k{i}", MAR + timedelta(days=9, hours=1), 60 * (i + 1), customer=f"c{i:02}")
            for i in range(40)
        ),
    )
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        fake.stall_after = 20  # the 21st request and those after it hang
        proc = subprocess.Popen(
            [sys.executable, "-m", "observer", "export"],
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while fake.requests <= 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert len(fake.events) == 20
        store = Store(march)
        try:
            assert len(store.export_rows("http")) == 44  # all recorded before sending
            pending = len(store.export_pending("http"))
        finally:
            store.close()
        assert pending > 44 - 20  # some acknowledged by the fake were not answered yet
        fake.stall_after = None
        fake._release.set()
        code, out, _ = run(capsys, "export")
        assert code == 0, out
        assert "0 new event(s)" in out and f"{pending} acknowledged" in out
        assert len(fake.events) == 44
        assert_counted(capsys, march, fake)


def test_reconcile_then_export(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake(SECRET) as fake:
        use(monkeypatch, fake.url + "/events")
        args = ("reconcile", "--period", "2026-03", "--no-settle", "--now", FINAL, "--export")
        code, out, _ = run(capsys, *args)
        assert code == 0, out
        assert "rollup: final since" in out and "4 acknowledged" in out
        assert_counted(capsys, march, fake)
        # bad export settings: reconcile writes nothing either
        monkeypatch.setenv("OBSERVER_EXPORT_TARGET", "nowhere")
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "" and "OBSERVER_EXPORT_TARGET" in err


def test_openmeter_cloudevents_deduplicated_by_source_and_id(
    march: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with billing_fake() as fake:
        use(monkeypatch, fake.url + "/openmeter/api/v1/events", timeout_s="0.5")
        monkeypatch.setenv("OBSERVER_EXPORT_TARGET", "openmeter")
        fake.faults.extend(["slow", "429", "slow"])
        code, out, err = run(capsys, "export")
        assert code == 0, out + err
        assert "4 acknowledged" in out and "3 retried" in out
        assert fake.duplicates == 2 and len(fake.events) == 4
        store = Store(march)
        try:
            identifiers = {r.identifier for r in store.export_rows("openmeter")}
        finally:
            store.close()
        for e in fake.events.values():
            raw = e["raw"]
            assert raw["specversion"] == "1.0" and raw["source"] == "observer"
            assert raw["type"] == "agent_minutes" and raw["subject"] in ("acme", "beta")
            assert raw["time"].endswith("T23:59:59Z") and raw["id"] in identifiers
        assert_counted(capsys, march, fake, "openmeter")
        assert SECRET not in out + err
