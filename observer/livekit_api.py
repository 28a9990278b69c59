"""The server API client, set up one way for the daemon, the commands and the reports."""

from __future__ import annotations

import aiohttp
from livekit import api

from observer.config import LiveKitSettings

# What a call to the server API can fail with when the server is down, slow or refuses.
API_ERRORS: tuple[type[BaseException], ...] = (
    api.TwirpError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)


def client(lk: LiveKitSettings, timeout_s: float) -> api.LiveKitAPI:
    return api.LiveKitAPI(
        lk.http_url, lk.api_key, lk.api_secret, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )
