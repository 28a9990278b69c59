"""Values from a newer LiveKit than the observer knows: kept as they came, counted, and
never a crash or a lost event. Forged webhook bodies are signed with livekit-api's own
token helpers and read back through the observer's verification."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest
from livekit import api

from observer.config import ConfigError, Settings
from observer.core.events import (
    ParticipantJoined,
    ParticipantLeft,
    RoomJoined,
    SeenParticipant,
    WebhookJoined,
    WebhookLeft,
)
from observer.core.protocol_values import (
    detail_value,
    kind_setting,
    kind_value,
    reason_value,
    unknown_in,
)
from observer.core.vocab import keeps_company
from observer.daemon import telemetry, webhooks

pytestmark = pytest.mark.unit

KEY, SECRET = "test-key", "a-test-secret-long-enough-for-hs256-0123456789"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def seen(kind: str = "agent", details: tuple[str, ...] = ()) -> SeenParticipant:
    return SeenParticipant("PA_1", "someone", "", kind, {}, NOW, details)


@pytest.mark.parametrize(
    ("name", "number", "stored"),
    [
        ("AGENT", 4, "agent"),
        ("PARTICIPANT_KIND_SIP", 3, "sip"),
        ("CONNECTOR", 7, "connector"),
        ("BRIDGE", 8, "bridge"),
        ("ROBOT", 11, "robot"),  # named by a newer protocol package
        (None, 9, "kind_9"),
        ("", 12, "kind_12"),
    ],
)
def test_kind_is_stored_by_name_else_by_number(name: str | None, number: int, stored: str) -> None:
    assert kind_value(name, number) == stored


def test_details_and_reasons_are_stored_by_name_else_by_number() -> None:
    assert detail_value("CLOUD_AGENT", 0) == "CLOUD_AGENT"
    assert detail_value("PARTICIPANT_KIND_DETAIL_SIMULATION", 5) == "SIMULATION"
    assert detail_value(None, 99) == "DETAIL_99"
    assert reason_value("AGENT_ERROR", 16) == "AGENT_ERROR"
    assert reason_value(None, 17) == "REASON_17"


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("agent", "agent"),
        (" SIP ", "sip"),
        ("4", "agent"),
        ("7", "connector"),
        ("8", "bridge"),
        ("9", "kind_9"),
        ("kind_9", "kind_9"),
        ("kind_4", "agent"),
        ("robot", None),
        ("-1", None),
        ("", None),
        ("²", None),
    ],
)
def test_a_kind_setting_takes_a_name_or_a_protocol_number(given: str, kind: str | None) -> None:
    assert kind_setting(given) == kind


def test_track_kinds_accept_a_number_the_observer_cannot_name() -> None:
    base = {"LIVEKIT_URL": "ws://127.0.0.1:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    s = Settings.from_mapping({**base, "OBSERVER_TRACK_KINDS": "agent, 9, 7"})
    assert s.track_kinds == {"agent", "kind_9", "connector"}
    with pytest.raises(ConfigError, match="robot"):
        Settings.from_mapping({**base, "OBSERVER_TRACK_KINDS": "agent,robot"})


def test_a_kind_the_observer_does_not_know_keeps_an_agent_company() -> None:
    assert keeps_company("kind_9") and keeps_company("connector") and keeps_company("standard")
    assert not keeps_company("agent") and not keeps_company("egress")


def test_unknown_values_are_found_in_events() -> None:
    odd = seen("kind_9", ("CLOUD_AGENT", "DETAIL_99"))
    assert unknown_in(ParticipantJoined("r", "RM_1", odd, NOW)) == (
        ("participant_kind", "kind_9"),
        ("kind_detail", "DETAIL_99"),
    )
    assert unknown_in(ParticipantJoined("r", "RM_1", seen("connector", ("SIMULATION",)), NOW)) == ()
    assert unknown_in(ParticipantLeft("RM_1", "PA_1", "REASON_17", NOW)) == (
        ("disconnect_reason", "REASON_17"),
    )
    assert unknown_in(ParticipantLeft("RM_1", "PA_1", "AGENT_ERROR", NOW)) == ()
    assert unknown_in(ParticipantLeft("RM_1", "PA_1", "OBSERVER_STOPPED", NOW)) == ()
    joined = RoomJoined("r", "RM_1", (seen(), seen("kind_9")), NOW)
    assert unknown_in(joined) == (("participant_kind", "kind_9"),)


def test_the_counter_counts_every_value_and_logs_each_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = telemetry.Metrics()
    for field in ("participant_kind", "kind_detail", "disconnect_reason", "webhook_event"):
        assert m.registry.get_sample_value("observer_unknown_values_total", {"field": field}) == 0
    found = (("participant_kind", "kind_9"),)
    telemetry.record_unknown(m, found)
    telemetry.record_unknown(m, found)
    assert m.value("observer_unknown_values_total", {"field": "participant_kind"}) == 2
    logged = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(logged) == 1


# ---- webhooks, forged with livekit-api's helpers ------------------------------------------


def body_of(event: str, **participant: object) -> str:
    return json.dumps(
        {
            "event": event,
            "id": f"EV_{event}",
            "createdAt": "1796472000",
            "room": {"sid": "RM_new", "name": "newer"},
            "participant": {"sid": "PA_new", "identity": "someone", **participant},
            # fields this protocol package may not have: ignored, kept in the raw body
            "agentJob": {"id": "AJ_1", "state": {"status": 9}},
        }
    )


def signed(body: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()


def receive(body: str) -> api.WebhookEvent:
    receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    return webhooks.verify(receiver, body.encode(), signed(body))


@pytest.mark.parametrize("event", ["agent_job_started", "agent_job_ended", "something_new"])
def test_an_unknown_webhook_event_is_accepted_and_kept(event: str) -> None:
    body = body_of(event, kind="AGENT")
    ev = receive(body)  # a refusal would be lost: LiveKit does not retry a 4xx
    assert ev.event == event and event not in webhooks.KNOWN_EVENTS
    rec = webhooks.record(ev, body, NOW)
    assert rec.event == event and rec.body == body and rec.participant_sid == "PA_new"
    assert webhooks.translate(ev, "lk-observer-", agent_attributes=True) == []


def test_a_leave_with_unknown_kind_detail_and_reason_is_kept_as_it_came() -> None:
    body = body_of(
        "participant_left",
        kind=9,
        kindDetails=["CLOUD_AGENT", 99, "SIMULATION"],
        disconnectReason=99,
        joinedAtMs="1796471990250",
    )
    (left,) = webhooks.translate(receive(body), "lk-observer-", agent_attributes=True)
    assert isinstance(left, WebhookLeft)
    assert left.reason == "REASON_99"
    assert left.participant.kind == "kind_9"
    assert left.participant.kind_details == ("CLOUD_AGENT", "DETAIL_99", "SIMULATION")
    assert unknown_in(left) == (
        ("participant_kind", "kind_9"),
        ("kind_detail", "DETAIL_99"),
        ("disconnect_reason", "REASON_99"),
    )


@pytest.mark.parametrize(
    ("reason", "stored"), [("AGENT_ERROR", "AGENT_ERROR"), ("MEDIA_FAILURE", "MEDIA_FAILURE")]
)
def test_the_newer_named_reasons_and_kinds_keep_their_names(reason: str, stored: str) -> None:
    body = body_of("participant_left", kind="CONNECTOR", disconnectReason=reason)
    (left,) = webhooks.translate(receive(body), "lk-observer-", agent_attributes=True)
    assert isinstance(left, WebhookLeft)
    assert (left.reason, left.participant.kind) == (stored, "connector")
    body = body_of("participant_joined", kind="BRIDGE", kindDetails=["BRIDGE_RTSP"])
    (joined,) = webhooks.translate(receive(body), "lk-observer-", agent_attributes=True)
    assert isinstance(joined, WebhookJoined)
    assert joined.participant.kind == "bridge"
    assert joined.participant.kind_details == ("BRIDGE_RTSP",)
