"""A participant's kind: its kind claim's, and an agent's attributes where a server lost it."""

from __future__ import annotations

import pytest

from observer.core.protocol_values import participant_kind

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("enum_name", "attributes", "kind"),
    [
        ("PARTICIPANT_KIND_AGENT", {}, "agent"),
        ("AGENT", {}, "agent"),
        ("PARTICIPANT_KIND_STANDARD", {}, "standard"),
        ("STANDARD", {"lk.agent.name": "support-bot"}, "agent"),
        ("STANDARD", {"lk.agent.state": "listening"}, "agent"),
        ("STANDARD", {"lk.agent_name": "support-bot"}, "agent"),
        ("STANDARD", {"lk.agent.something_else": "x", "team": "blue"}, "standard"),
        ("PARTICIPANT_KIND_SIP", {"lk.agent.state": "listening"}, "sip"),
        ("EGRESS", {"lk.agent.name": "recorder"}, "egress"),
        (None, {"lk.agent.state": "listening"}, "kind_9"),
    ],
)
def test_a_standard_participant_with_an_agent_s_attributes_is_an_agent(
    enum_name: str | None, attributes: dict[str, str], kind: str
) -> None:
    assert participant_kind(enum_name, 9, attributes) == kind
