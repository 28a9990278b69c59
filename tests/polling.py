"""The one way tests wait for something to become true: poll, with a deadline and a message."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def until(
    get: Callable[[], T | Awaitable[T]],
    ok: Callable[[T], object] = bool,
    *,
    timeout_s: float,
    what: str | Callable[[T], object] = "condition not met",
    interval_s: float = 0.1,
) -> T:
    """Call ``get()`` (plain or async) until ``ok`` holds for what it returns, and return
    that. After ``timeout_s`` fail with ``what``, or ``what(last value)``, and the time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if inspect.isawaitable(value):
            value = await value
        got: Any = value
        if ok(got):
            return got
        if time.monotonic() > deadline:
            said = what(got) if callable(what) else what
            raise AssertionError(f"not within {timeout_s:g} s: {said}")
        await asyncio.sleep(interval_s)


def task_stacks() -> str:
    """Each asyncio task's chain of awaits, outermost first, as a traceback shows it."""
    import traceback

    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:  # not inside an event loop
        return ""
    out = []
    for task in tasks:
        frames = []
        awaited: Any = task.get_coro()
        while (frame := _first(awaited, "cr_frame", "gi_frame", "ag_frame")) is not None:
            frames.append((frame, frame.f_lineno))
            awaited = _first(awaited, "cr_await", "gi_yieldfrom", "ag_await")
        stack = "".join(traceback.StackSummary.extract(frames).format())
        out.append(f"{task.get_name()}:\n{stack}")
    return "\nWhere the asyncio tasks wait:\n" + "".join(out)


def _first(obj: Any, *names: str) -> Any:
    return next((v for v in (getattr(obj, n, None) for n in names) if v is not None), None)
