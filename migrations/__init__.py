"""Alembic revisions; installed as observer.db.migrations."""
