"""The observer's own reconnects: no session closed, doubled or lost."""

from __future__ import annotations

import asyncio

import pytest
from daemon_helpers import Clients, create_room
from livekit import rtc
from livekit_server import LiveKitServer

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]

SCENARIOS = {
    "signal-resume": rtc.SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT,
    "full-reconnect": rtc.SimulateScenarioKind.SIMULATE_FULL_RECONNECT,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_observer_reconnect_keeps_sessions(
    scenario: str, livekit_server: LiveKitServer, db_url: str, start_observer, clients: Clients
) -> None:
    room_name = f"reconnect-{scenario}"
    await create_room(livekit_server, room_name)
    await clients.join(room_name, "user-1")
    stays = await clients.agent(room_name, "agent-stays")
    leaves = await clients.agent(room_name, "agent-leaves")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_rows(lambda rows: len(rows) == 2)
    (watcher,) = [w for w in obs.obs.rooms.watchers.values() if w.room_name == room_name]
    sdk_leaves: list[str] = []
    reconnected = asyncio.Event()
    watcher.room.on("participant_disconnected", lambda p: sdk_leaves.append(p.identity))
    watcher.room.on("reconnected", lambda: reconnected.set())

    await watcher.room.simulate_scenario(SCENARIOS[scenario])
    await leaves.disconnect()  # leaves around the observer's gap
    await asyncio.wait_for(reconnected.wait(), 20)

    rows = await obs.wait_rows(
        lambda rows: any(r.participant_identity == "agent-leaves" and r.left_at for r in rows)
    )
    await asyncio.sleep(3)  # longer than the leave grace period: nothing else may change
    rows = obs.rows()
    assert len(rows) == 2, rows
    by_id = {r.participant_identity: r for r in rows}
    assert by_id["agent-stays"].left_at is None
    assert by_id["agent-stays"].participant_sid == stays.local_participant.sid
    gone = by_id["agent-leaves"]
    assert gone.end_source in ("rtc", "reconciled")
    if scenario == "full-reconnect":
        # the hazard is real: the SDK reported the staying agent as disconnected
        assert "agent-stays" in sdk_leaves
    # and the observer keeps watching: a later leave is still seen live
    await stays.disconnect()
    rows = await obs.wait_rows(lambda rows: all(r.left_at for r in rows))
    assert {r.participant_identity: r.end_source for r in rows}["agent-stays"] == "rtc"
