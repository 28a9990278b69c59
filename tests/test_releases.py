"""LiveKit releases: what each supports, which the observer refuses, and join times that
are only whole seconds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from observer.core.events import ParticipantJoined, ParticipantLeft, RoomJoined, Seen
from observer.core.releases import (
    OLDEST_SAFE,
    Release,
    join_precision_ms,
    parse,
    refusal,
    safe,
    summary,
    supports,
    with_join_precision,
)
from observer.errors import EXIT_USAGE, CommandError
from observer.server_release import NodeRelease, at_start

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("1.13.5", Release(1, 13, 5)),
        ("v1.9.11", Release(1, 9, 11)),
        ("1.10.0-rc1", Release(1, 10, 0)),
        (" 1.8.4 ", Release(1, 8, 4)),
        ("", None),
        ("cloud", None),
        ("1.9", None),
    ],
)
def test_parse(text: str, release: Release | None) -> None:
    assert parse(text) == release


@pytest.mark.parametrize(
    ("version", "join_ms", "reasons", "aborted", "is_safe"),
    [
        ("1.7.2", False, False, False, False),
        ("1.8.0", False, True, False, False),
        ("1.8.2", False, True, False, True),
        ("1.8.3", False, True, False, True),
        ("1.8.4", True, True, False, True),
        ("1.9.0", True, True, False, True),
        ("1.9.1", True, True, True, True),
        ("1.13.5", True, True, True, True),
        ("2.0.0", True, True, True, True),
    ],
)
def test_what_each_release_supports(
    version: str, join_ms: bool, reasons: bool, aborted: bool, is_safe: bool
) -> None:
    r = parse(version)
    assert supports(r, "join_ms") is join_ms
    assert supports(r, "disconnect_reason") is reasons
    assert supports(r, "connection_aborted") is aborted
    assert safe(r) is is_safe
    assert join_precision_ms(r) == (1 if join_ms else 1000)


def test_an_unknown_release_is_taken_as_current() -> None:
    assert safe(None) and join_precision_ms(None) == 1
    assert summary("cloud") == ["release not recognised: taken to support all the observer uses"]


def test_summary_and_refusal_lines() -> None:
    assert summary("1.8.3") == [
        "refuses a join whose token names an unknown room preset, so the observer never"
        " creates a room: yes",
        "disconnect reasons on participants: yes",
        "join times in milliseconds (joined_at_ms): no (since 1.8.4)",
        "the participant_connection_aborted webhook: no (since 1.9.1)",
    ]
    line = refusal(Release(1, 8, 0))
    assert (
        "\n" not in line
        and "1.8.0" in line
        and f"oldest release it watches is {OLDEST_SAFE}" in line
    )
    assert str(OLDEST_SAFE) == "1.8.2"


def test_start_refuses_a_release_that_would_create_rooms() -> None:
    nodes = [NodeRelease("ws://a", "1.13.5", "ND_a"), NodeRelease("ws://b", "1.8.0", "ND_b")]
    with pytest.raises(CommandError) as err:
        at_start(nodes)
    assert err.value.exit_code == EXIT_USAGE
    assert str(err.value) == refusal(Release(1, 8, 0))


def test_start_logs_each_release_once_and_returns_the_oldest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="observer.server_release")
    nodes = [
        NodeRelease("ws://a", "1.13.5", "ND_a"),
        NodeRelease("ws://b", "1.13.5", "ND_b"),
        NodeRelease("ws://c", "1.8.3", "ND_c"),
        NodeRelease("ws://d", error="ClientConnectorError"),
    ]
    assert at_start(nodes) == Release(1, 8, 3)
    logged = [r for r in caplog.records if r.getMessage() == "livekit release"]
    assert [r.version for r in logged] == ["1.13.5", "1.8.3"]  # type: ignore[attr-defined]
    assert "no (since 1.8.4)" in logged[1].supports  # type: ignore[attr-defined]
    assert any("release unknown" in r.getMessage() for r in caplog.records)
    assert at_start([NodeRelease("ws://d", error="refused")]) is None


def seen(precision: int = 1) -> Seen:
    return Seen("PA_1", "a", "", "agent", {}, NOW, (), precision)


def test_join_times_of_a_release_in_seconds_are_marked() -> None:
    joined = ParticipantJoined("r", "RM_1", seen(), NOW)
    assert with_join_precision(joined, 1) is joined
    marked = with_join_precision(joined, 1000)
    assert isinstance(marked, ParticipantJoined) and marked.participant.join_precision_ms == 1000
    room = with_join_precision(RoomJoined("r", "RM_1", (seen(), seen(1000)), NOW), 1000)
    assert isinstance(room, RoomJoined)
    assert [p.join_precision_ms for p in room.present] == [1000, 1000]
    left = ParticipantLeft("RM_1", "PA_1", "CLIENT_INITIATED", NOW)
    assert with_join_precision(left, 1000) is left
