"""LiveKit webhook events: verified with livekit-api, translated into tracker events."""

from __future__ import annotations

import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from livekit import api
from livekit.protocol import models

from observer.core.agent_usage import BadUsage, UsageReport, model_usage
from observer.core.events import (
    Event,
    SeenParticipant,
    WebhookJoined,
    WebhookLeft,
    WebhookRoomFinished,
)
from observer.core.protocol_values import detail_value, participant_kind, reason_value
from observer.core.recent import Recent
from observer.db.writes import WebhookRecord

# The ids of events handled lately, answered `duplicate` without asking the database (which
# decides for older ones): ten minutes at least, twenty at most, and never more than a cap.
# LiveKit gives up on an event within five minutes (its default client timeout; queued
# events older than 30 s are dropped), so its redeliveries fall inside the window.
SEEN_KEEP = timedelta(minutes=10)
SEEN_MAX = 50_000
LEFT_EVENTS = frozenset({"participant_left", "participant_connection_aborted"})
KNOWN_EVENTS = frozenset(
    {
        "room_started",
        "room_finished",
        "participant_joined",
        "participant_left",
        "participant_connection_aborted",
        "track_published",
        "track_unpublished",
        "egress_started",
        "egress_updated",
        "egress_ended",
        "ingress_started",
        "ingress_ended",
    }
)


class Rejected(Exception):
    """A request that is not an authentic LiveKit event; `status` is the HTTP answer."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


def authenticate(receiver: api.WebhookReceiver, body: bytes, authorization: str | None) -> str:
    """The body as text, once livekit-api has checked its signature and hash (a JWT signed
    with the API key and secret, carrying the body's sha256), as LiveKit signs webhooks."""
    return _checked(receiver, body, authorization)[0]


def verify(
    receiver: api.WebhookReceiver, body: bytes, authorization: str | None
) -> api.WebhookEvent:
    """Check the signature and body hash (livekit-api does both), then parse. An event
    this version does not know is accepted (and kept) rather than refused: LiveKit never
    retries a refused event, so refusing it would lose it."""
    _text, event = _checked(receiver, body, authorization)
    if not event.id or not event.event:
        raise Rejected(400, "malformed", "not a LiveKit webhook event")
    return event


def _checked(
    receiver: api.WebhookReceiver, body: bytes, authorization: str | None
) -> tuple[str, api.WebhookEvent]:
    from google.protobuf.json_format import ParseError

    if not authorization:
        raise Rejected(401, "unauthorized", "missing Authorization header")
    token = authorization.removeprefix("Bearer ").strip()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "malformed", "body is not UTF-8") from None
    try:
        # livekit-api checks the token, then the body's hash, then reads the body as a
        # webhook event (ignoring fields it does not know)
        event = receiver.receive(text, token)
    except ParseError:
        raise Rejected(400, "malformed", "body is not a LiveKit webhook event") from None
    except (jwt.PyJWTError, binascii.Error):  # bad, expired or foreign signature
        raise Rejected(401, "unauthorized", "signature check failed") from None
    except Exception as exc:
        # livekit-api reports a missing or mismatched body hash as a plain Exception;
        # anything more specific is a bug and stays one
        if type(exc) is not Exception:
            raise
        raise Rejected(401, "unauthorized", "signature check failed") from None
    return text, event


def usage_report(text: str, received_at: datetime) -> UsageReport:
    """A posted usage report (see README, `POST /usage`), checked field by field."""
    try:
        data = json.loads(text)
    except ValueError:
        raise Rejected(400, "malformed", "body is not JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "malformed", "body must be a JSON object")
    fields = {}
    for name in ("room_sid", "participant_sid", "participant_identity", "reported_at"):
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > 200:
            raise Rejected(400, "malformed", f"{name} must be a non-empty string")
        fields[name] = value
    try:
        reported_at = datetime.fromisoformat(fields["reported_at"].replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(400, "malformed", "reported_at must be an ISO 8601 time") from None
    if reported_at.tzinfo is None:
        raise Rejected(400, "malformed", "reported_at must carry its UTC offset")
    entries = data.get("usage")
    if not isinstance(entries, list) or not entries or len(entries) > 100:
        raise Rejected(400, "malformed", "usage must be a list of 1 to 100 entries")
    try:
        models = tuple(model_usage(e) for e in entries)
    except BadUsage as exc:
        raise Rejected(400, "malformed", f"usage: {exc}") from None
    if len({m.key for m in models}) != len(models):
        raise Rejected(400, "malformed", "usage: one entry per kind, provider and model")
    return UsageReport(
        room_sid=fields["room_sid"],
        participant_sid=fields["participant_sid"],
        identity=fields["participant_identity"],
        reported_at=reported_at.astimezone(UTC),
        received_at=received_at,
        source="http",
        models=models,
    )


class SeenIds:
    """The ids of the events handled lately (see SEEN_KEEP)."""

    def __init__(self) -> None:
        self._ids: Recent[str, None] = Recent(SEEN_KEEP, SEEN_MAX)

    def __len__(self) -> int:
        return len(self._ids)

    def first(self, event_id: str, at: datetime) -> bool:
        """False if `event_id` was handled lately; otherwise remember it from `at`."""
        if event_id in self._ids:
            return False
        self._ids.age(at)
        self._ids.add(event_id, None)
        return True

    def forget(self, event_id: str) -> None:
        """The event was not kept after all: its redelivery must count."""
        self._ids.discard(event_id)


def record(ev: api.WebhookEvent, body: str, received_at: datetime) -> WebhookRecord:
    """What the raw-events table keeps of an event."""
    return WebhookRecord(
        id=ev.id,
        event=ev.event,
        room_name=ev.room.name or None,
        room_sid=ev.room.sid or None,
        participant_sid=ev.participant.sid or None,
        participant_identity=ev.participant.identity or None,
        created_at=created_at(ev),
        received_at=received_at,
        body=body,
    )


def created_at(ev: api.WebhookEvent) -> datetime:
    # createdAt has one-second resolution: it is the best leave time a webhook gives.
    return datetime.fromtimestamp(ev.created_at, UTC)


def seen_participant(
    p: models.ParticipantInfo, fallback: datetime, *, agent_attributes: bool
) -> SeenParticipant:
    joined_ms = p.joined_at_ms or p.joined_at * 1000
    return SeenParticipant(
        sid=p.sid,
        identity=p.identity,
        name=p.name,
        kind=participant_kind(
            _name(models.ParticipantInfo.Kind, p.kind),
            p.kind,
            p.attributes,
            agent_attributes=agent_attributes,
        ),
        attributes=dict(p.attributes),
        joined_at=datetime.fromtimestamp(joined_ms / 1000, UTC) if joined_ms else fallback,
        kind_details=tuple(
            detail_value(_name(models.ParticipantInfo.KindDetail, d), d) for d in p.kind_details
        ),
        join_precision_ms=1 if p.joined_at_ms else 1000,  # before server 1.8.4: seconds
    )


def translate(
    ev: api.WebhookEvent, ignore_identity_prefix: str, *, agent_attributes: bool
) -> list[Event]:
    """Tracker events for a verified webhook event (the observer's own presence ignored);
    `agent_attributes` as in `participant_kind`."""
    at = created_at(ev)
    if ev.event == "room_finished" and ev.room.sid:
        return [WebhookRoomFinished(ev.room.sid, at)]
    if ev.event not in LEFT_EVENTS and ev.event != "participant_joined":
        return []
    p = ev.participant
    if not p.sid or not ev.room.sid or p.identity.startswith(ignore_identity_prefix):
        return []
    who = seen_participant(p, at, agent_attributes=agent_attributes)
    if ev.event == "participant_joined":
        return [WebhookJoined(ev.room.name, ev.room.sid, who, at)]
    reason = (
        reason_value(_name(models.DisconnectReason, p.disconnect_reason), p.disconnect_reason)
        if p.disconnect_reason
        else ""
    )
    return [WebhookLeft(ev.room.name, ev.room.sid, who, reason, at)]


def _name(enum: Any, number: int) -> str | None:
    """The installed protocol's name for an enum value, None for a number it does not name
    (protobuf keeps such numbers as they came)."""
    try:
        return str(enum.Name(number))
    except ValueError:
        return None
