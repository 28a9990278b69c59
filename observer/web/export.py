"""The page's exports (`/sessions.csv`, `/sessions.json`): streamed a batch of rows at a
time from one of the page's threads, in pages of at most `limit` rows by id.

A page is the first `limit` matching rows whose id is above `after`, in id order (the
order rows were recorded). When more match, the response links the next page
(`Link: <...&after=ID>; rel="next"`, ID being the page's last row): following the links
gives every matching row exactly once, rows recorded meanwhile at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

from aiohttp import web

from observer.db.reads import SessionFilter
from observer.db.store import Store
from observer.reports.sessions import session_chunks

LIMIT = 10_000  # rows of a page unless `limit` says otherwise
LIMIT_MAX = 200_000
WRITE_STALL_S = 60.0  # a reader that takes nothing for this long is left


class BadRequest(ValueError):
    """A parameter of an export that is not what it must be; the message is one line."""


def page_range(query: Mapping[str, str]) -> tuple[int, int]:
    """`after` and `limit` of an export's query."""
    raw_limit = query.get("limit", "").strip() or str(LIMIT)
    if not _whole(raw_limit) or not 1 <= int(raw_limit) <= LIMIT_MAX:
        raise BadRequest(f"limit: a whole number from 1 to {LIMIT_MAX}, got {raw_limit!r}")
    raw_after = query.get("after", "").strip() or "0"
    if not _whole(raw_after) or len(raw_after) > 18:  # (a 64-bit id has at most 19 digits)
        raise BadRequest(f"after: a session id (a whole number), got {raw_after!r}")
    return int(raw_after), int(raw_limit)


def _whole(raw: str) -> bool:
    return raw.isascii() and raw.isdigit()


async def sessions_export(
    request: web.Request, store: Store, f: SessionFilter, fmt: str
) -> web.StreamResponse:
    """The page of `f`'s sessions that the request's `after` and `limit` name, as `fmt`
    (csv or json), streamed."""
    try:
        after, limit = page_range(request.query)
    except BadRequest as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    end = await store.run(store.export_end, f, after=after, limit=limit)
    headers = {
        "Content-Disposition": f'attachment; filename="sessions.{fmt}"',
        "Cache-Control": "no-store",
    }
    if end is not None:
        following = request.rel_url.update_query(after=str(end))
        headers["Link"] = f'<{following}>; rel="next"'
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/csv" if fmt == "csv" else "application/json"
    response.charset = "utf-8"

    def chunks() -> Iterator[bytes]:
        batches = store.export_batches(f, after=after, through=end, limit=limit)
        with contextlib.closing(batches):
            for text in session_chunks(batches, fmt):
                yield text.encode()

    async with contextlib.aclosing(store.stream(chunks)) as parts:
        async for part in parts:
            if not response.prepared:  # the first part read: the status is known now
                await response.prepare(request)
            async with asyncio.timeout(WRITE_STALL_S):
                await response.write(part)
    await response.write_eof()
    return response
