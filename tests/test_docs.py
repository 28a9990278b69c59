"""README and .env.example stay true to the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from observer.config import SETTINGS_DOC, Settings

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


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_contents_and_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^#{2,4} (.+)$", readme, re.M)
    anchors = {slug(h) for h in headings}
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    for heading in (h for h in re.findall(r"^## (.+)$", readme, re.M) if h != "Contents"):
        assert f"(#{slug(heading)})" in contents, f"{heading!r} missing from Contents"
    for anchor in re.findall(r"\]\(#([^)]+)\)", readme):
        assert anchor in anchors, f"README links to #{anchor}, which no heading is"
    for path in re.findall(r"\]\((?!https?:|#)([^)#]+)", readme):
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
    history = (ROOT / "docs" / "benchmarks.md").read_text()
    for anchor in re.findall(r"docs/benchmarks\.md#([^)]+)\)", readme):
        assert anchor in {slug(h) for h in re.findall(r"^## (.+)$", history, re.M)}, anchor


def test_dev_script_writes_settings_the_observer_accepts() -> None:
    """The quick start's second shell reads the .env that scripts/dev.sh writes."""
    script = (ROOT / "scripts" / "dev.sh").read_text()
    body = script.split("cat >.env <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    body = body.replace("$dev_url", re.search(r'^dev_url="([^"]+)"', script, re.M)[1])
    env = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    settings = Settings.from_mapping(env, need_livekit=True)
    assert settings.livekit is not None and settings.livekit.url == "ws://127.0.0.1:7880"
    assert len(settings.livekit.api_secret) >= 32  # PyJWT warns about shorter HMAC keys
    readme = (ROOT / "README.md").read_text()
    assert "scripts/dev.sh" in readme and "writes `./.env`" in readme
