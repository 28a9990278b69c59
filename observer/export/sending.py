"""Pending events sent to a target, paced, with retries of what can heal, and each answer
written to the ledger.

An event is retried on a 5xx, on a 429 (after its `Retry-After`), on a timeout (the
request may have reached the server: its identifier makes the retry safe) and when the
API cannot be reached; a refusal (another 4xx) is final. An event whose tries are spent
stays pending, for the next run. Answers are written in batches, so a process killed
mid-batch leaves some answered events pending: the next run resends them under the same
identifier and the billing system takes them once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from observer.db.exports import Answer, LedgerRow
from observer.db.store import Store

PAGE = 500  # pending rows read at a time
ANSWERS_BATCH = 50  # answers written to the ledger at a time
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Outcome:
    """A target's answer to one try."""

    state: Literal["acknowledged", "refused", "retry"]
    answer: str  # one line: status and a short reason; never a secret
    retry_after_s: float | None = None


class Target(Protocol):
    """One billing system: sends one event per call, and never raises for an answer."""

    name: str

    async def send(self, row: LedgerRow) -> Outcome: ...

    async def close(self) -> None: ...


@dataclass
class SendSummary:
    acknowledged: int = 0
    refused: int = 0
    pending: int = 0  # tries spent without an answer: left for the next run
    retries: int = 0
    refusals: list[tuple[LedgerRow, str]] = field(default_factory=list)


class Pace:
    """At most `rate_per_s` starts per second, spread evenly."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate_per_s
        self.clock = clock
        self.next_at = 0.0

    async def wait(self) -> None:
        now = self.clock()
        at = max(now, self.next_at)
        self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


def backoff_s(attempt: int, base_s: float, retry_after_s: float | None) -> float:
    """How long to wait before try `attempt + 1`: the server's Retry-After when it gave
    one, else `base_s` doubled per try, at most `BACKOFF_MAX_S`."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), BACKOFF_MAX_S)
    return float(min(base_s * 2**attempt, BACKOFF_MAX_S))


async def send_pending(
    store: Store,
    target: Target,
    *,
    rate_per_s: float,
    attempts: int,
    concurrency: int = 8,
    retry_base_s: float = 0.5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> SendSummary:
    """Send every pending event of the target, in the order recorded."""
    summary = SendSummary()
    pace = Pace(rate_per_s)
    answers: list[Answer] = []
    gate = asyncio.Semaphore(concurrency)

    async def flush() -> None:
        batch, answers[:] = list(answers), []
        if batch:
            await store.run_queued(store.export_answers, batch, datetime.now(UTC))

    async def one(row: LedgerRow) -> None:
        async with gate:
            tries, last = 0, Outcome("retry", "not sent")
            while tries < attempts:
                if tries:
                    summary.retries += 1
                    await sleep(backoff_s(tries - 1, retry_base_s, last.retry_after_s))
                await pace.wait()
                tries += 1
                last = await target.send(row)
                if last.state != "retry":
                    break
        if last.state == "acknowledged":
            summary.acknowledged += 1
            answers.append(Answer(row.id, "acknowledged", last.answer, tries))
        elif last.state == "refused":
            summary.refused += 1
            summary.refusals.append((row, last.answer))
            answers.append(Answer(row.id, "refused", last.answer, tries))
        else:
            summary.pending += 1
            answers.append(Answer(row.id, "pending", last.answer, tries))
        if len(answers) >= ANSWERS_BATCH:
            await flush()

    after = 0
    try:
        while rows := await store.run_queued(
            store.export_pending, target.name, after=after, limit=PAGE
        ):
            after = rows[-1].id
            await asyncio.gather(*(one(r) for r in rows))
    finally:
        await flush()
    return summary
