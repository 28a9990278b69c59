"""The single writer: applies tracker operations to the store in order, retrying forever.

Event handling never waits for it. While the database is away, operations wait here in
memory (bounded); every operation is idempotent, so a retried batch cannot double a row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from observer.core.times import backoff_s
from observer.db.store import Store
from observer.db.writes import Write

log = logging.getLogger(__name__)

BATCH_MAX = 2000


class BufferFull(Exception):
    """More operations are waiting than the configured bound allows."""


class Writer:
    def __init__(
        self,
        store: Store,
        observer_id: str,
        *,
        retry_max_s: float,
        max_pending: int,
        on_error: Callable[[BaseException], None] = lambda _e: None,
        on_retry: Callable[[], None] = lambda: None,
        on_written: Callable[[Sequence[Write]], None] = lambda _ops: None,
        on_backwards: Callable[[list[str]], None] = lambda _notes: None,
    ) -> None:
        self._store = store
        self._observer_id = observer_id
        self._retry_max_s = retry_max_s
        self._max_pending = max_pending
        self._on_error = on_error
        self._on_retry = on_retry
        self._on_written = on_written
        self._on_backwards = on_backwards
        self._pending: list[Write] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failing_since: float | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, ops: Sequence[Write]) -> None:
        """Queue operations; raises BufferFull instead of dropping any."""
        if not ops:
            return
        if len(self._pending) + len(ops) > self._max_pending:
            raise BufferFull(f"{len(self._pending)} database operations waiting")
        self._pending.extend(ops)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:BATCH_MAX]
                try:
                    backwards = await self._store.run(self._store.apply, batch, self._observer_id)
                except SQLAlchemyError as exc:
                    attempt += 1
                    self._on_error(exc)
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                    delay = backoff_s(attempt, self._retry_max_s)
                    log.warning(
                        "database write failed; retrying",
                        extra={
                            "attempt": attempt,
                            "retry_in_s": round(delay, 2),
                            "waiting_ops": len(self._pending),
                            "error": type(exc).__name__,
                            # the driver's own class: DeadlockDetected, ConnectionRefused...
                            "cause": type(getattr(exc, "orig", None) or exc).__name__,
                        },
                    )
                    await asyncio.sleep(delay)
                    self._on_retry()
                    continue
                del self._pending[: len(batch)]
                if self.failing_since is not None:
                    log.warning(
                        "database available again",
                        extra={
                            "outage_s": round(time.monotonic() - self.failing_since, 1),
                            "attempts": attempt,
                        },
                    )
                    self.failing_since = None
                attempt = 0
                self._on_written(batch)
                if backwards:
                    self._on_backwards(backwards)
            self._idle.set()
