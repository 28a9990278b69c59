"""The database, opened for a command that reads it: never created here, and only with the
current schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from observer.config import Settings
from observer.errors import CommandError

if TYPE_CHECKING:
    from observer.db.store import Store


def missing_sqlite_file(database_url: str) -> Path | None:
    """The SQLite file the URL names, when it does not exist (connecting would create it)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database)
    return None if path.exists() else path.resolve()


@contextmanager
def open_store(settings: Settings, *, for_page: bool = False) -> Iterator[Store]:
    """The database, closed when the block ends. `for_page`: with the page's own threads
    and connections."""
    from observer.db.store import Store

    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        raise CommandError(f"no database at {missing}; run `observer migrate` to create it")
    store = (
        Store.for_page(settings.database_url, workers=settings.page_workers)
        if for_page
        else Store(settings.database_url)
    )
    try:
        if not store.schema_is_current():
            raise CommandError(
                f"the database at {settings.database_url_safe} has no schema or an old one;"
                " run `observer migrate`"
            )
        yield store
    finally:
        store.close()
