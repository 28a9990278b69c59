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
    assert participant_kind(enum_name, 9, attributes, agent_attributes=True) == kind


@pytest.mark.parametrize(
    ("enum_name", "attributes", "kind"),
    [
        ("AGENT", {}, "agent"),
        ("STANDARD", {"lk.agent.name": "support-bot"}, "standard"),
        ("STANDARD", {"lk.agent.state": "listening"}, "standard"),
        ("SIP", {"lk.agent.state": "listening"}, "sip"),
    ],
)
def test_on_a_server_that_keeps_kinds_the_claim_alone_decides(
    enum_name: str, attributes: dict[str, str], kind: str
) -> None:
    """A caller allowed to set its own attributes cannot make itself billed as an agent."""
    assert participant_kind(enum_name, 9, attributes, agent_attributes=False) == kind


def test_attributes_count_only_when_a_node_may_drop_kinds() -> None:
    from observer.server_release import NodeRelease, all_keep_kinds

    def node(version: str) -> NodeRelease:
        return NodeRelease("ws://x", version=version, node_id="n")

    assert all_keep_kinds([node("1.9.11"), node("1.13.5")])
    assert not all_keep_kinds([node("1.13.5"), node("1.8.4")])
    assert not all_keep_kinds([node("1.9.10")])
    assert all_keep_kinds([NodeRelease("ws://x", error="timeout")])  # taken to be current
