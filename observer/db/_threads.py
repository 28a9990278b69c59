"""The threads a store runs its blocking work on for async code: a bounded number, a
bounded wait for one (then Busy), and items of a producer handed over one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# a stream's producer waits this long at most for its consumer to take the next item
STREAM_STALL_S = 60.0


class Busy(Exception):
    """Every thread stayed busy for as long as a caller may wait."""


class _Gone(Exception):
    """The consumer of a stream stopped taking."""


class Threads:
    """`workers` threads; a call waits for a free one at most `wait_s` (None: as long as
    it takes)."""

    def __init__(self, workers: int, *, wait_s: float | None, name: str) -> None:
        self.workers = workers
        self._wait_s = wait_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._gate: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._producing: set[asyncio.Future[None]] = set()  # streams' producers under way

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on one of the threads; raises Busy when none is free
        within the wait."""
        return await self._run(self._wait_s, functools.partial(fn, *args, **kwargs))

    async def run_queued(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`run`, waiting for a thread as long as it takes (background work)."""
        return await self._run(None, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[[], object]) -> None:
        """`fn()` on one of the threads, from any thread, answered by nobody (not at all
        once they are shut down)."""
        with contextlib.suppress(RuntimeError):  # shut down
            self._executor.submit(fn)

    def shutdown(self) -> None:
        """After the work under way."""
        self._executor.shutdown(wait=True)

    async def _run(self, wait_s: float | None, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate[0] is not loop:
            self._gate = (loop, asyncio.Semaphore(self.workers))
        gate = self._gate[1]
        try:
            async with asyncio.timeout(wait_s):
                await gate.acquire()
        except TimeoutError:
            raise Busy(f"all {self.workers} threads busy for {wait_s:g} s") from None

        def release(_f: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(gate.release)

        try:
            job = self._executor.submit(contextvars.copy_context().run, call)
        except BaseException:
            gate.release()
            raise
        # the thread is given back when the work ends, even if its caller stopped waiting
        job.add_done_callback(release)
        return await asyncio.wrap_future(job)

    async def stream(
        self, fn: Callable[P, Iterator[T]], *args: P.args, **kwargs: P.kwargs
    ) -> AsyncGenerator[T, None]:
        """The items of `fn(*args, **kwargs)`, produced on one of the threads (connections
        it opens are opened and closed there) and handed over one at a time: the producer
        waits while the consumer holds two. A consumer that stops, or takes nothing for
        `STREAM_STALL_S`, stops the producer at its next item. Raises what the producer
        raised, or Busy as `run`; close it (`contextlib.aclosing`) when stopping early."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=2)
        gone = threading.Event()

        def hand(done: bool, item: Any) -> None:
            put = asyncio.run_coroutine_threadsafe(handed.put((done, item)), loop)
            waited = 0.0
            while True:
                try:
                    put.result(timeout=0.5)
                    return
                except FutureTimeout:
                    waited += 0.5
                    if gone.is_set() or waited >= STREAM_STALL_S:
                        put.cancel()
                        raise _Gone from None

        def produce() -> None:
            items = fn(*args, **kwargs)
            try:
                for item in items:
                    hand(False, item)
                hand(True, None)
            except _Gone:
                pass
            except Exception as exc:  # the consumer raises it
                with contextlib.suppress(_Gone):
                    hand(True, exc)
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # in this thread: a connection is given back where it was taken

        async def start() -> None:
            try:
                await self._run(self._wait_s, produce)
            except Exception as exc:  # it never started (Busy): nothing was handed yet
                handed.put_nowait((True, exc))

        producing = asyncio.ensure_future(start())
        self._producing.add(producing)
        producing.add_done_callback(self._producing.discard)
        try:
            while True:
                done, item = await handed.get()
                if isinstance(item, Exception):
                    raise item
                if done:
                    return
                yield item
        finally:
            gone.set()  # the producer stops at its next item at the latest
