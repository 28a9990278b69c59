"""When a process's open files count as more than its rooms need (`crowding.crowded`)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from observer.daemon import crowding
from observer.daemon.crowding import FILES_BASE, FILES_PER_ROOM, crowded, open_files

pytestmark = pytest.mark.unit


def test_the_limit_grows_with_the_rooms_held() -> None:
    assert not crowded(0, FILES_BASE)
    assert crowded(0, FILES_BASE + 1)
    assert not crowded(200, FILES_BASE + FILES_PER_ROOM * 200)
    assert crowded(200, FILES_BASE + FILES_PER_ROOM * 200 + 1)
    # measured: 200 rooms joined one at a time, 618 files; after a 30 s cut, 7,650
    assert not crowded(200, 618)
    assert crowded(200, 7650)


def test_an_unknown_count_is_never_crowded() -> None:
    assert not crowded(0, None)


def test_open_files_counts_this_process_and_another(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = open_files()
    assert before is not None and before == len(os.listdir("/proc/self/fd"))
    with open(tmp_path / "x", "w"):
        assert open_files() == before + 1
    assert open_files(os.getpid()) == before
    assert open_files(2**22 + 1) is None  # no such process


def test_open_files_is_none_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(_path: str) -> list[str]:
        raise FileNotFoundError

    monkeypatch.setattr(crowding.os, "listdir", no_proc)
    assert open_files() is None


class FakeRoom:
    def __init__(self, sid: str) -> None:
        self.room_sid = sid
        self.recovering = False


async def run_for(c: crowding.Crowding[FakeRoom], seconds: float) -> None:
    task = asyncio.ensure_future(c.keep_uncrowded_forever())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setattr(crowding, "CHECK_S", 0.01)
    monkeypatch.setattr(crowding, "SETTLE_S", 0.05)
    files = {"n": 10_000}
    monkeypatch.setattr(crowding, "open_files", lambda _pid=None: files["n"])
    return files


async def test_a_settled_crowded_process_has_each_room_joined_afresh_once(
    fast: dict[str, int],
) -> None:
    rooms = {s: FakeRoom(s) for s in ("a", "b", "c")}
    renewed: list[str] = []

    async def renew(room: FakeRoom) -> None:
        renewed.append(room.room_sid)

    # files that stay high after a pass are not the rooms': one pass, then left alone
    await run_for(crowding.Crowding(rooms, None, renew, lambda: False), 0.5)
    assert renewed == ["a", "b", "c"]


async def test_a_pass_that_frees_the_files_ends_there(fast: dict[str, int]) -> None:
    rooms = {s: FakeRoom(s) for s in ("a", "b")}
    renewed: list[str] = []

    async def renew(room: FakeRoom) -> None:
        renewed.append(room.room_sid)
        fast["n"] = 10  # the renewals freed them

    await run_for(crowding.Crowding(rooms, None, renew, lambda: False), 0.5)
    assert renewed == ["a", "b"]


async def test_nothing_is_renewed_while_a_room_recovers_or_without_rooms(
    fast: dict[str, int],
) -> None:
    rooms = {"a": FakeRoom("a")}
    rooms["a"].recovering = True
    renewed: list[str] = []

    async def renew(room: FakeRoom) -> None:
        renewed.append(room.room_sid)

    await run_for(crowding.Crowding(rooms, None, renew, lambda: False), 0.3)
    await run_for(crowding.Crowding({}, None, renew, lambda: False), 0.3)
    assert renewed == []


async def test_a_busy_process_waits_to_settle(fast: dict[str, int]) -> None:
    rooms = {"a": FakeRoom("a")}
    renewed: list[str] = []

    async def renew(room: FakeRoom) -> None:
        renewed.append(room.room_sid)

    c = crowding.Crowding(rooms, None, renew, lambda: False)
    task = asyncio.ensure_future(c.keep_uncrowded_forever())
    for _ in range(20):  # a join every 20 ms: never settled
        c.changed()
        await asyncio.sleep(0.02)
    assert renewed == []
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert renewed == ["a"]
