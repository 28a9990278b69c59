"""The room service client over several LIVEKIT_URL nodes: which error it reports when no
node gives a result, and what a room probe makes of it."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import api

from observer.config import LiveKitSettings
from observer.livekit_api import Client, room_hosted

pytestmark = pytest.mark.unit

NO_NODE = api.TwirpError("unavailable", "no response from servers", status=503)


def two_nodes() -> Client:
    return Client(
        LiveKitSettings(
            "ws://a.invalid:7880", "key", "s" * 32, other_urls=("ws://b.invalid:7880",)
        ),
        1,
    )


async def test_a_node_that_answers_is_reported_over_one_that_does_not() -> None:
    c = two_nodes()
    try:

        async def fn(a: api.LiveKitAPI) -> None:
            if a is c._apis[0]:
                raise NO_NODE  # the live node: no live node hosts the room
            raise aiohttp.ClientConnectionError("connection refused")  # the dead one

        with pytest.raises(api.TwirpError) as raised:
            await c.call(fn)
        assert raised.value is NO_NODE
        c._in_use = 1  # the dead node first, as before the API moved on: the same answer
        with pytest.raises(api.TwirpError) as raised:
            await c.call(fn)
        assert raised.value is NO_NODE
    finally:
        await c.aclose()


async def test_no_node_answering_reports_the_last_failure() -> None:
    c = two_nodes()
    try:
        errors = [aiohttp.ClientConnectionError("a"), aiohttp.ClientConnectionError("b")]

        async def fn(a: api.LiveKitAPI) -> None:
            raise errors[0 if a is c._apis[0] else 1]

        with pytest.raises(aiohttp.ClientConnectionError, match="b"):
            await c.call(fn)
    finally:
        await c.aclose()


async def test_room_probe_through_a_dead_and_a_live_node(monkeypatch: pytest.MonkeyPatch) -> None:
    c = two_nodes()
    try:
        calls: list[str] = []

        async def send_data(self: object, req: api.SendDataRequest) -> None:
            calls.append(req.room)
            if len(calls) % 2:  # the node in use first: alive, and no node hosts the room
                raise NO_NODE
            raise aiohttp.ClientConnectionError("connection refused")  # the dead one

        monkeypatch.setattr(type(c._apis[0].room), "send_data", send_data)
        assert await room_hosted(c, "orphan") is False
        assert calls == ["orphan", "orphan"]
    finally:
        await c.aclose()
