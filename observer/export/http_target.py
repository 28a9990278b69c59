"""Any HTTP endpoint: each event POSTed as JSON, signed with HMAC-SHA256.

The signature is over `<timestamp>.<body>` with the shared secret, sent as
`X-Observer-Signature: t=<timestamp>,v1=<hex>` (the header's name is a setting); the
receiver checks it and the timestamp's age, and deduplicates by the event's `id` (also
sent as `Idempotency-Key`). 2xx and 409 (already held) acknowledge; 408, 429 and 5xx are
retried; any other answer refuses the event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp

from observer.core.times import iso
from observer.db.exports import LedgerRow
from observer.export.sending import Outcome
from observer.export.settings import ExportSettings

RETRIED = frozenset({408, 429})


def event_body(row: LedgerRow, settings: ExportSettings) -> dict[str, Any]:
    """The JSON an event is sent as."""
    return {
        "id": row.identifier,
        "type": settings.event_name(row.key.kind),
        "customer": row.key.customer,
        "customer_value": row.customer_value,
        "agent": row.key.agent,
        "kind": row.key.kind,
        "quantity": str(row.quantity),
        "period_start": iso(row.key.start),
        "period_end": iso(row.key.end),
        "time": iso(row.event_time),
        "sequence": row.seq,
        "correction": row.seq > 0,
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300) -> bool:
    """Whether a signature header is right for the body and recent: what a receiver does."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(secret, ts, body)
    return hmac.compare_digest(expected, header) and abs(now - ts) <= tolerance_s


def outcome_of(status: int, text: str, retry_after: str | None) -> Outcome:
    """What an HTTP answer means for the event."""
    reason = " ".join(text.split())[:200]
    answer = f"{status} {reason}".strip()
    if 200 <= status < 300 or status == 409:
        return Outcome("acknowledged", answer)
    if status in RETRIED or status >= 500:
        return Outcome("retry", answer, _seconds(retry_after))
    return Outcome("refused", answer)


def _seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class HttpTarget:
    name = "http"

    def __init__(self, settings: ExportSettings) -> None:
        assert settings.url is not None
        self.settings = settings
        self.url = settings.url
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.timeout_s)
        )

    async def send(self, row: LedgerRow) -> Outcome:
        body = json.dumps(event_body(row, self.settings), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.identifier,
            self.settings.signature_header: signature(self.settings.secret, int(time.time()), body),
        }
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                text = await resp.text()
                return outcome_of(resp.status, text, resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome("retry", "timed out (it may have arrived: resent by its identifier)")
        except aiohttp.ClientError as exc:
            return Outcome("retry", f"unreachable: {type(exc).__name__}")

    async def close(self) -> None:
        await self.session.close()
        await asyncio.sleep(0)
