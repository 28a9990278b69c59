"""When a process's open files count as more than its rooms need (`crowding.crowded`)."""

from __future__ import annotations

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
