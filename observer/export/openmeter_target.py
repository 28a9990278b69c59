"""OpenMeter: each event a CloudEvent (structured JSON, built by the `cloudevents`
package) POSTed to the events URL, with the API token as a bearer token.

`id` is the ledger's identifier and `source` the export's (`observer` unless the settings
file says otherwise): OpenMeter deduplicates on the two. `subject` is the customer id,
`type` the quantity's event name, `time` the usage's time; `data` carries the quantity as
exact decimal text (`quantity`) for the meter's value property, and the agent, the kind and
the day for its groupings. Answers are read as the http target reads them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent

from observer.core.times import iso
from observer.db.exports import LedgerRow
from observer.export.http_target import outcome_of
from observer.export.sending import Outcome
from observer.export.settings import ExportSettings


def cloud_event(row: LedgerRow, settings: ExportSettings) -> CloudEvent:
    """The event as OpenMeter ingests it."""
    data: dict[str, Any] = {
        "quantity": str(row.quantity),
        "agent": row.key.agent,
        "kind": row.key.kind,
        "customer_value": row.customer_value,
        "period_start": iso(row.key.start),
        "period_end": iso(row.key.end),
        "sequence": row.seq,
    }
    attributes = {
        "id": row.identifier,
        "source": settings.source,
        "type": settings.event_name(row.key.kind),
        "subject": row.key.customer,
        "time": row.event_time,
    }
    return CloudEvent(attributes, data)


class OpenMeterTarget:
    name = "openmeter"

    def __init__(self, settings: ExportSettings) -> None:
        assert settings.url is not None
        self.settings = settings
        self.url = settings.url
        headers = {"Authorization": f"Bearer {settings.secret}"} if settings.secret else {}
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.timeout_s), headers=headers
        )

    async def send(self, row: LedgerRow) -> Outcome:
        message = to_structured_event(cloud_event(row, self.settings))
        try:
            async with self.session.post(
                self.url, data=message.body, headers=message.headers
            ) as resp:
                text = await resp.text()
                return outcome_of(resp.status, text, resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome("retry", "timed out (it may have arrived: resent by its identifier)")
        except aiohttp.ClientError as exc:
            return Outcome("retry", f"unreachable: {type(exc).__name__}")

    async def close(self) -> None:
        await self.session.close()
