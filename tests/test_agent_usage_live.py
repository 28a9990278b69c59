"""Model usage a real livekit-agents voice agent sends into its room, recorded by the observer.

The agent is an ``AgentSession`` with the local models of ``fake_models``, and with the
framework's session host, which a real agent runs unless told not to. After each LLM
answer and each TTS synthesis the framework emits the session's cumulative usage, and the
host sends it to the whole room as an ``lk.agent.session`` byte stream. The observer,
hidden and without the right to subscribe, gets those streams all the same (livekit-server
forwards data packets to every participant but their sender) and keeps the latest totals
per model in ``agent_usage``. The tests compare them with what the fake models counted.
Both databases.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemon_helpers import Clients, RunningObserver, create_room
from livekit_server import LiveKitServer
from polling import until
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_agent_states import join_caller

from observer.core.agent_usage import COUNTERS
from observer.db.schema import AgentUsageRow, SessionRow
from observer.db.store import Store
from observer.db.usage import UsageSpec

if TYPE_CHECKING:
    from agents_worker import DispatchedJob

pytestmark = [pytest.mark.live, pytest.mark.databases("sqlite")]

# livekit-agents takes about 1.7 s of CPU to import: the tests that run its worker import
# it themselves, so that collecting the suite (in every worker process) does not.
AGENT_NAME = "usage-desk"
StartObserver = Callable[..., Awaitable[RunningObserver]]
VOICE_AGENT = Path(__file__).parent / "voice_agent_process.py"


@dataclass(frozen=True)
class Counted:
    """What the agent's fake models reported so far."""

    llm_requests: int
    llm_input_tokens: int
    llm_output_tokens: int
    tts_syntheses: int
    tts_characters: int
    tts_seconds: float

    @classmethod
    def of_job(cls, job: DispatchedJob) -> Counted:
        assert job.llm is not None and job.tts is not None
        usages, synthesized = list(job.llm.usages), list(job.tts.synthesized)
        return cls(
            llm_requests=len(usages),
            llm_input_tokens=sum(u.prompt_tokens for u in usages),
            llm_output_tokens=sum(u.completion_tokens for u in usages),
            tts_syntheses=len(synthesized),
            tts_characters=sum(len(text) for text, _ in synthesized),
            tts_seconds=sum(seconds for _, seconds in synthesized),
        )

    @classmethod
    def of_process(cls, usage: dict[str, Any]) -> Counted:
        return cls(**{name: usage[name] for name in cls.__dataclass_fields__})

    @property
    def messages(self) -> int:
        """The usage messages the agent sent: one per LLM answer and per TTS synthesis."""
        return self.llm_requests + self.tts_syntheses


def usage_rows(store: Store) -> list[AgentUsageRow]:
    with Session(store.engine) as db:
        return list(db.scalars(select(AgentUsageRow).order_by(AgentUsageRow.kind)))


def described(rows: list[AgentUsageRow]) -> list[dict[str, Any]]:
    cols = ("room_sid", "participant_sid", "kind", "provider", "model", *COUNTERS)
    more = ("reported_at", "first_reported_at", "source", "went_backwards", "updated_at")
    return [{c: getattr(r, c) for c in (*cols, *more)} for r in rows]


def holds(rows: list[AgentUsageRow], counted: Counted) -> bool:
    """The rows hold the totals the models reported (the LLM's, once it has answered)."""
    by_kind = {r.kind: r for r in rows}
    llm, tts = by_kind.get("llm"), by_kind.get("tts")
    if tts is None or tts.characters != counted.tts_characters:
        return False
    if counted.llm_requests == 0:
        return llm is None
    return (
        llm is not None
        and llm.input_tokens == counted.llm_input_tokens
        and llm.output_tokens == counted.llm_output_tokens
    )


async def wait_usage(store: Store, counted: Counted, timeout: float = 15.0) -> list[AgentUsageRow]:
    return await until(
        lambda: usage_rows(store),
        lambda rows: holds(rows, counted),
        timeout_s=timeout,
        what=lambda rows: f"usage not recorded: {counted}; {described(rows)}",
    )


def check_usage(
    rows: list[AgentUsageRow], counted: Counted, session: SessionRow, identity: str
) -> None:
    """Exactly the models' totals, one row per model, for the agent's session."""
    info = f"{counted}; {described(rows)}"
    kinds = ["llm", "tts"] if counted.llm_requests else ["tts"]
    assert [r.kind for r in rows] == kinds, info
    for r in rows:
        assert (r.room_sid, r.participant_sid) == (session.room_sid, session.participant_sid)
        assert r.participant_identity == identity, info
        assert r.provider == "fake", info
        assert r.source == "room" and not r.went_backwards, info
        assert r.first_reported_at <= r.reported_at, info
        # the agent stamps its totals when it sends them: during the session
        assert session.joined_at <= r.first_reported_at, info
        assert r.reported_at <= datetime.now(UTC), info
    by_kind = {r.kind: {c: getattr(r, c) for c in COUNTERS} for r in rows}
    if counted.llm_requests:
        assert rows[0].model == "fake-llm", info
        assert by_kind["llm"] == {
            **dict.fromkeys(COUNTERS, 0),
            "input_tokens": counted.llm_input_tokens,
            "output_tokens": counted.llm_output_tokens,
        }, info
    tts = by_kind["tts"]
    assert rows[-1].model == "fake-tts", info
    # the framework sums the durations of the frames a synthesis yields: the model's audio,
    # and a 10 ms frame of silence it adds after the audio to mark the synthesis' end
    audio_ms = counted.tts_seconds * 1000 + 10 * counted.tts_syntheses
    assert abs(tts["audio_ms"] - audio_ms) <= 2, info
    assert tts == {
        **dict.fromkeys(COUNTERS, 0),
        "characters": counted.tts_characters,
        "audio_ms": tts["audio_ms"],
    }, info


def usage_reports(obs: RunningObserver, outcome: str) -> int:
    value = obs.obs.metrics.registry.get_sample_value(
        "observer_usage_reports_total", {"source": "room", "outcome": outcome}
    )
    return int(value or 0)


async def wait_reports(obs: RunningObserver, count: int, timeout: float = 5.0) -> int:
    """The usage messages the observer has written; waits for ``count`` of them, then a
    moment more for any beyond."""
    deadline = time.monotonic() + timeout
    while True:
        if usage_reports(obs, "accepted") >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return usage_reports(obs, "accepted")


def linked(store: Store) -> list[tuple[int, str, str]]:
    """(session id, kind, model) for each usage row, joined to its session row."""
    with Session(store.engine) as db:
        joined = db.execute(
            select(SessionRow.id, AgentUsageRow.kind, AgentUsageRow.model)
            .join(
                SessionRow,
                (SessionRow.room_sid == AgentUsageRow.room_sid)
                & (SessionRow.participant_sid == AgentUsageRow.participant_sid),
            )
            .order_by(AgentUsageRow.kind)
        )
        return [(i, k, m) for i, k, m in joined]


@pytest.mark.compat("usage")
async def test_voice_agent_usage_lands_with_its_session(
    livekit_server: LiveKitServer, db_url: str, start_observer: StartObserver, clients: Clients
) -> None:
    from agents_worker import AgentWorker, dispatch, framework_threads

    room = f"usage-{uuid.uuid4().hex[:8]}"
    await create_room(livekit_server, room)
    await join_caller(clients, room, "caller-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching(room)

    async with AgentWorker(livekit_server, AGENT_NAME, voice=True, session_host=True) as worker:
        job = await dispatch(livekit_server, worker, room)
        (row,) = await obs.wait_rows(lambda rows: len(rows) == 1)
        assert (row.room_sid, row.participant_sid) == (job.room_sid, job.sid)

        await job.say("Hello, thanks for calling the front desk.")
        await job.reply("When do you open tomorrow?")
        await job.reply("And on Sunday?")
        counted = Counted.of_job(job)
        assert counted.llm_requests == 2 and counted.tts_syntheses >= 3, counted
        # the second request's prompt holds the first exchange: more tokens than the first
        assert job.llm is not None
        assert job.llm.usages[1].prompt_tokens > job.llm.usages[0].prompt_tokens

        kept = await wait_usage(obs.store, counted)
        check_usage(kept, counted, row, job.identity)
        # every message the agent sent was read, none twice, none unreadable
        assert await wait_reports(obs, counted.messages) == counted.messages
        assert usage_reports(obs, "undecodable") == 0

        await job.leave()
        (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None)
    assert framework_threads() == []
    assert row.disconnect_reason == "CLIENT_INITIATED" and row.end_source == "rtc"

    # the session's end sent nothing more: the totals stand as they were
    assert described(usage_rows(obs.store)) == described(kept)
    assert linked(obs.store) == [(row.id, "llm", "fake-llm"), (row.id, "tts", "fake-tts")]
    # and `observer usage --tokens` counts them for the agent, its session known
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    spec = UsageSpec(edges=(now - hour, now + hour), group_by=("agent",))
    models, sessions = obs.store.tokens(spec)
    totals = {t.kind: t for t in models}
    assert set(totals) == {"llm", "tts"}
    assert all(t.keys == (AGENT_NAME,) for t in models), models
    # one session, however many models it reported
    assert [(s.keys, s.sessions, s.unseen, s.backwards) for s in sessions] == [
        ((AGENT_NAME,), 1, 0, 0)
    ]
    llm_totals = dict(zip(COUNTERS, totals["llm"].counters, strict=True))
    assert llm_totals["input_tokens"] == counted.llm_input_tokens
    assert llm_totals["output_tokens"] == counted.llm_output_tokens
    tts_totals = dict(zip(COUNTERS, totals["tts"].counters, strict=True))
    assert tts_totals["characters"] == counted.tts_characters


async def test_usage_after_an_observer_restart_is_cumulative_not_doubled(
    livekit_server: LiveKitServer, db_url: str, start_observer: StartObserver, clients: Clients
) -> None:
    from agents_worker import AgentWorker, dispatch

    room = f"usage-restart-{uuid.uuid4().hex[:8]}"
    await create_room(livekit_server, room)
    await join_caller(clients, room, "caller-1")
    first = await start_observer(livekit_server, db_url)
    await first.wait_watching(room)

    async with AgentWorker(livekit_server, AGENT_NAME, voice=True, session_host=True) as worker:
        job = await dispatch(livekit_server, worker, room)
        (row,) = await first.wait_rows(lambda rows: len(rows) == 1)
        await job.reply("When do you open tomorrow?")
        before = Counted.of_job(job)
        kept_before = await wait_usage(first.store, before)
        check_usage(kept_before, before, row, job.identity)
        assert await wait_reports(first, before.messages) == before.messages

        assert await first.stop() == 0
        stopped = datetime.now(UTC)
        # while no observer is in the room: an answer and a speech, their messages lost
        await job.reply("And on Sunday?")
        await job.say("We open at ten on Sundays.")
        during = Counted.of_job(job)
        assert during.llm_requests == 2
        assert described(usage_rows(first.store)) == described(kept_before)

        second = await start_observer(livekit_server, db_url)
        await second.wait_watching(room)
        # the agent's next totals cover all its session, the gap included; a speech alone
        # brings the LLM's tokens up to date too
        await job.say("Is there anything else I can help you with?")
        after = Counted.of_job(job)
        assert after.llm_requests == during.llm_requests
        kept = await wait_usage(second.store, after)
        check_usage(kept, after, row, job.identity)
        assert after.llm_input_tokens > before.llm_input_tokens
        # the same rows, brought forward: nothing added up twice
        for old, new in zip(kept_before, kept, strict=True):
            assert new.first_reported_at == old.first_reported_at
            assert new.reported_at > stopped > old.reported_at
        # the second observer read only what was sent after it came: the last speech
        sent_since = after.messages - during.messages
        assert await wait_reports(second, sent_since) == sent_since

        await job.leave()
        rows = await second.wait_rows(lambda rows: rows[0].left_at is not None)
    assert [r.id for r in rows] == [row.id]  # the same session row, closed by the second
    assert rows[0].disconnect_reason == "CLIENT_INITIATED"
    assert len(usage_rows(second.store)) == 2


async def test_killed_agent_keeps_its_last_usage_and_its_session_closes(
    livekit_server: LiveKitServer,
    db_url: str,
    start_observer: StartObserver,
    clients: Clients,
    tmp_path: Path,
) -> None:
    """The agent's process is killed mid-session: no goodbye, no last message."""
    room = f"usage-kill-{uuid.uuid4().hex[:8]}"
    await create_room(livekit_server, room)
    await join_caller(clients, room, "caller-1")
    obs = await start_observer(livekit_server, db_url)
    await obs.wait_watching(room)

    log = tmp_path / "agent.log"
    token = livekit_server.token("agent-doomed", room, kind="agent")
    with log.open("wb") as err:
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            str(VOICE_AGENT),
            livekit_server.ws_url,
            token,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert agent.stdin is not None and agent.stdout is not None
    stdin, stdout = agent.stdin, agent.stdout

    async def answer() -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(stdout.readline(), 30)
            assert line, f"the agent process ended: {log.read_text()[-3000:]}"
            if line.startswith(b"{"):  # anything else is not the agent's answer
                return json.loads(line)  # type: ignore[no-any-return]

    async def ask(command: dict[str, str]) -> Counted:
        stdin.write(json.dumps(command).encode() + b"\n")
        await stdin.drain()
        return Counted.of_process((await answer())["usage"])

    try:
        sid = (await answer())["ready"]
        (row,) = await obs.wait_rows(lambda rows: len(rows) == 1)
        assert row.participant_sid == sid and row.participant_kind == "agent"
        await ask({"say": "Hello, thanks for calling the front desk."})
        counted = await ask({"reply": "When do you open tomorrow?"})
        kept = await wait_usage(obs.store, counted)
        check_usage(kept, counted, row, "agent-doomed")

        agent.kill()
        killed_at = time.time()
        await agent.wait()
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        stdin.close()

    # the server announces the dead agent once its connection times out (15 s of silence)
    (row,) = await obs.wait_rows(lambda rows: rows[0].left_at is not None, timeout=45)
    assert row.disconnect_reason == "CONNECTION_TIMEOUT" and row.end_source == "rtc"
    assert row.left_at is not None and 5 < row.left_at.timestamp() - killed_at < 45
    # the last totals the agent sent stand, untouched
    assert described(usage_rows(obs.store)) == described(kept)
    assert [i for i, _, _ in linked(obs.store)] == [row.id, row.id]
    assert usage_reports(obs, "accepted") == counted.messages
    assert usage_reports(obs, "undecodable") == 0
