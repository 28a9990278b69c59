"""The soak's comparison of the rows with LiveKit's own record (bench/soak/server_record.py):
each kind of disagreement is found, and a row that matches is not reported."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

_PATH = Path(__file__).resolve().parent.parent / "bench" / "soak" / "server_record.py"
_spec = importlib.util.spec_from_file_location("soak_server_record", _PATH)
assert _spec is not None and _spec.loader is not None
server_record: Any = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = server_record
_spec.loader.exec_module(server_record)

JOINED_MS = 1_796_648_995_709


def end(sid: str, ended_s: int, event: str = "participant_left", hidden: bool = False) -> Any:
    participant = {"sid": sid, "joinedAtMs": str(JOINED_MS), "permission": {"hidden": hidden}}
    return event, json.dumps({"participant": participant, "createdAt": str(ended_s)})


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_each_disagreement_with_the_server_is_found() -> None:
    left = JOINED_MS + 20_000  # the server's end falls in second JOINED_MS // 1000 + 20
    ended_s = left // 1000
    webhooks = [
        end("PA_good", ended_s),
        end("PA_lost", ended_s),
        end("PA_double", ended_s),
        end("PA_open", ended_s, "participant_connection_aborted"),
        end("PA_late", ended_s),
        end("PA_joinoff", ended_s),
        end("PA_excused", ended_s),  # late, but within its stated uncertainty
        end("PA_later", ended_s + 100),  # ends after `until`: not judged yet
        end("PA_observer", ended_s, hidden=True),
        ("participant_joined", json.dumps({"participant": {"sid": "PA_x"}})),
    ]
    sessions = [
        ("PA_good", at(JOINED_MS), at(left), None),
        ("PA_double", at(JOINED_MS), at(left), None),
        ("PA_double", at(left), at(left + 5_000), None),
        ("PA_open", at(JOINED_MS), None, None),
        ("PA_late", at(JOINED_MS), at(left + 4_500), None),
        ("PA_joinoff", at(JOINED_MS + 1_000), at(left), None),
        ("PA_excused", at(JOINED_MS), at(left + 4_500), 3_000),
    ]
    v = server_record.compare(webhooks, sessions, until=ended_s + 50, tolerance_s=2.0)
    assert v.participants == 7
    assert v.by_end == {"participant_left": 6, "participant_connection_aborted": 1}
    assert v.lost == ["PA_lost"]
    assert v.doubled == ["PA_double"]
    assert v.left_open == ["PA_open"]
    assert [s for s, _ in v.join_off] == ["PA_joinoff"]
    assert [s for s, _ in v.end_off] == ["PA_late"]
    assert 4 < v.worst_end_s < 5  # PA_excused: 4.2 s past the end's second, within 2 s + its 3 s
    assert "lost 1, doubled 1, left open 1, join off 1" in server_record.report(v, 2.0)[0]
