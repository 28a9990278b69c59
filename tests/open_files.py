"""What a process holds open, read from /proc (Linux): how many descriptors, and how many
of them are TCP connections to a given port."""

from __future__ import annotations

import os
from pathlib import Path


def open_files(pid: int | None = None) -> int:
    """The number of open descriptors of `pid` (this process when None)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:[") : -1])
    return out


def connections_to(port: int, pid: int | None = None) -> int:
    """The TCP sockets of `pid` (this process when None) whose far end is `port`, in any
    state (a connection the server closed and nobody closed here counts: it is held)."""
    pid = pid or os.getpid()
    mine = _socket_inodes(pid)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in mine:
                n += 1
    return n
