"""LiveKit releases: what each supports, which the observer refuses, and join times that
are only whole seconds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from observer.core.releases import (
    OLDEST_SAFE,
    Release,
    parse,
    refusal,
    safe,
    summary,
    supports,
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


def test_an_unknown_release_is_taken_as_current() -> None:
    assert safe(None) and supports(None, "join_ms")
    assert summary("cloud") == ["release not recognised: taken to support all the observer uses"]


def test_summary_and_refusal_lines() -> None:
    assert summary("1.8.3") == [
        "refuses a join whose token names an unknown room preset, so the observer never"
        " creates a room: yes",
        "disconnect reasons on participants: yes",
        "join times in milliseconds (joined_at_ms): no (since 1.8.4)",
        "the participant_connection_aborted webhook: no (since 1.9.1)",
        "an agent's kind kept when it reconnects in full (else only lk.agent.* attributes"
        " tell): no (since 1.9.11)",
    ]
    assert summary("1.9.11")[-1].endswith(": yes")
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


def test_start_logs_each_release_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="observer.server_release")
    nodes = [
        NodeRelease("ws://a", "1.13.5", "ND_a"),
        NodeRelease("ws://b", "1.13.5", "ND_b"),
        NodeRelease("ws://c", "1.8.3", "ND_c"),
        NodeRelease("ws://d", error="ClientConnectorError"),
    ]
    at_start(nodes)
    logged = [r for r in caplog.records if r.getMessage() == "livekit release"]
    assert [r.version for r in logged] == ["1.13.5", "1.8.3"]  # type: ignore[attr-defined]
    assert "no (since 1.8.4)" in logged[1].supports  # type: ignore[attr-defined]
    assert any("release unknown" in r.getMessage() for r in caplog.records)


def rtc_participant(joined_at: datetime | None) -> Any:
    """What `watcher.seen` reads of an rtc participant (the SDK's object needs a live room)."""
    from livekit import rtc

    kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    detail = rtc.ParticipantKindDetail.PARTICIPANT_KIND_DETAIL_CLOUD_AGENT
    return SimpleNamespace(
        sid="PA_1",
        identity="a",
        name="",
        kind=kind,
        attributes={},
        joined_at=joined_at,
        kind_details=[detail, 99],
    )


def test_a_join_time_the_sdk_does_not_give_is_the_first_sight_and_marked() -> None:
    """The rtc SDK reads only joined_at_ms, which servers before 1.8.4 leave at 0 (checked
    against v1.8.0: `joined_at` is None there)."""
    from observer.daemon.watcher import seen_participant as seen

    s = seen(rtc_participant(None), NOW, agent_attributes=True)
    assert (s.joined_at, s.join_precision_ms) == (NOW, None)
    joined = datetime(2026, 12, 5, 11, 59, 58, 123000, tzinfo=UTC)
    s = seen(rtc_participant(joined), NOW, agent_attributes=True)
    assert (s.joined_at, s.join_precision_ms) == (joined, 1)
    assert s.kind == "agent" and s.kind_details == ("CLOUD_AGENT", "DETAIL_99")
