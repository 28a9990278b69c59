"""README and .env.example stay true to the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from observer.config import SETTINGS_DOC

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_with_its_default() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name, (default, _meaning) in SETTINGS_DOC.items():
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from README"
        if default and not default.startswith("<") and not name.startswith("LIVEKIT_"):
            assert f"{name}={default}" in example, f"{name} default differs in .env.example"


def test_readme_documents_every_sessions_column() -> None:
    from observer.db.schema import SessionRow

    readme = (ROOT / "README.md").read_text()
    for column in SessionRow.__table__.columns:
        assert f"`{column.name}`" in readme, f"sessions.{column.name} missing from README"


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in (ROOT / "README.md").read_text()
