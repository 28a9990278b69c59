"""Databases made as copies of templates: a SQLite file copied, a PostgreSQL database created
with CREATE DATABASE ... TEMPLATE. Cheaper than running the migrations, or filling the same
rows, once for every test."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url


def copy_of(template_url: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """URL of a new database that is a copy of the one at ``template_url`` (nobody may be
    connected to it). A SQLite copy goes into ``directory``; a PostgreSQL one is dropped
    when the scope of ``request`` ends."""
    url = make_url(template_url)
    if url.get_backend_name() == "sqlite":
        source = Path(str(url.database))
        target = directory / "observer.db"
        for suffix in ("", "-wal"):  # a file a store wrote is in WAL mode
            if Path(f"{source}{suffix}").exists():
                shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
        return f"sqlite:///{target}"
    server = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:16]}"
    copy = str(server.create_database(name, template=url.database))

    def drop() -> None:
        if not server.running:  # a test stopped the server and did not bring it back
            server.start()
        server.drop_database(name)

    request.addfinalizer(drop)
    return copy
