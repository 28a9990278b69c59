"""An installed observer (a wheel, not the source tree) migrates both databases, and the
daemon refuses to start on a database without the schema unless told to migrate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

from observer.db import migrate
from observer.db.store import Store

# one worker builds the wheel once for the module: two builds of one checkout at once share
# its build/ folder and one removes what the other is installing
pytestmark = [pytest.mark.install, pytest.mark.xdist_group("install")]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project's wheel; its dependencies come from this one."""
    base = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    said = build.stdout + build.stderr
    assert "Deprecat" not in said  # e.g. a licence written as a table
    # e.g. "Package 'observer.web.static' is absent from the `packages` configuration", which
    # an editable install (scripts/dev.sh) printed some 90 lines of
    assert "Warning" not in said, said
    (wheel,) = (base / "dist").glob("*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return env_dir


def run_installed(
    env_dir: Path, args: list[str], url: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    # the dependencies of this test run, but never the source tree's observer package
    clean["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [str(env_dir / "bin" / "observer"), *args],
        env={**clean, "OBSERVER_DATABASE_URL": url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_wheel_migrates(installed: Path, empty_db_url: str, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import observer; print(observer.__file__)"],
        env={**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert str(installed) in where.stdout, where.stdout + where.stderr
    for _ in range(2):  # safe to repeat
        r = run_installed(installed, ["migrate"], empty_db_url, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "head revision" in r.stdout
    store = Store(empty_db_url)
    try:
        assert store.schema_is_current()
    finally:
        store.close()


def start_run(url: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    env = {
        **clean,
        "OBSERVER_DATABASE_URL": url,
        # LiveKit is not needed to reach the database check; nothing listens here
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_API_KEY": "key",
        "LIVEKIT_API_SECRET": "secret",
        "OBSERVER_HTTP_ADDR": "off",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "observer", "run", *extra],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_run_on_a_database_without_schema_says_so_and_exits_2(
    empty_db_url: str, tmp_path: Path
) -> None:
    proc = start_run(empty_db_url, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    if empty_db_url.startswith("sqlite"):  # no file: none is created
        assert "no database at" in out and not list(tmp_path.glob("*.db")), out
    else:
        assert "schema is missing or old" in out, out
    assert "observer migrate" in out and "--migrate" in out, out
    assert "not reachable" not in out


def test_run_migrate_creates_the_schema_and_starts(empty_db_url: str, tmp_path: Path) -> None:
    proc = start_run(empty_db_url, tmp_path, "--migrate")
    try:
        deadline = time.monotonic() + 60
        store = Store(empty_db_url)
        try:
            while time.monotonic() < deadline:
                try:
                    if migrate.is_current(store.engine):
                        break
                except Exception:
                    pass
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.2)
            assert migrate.is_current(store.engine)
        finally:
            store.close()
        time.sleep(1)
        assert proc.poll() is None  # it went on to run
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "schema migrated" in out
