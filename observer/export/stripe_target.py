"""Stripe Billing meter events, through the official `stripe` package.

Each event is `POST /v1/billing/meter_events` with `event_name` (the quantity kind's name
in the settings), `payload` {`stripe_customer_id`, `value`}, `identifier` (the ledger's,
also the request's idempotency key) and `timestamp` (the usage's time: Stripe takes the
last 35 days and up to 5 minutes ahead; the planner keeps the rest back with a reason).
Stripe meter events carry no negative values: a correction that takes usage back is not
sent (the planner lists it), to be settled in Stripe (a credit, or the event cancelled).

The client's own retries are off: retries are `sending`'s, the same for every target.
"""

from __future__ import annotations

from typing import Any

import stripe

from observer.db.exports import LedgerRow
from observer.export.sending import Outcome
from observer.export.settings import ExportSettings


def meter_event_params(row: LedgerRow, settings: ExportSettings) -> dict[str, Any]:
    """The meter event's parameters, as Stripe's API takes them."""
    return {
        "event_name": settings.event_name(row.key.kind),
        "payload": {"stripe_customer_id": row.key.customer, "value": str(row.quantity)},
        "identifier": row.identifier,
        "timestamp": int(row.event_time.timestamp()),
    }


def outcome_of(exc: stripe.StripeError) -> Outcome:
    """What a Stripe error means for the event (never a secret in the answer)."""
    status = exc.http_status or 0
    message = " ".join(str(exc.user_message or exc.code or type(exc).__name__).split())[:200]
    answer = f"{status or type(exc).__name__} {message}".strip()
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        retry_after = (exc.headers or {}).get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:
            seconds = None
        return Outcome("retry", answer, seconds)
    if isinstance(exc, stripe.APIConnectionError) or status >= 500 or status in (408, 409):
        return Outcome("retry", answer)
    # the identifier was taken already: this event arrived on an earlier try
    if "identifier" in message.lower() and "already" in message.lower():
        return Outcome("acknowledged", answer)
    return Outcome("refused", answer)


class StripeTarget:
    name = "stripe"

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        base = {"api": settings.url.rstrip("/")} if settings.url else None
        self.http = stripe.AIOHTTPClient(timeout=settings.timeout_s)
        self.client = stripe.StripeClient(
            settings.secret,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=0,
            http_client=self.http,
        )

    async def send(self, row: LedgerRow) -> Outcome:
        params = meter_event_params(row, self.settings)
        try:
            event = await self.client.v1.billing.meter_events.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": row.identifier},
            )
        except stripe.StripeError as exc:
            return outcome_of(exc)
        except TimeoutError:
            return Outcome("retry", "timed out (it may have arrived: resent by its identifier)")
        return Outcome("acknowledged", f"200 {event.identifier or row.identifier}")

    async def close(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]
