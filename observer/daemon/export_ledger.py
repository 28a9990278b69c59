"""The `exports` ledger on the daemon's /metrics: what `observer export` (a command, run on
a schedule, not by the daemon) left pending, refused or unanswered, for the operator who
scrapes the daemon. The counts are the ledger's, the same on every observer of one
database; they are read every `READ_EVERY_S` on the page's threads and kept, so a scrape
never waits on the database, and a read that fails keeps the last counts (and logs)."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from observer.db.export_summary import TargetSummary
from observer.db.store import Store
from observer.export.metrics import LedgerCollector

log = logging.getLogger(__name__)

READ_EVERY_S = 60.0


class ExportLedger:
    """The ledger's counts per target, registered on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.summaries: list[TargetSummary] = []
        registry.register(LedgerCollector(lambda: self.summaries))

    async def read(self, store: Store) -> None:
        try:
            self.summaries = await store.run_queued(store.export_summaries)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not read the export ledger", extra={"detail": str(exc)})
        except Exception:  # the counts are a report: recording never stops for them
            log.exception("reading the export ledger failed")

    async def refresh_forever(self, store: Store, every_s: float = READ_EVERY_S) -> None:
        while True:
            await self.read(store)
            await asyncio.sleep(every_s)
