"""Peak Python allocation of the page's unfiltered CSV export, for each limit given.

Run as `python -X tracemalloc tests/export_peak.py DB_URL LIMIT...`: tracing starts with the
interpreter, before any thread exists, and is never stopped. (Starting or stopping tracemalloc
while other threads allocate can crash Python before 3.12.9, and a test process holds the
threads of the rtc SDK, the store and earlier tests.) Prints one JSON list of peaks in bytes,
each above what was allocated when its export began.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tracemalloc

import aiohttp
from test_page_load import serving

from observer.db import store as store_module
from observer.db.store import Store


async def peaks(url: str, limits: list[int]) -> list[int]:
    store = Store.for_page(url, workers=2)
    try:
        async with serving(store) as (base, page), aiohttp.ClientSession() as http:
            assert page.warmed is not None
            await page.warmed
            found = []
            for limit in limits:
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                async with http.get(f"{base}/sessions.csv?limit={limit}") as r:
                    assert r.status == 200, r.status
                    records, tail = 0, b""
                    async for chunk in r.content.iter_chunked(1 << 14):
                        records += (tail + chunk).count(b"\r\n")
                        tail = chunk[-1:]
                assert records == limit + 1, (records, limit)  # and the header
                found.append(tracemalloc.get_traced_memory()[1] - before)
            return found
    finally:
        store.close()


def main() -> None:
    if not tracemalloc.is_tracing():
        sys.exit("run with python -X tracemalloc")
    store_module.EXPORT_BATCH = 200
    print(json.dumps(asyncio.run(peaks(sys.argv[1], [int(a) for a in sys.argv[2:]]))))


if __name__ == "__main__":
    main()
