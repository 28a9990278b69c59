"""Settings and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from livekit_server import LiveKitServer, free_tcp_port

from observer.cli import main, parse_time
from observer.config import ConfigError, Settings

pytestmark = pytest.mark.unit

GOOD = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "key",
    "LIVEKIT_API_SECRET": "s3cret-value-that-must-not-leak",
}


def test_defaults_and_urls() -> None:
    s = Settings.from_mapping(GOOD)
    assert s.database_url == "sqlite:///observer.db"
    assert s.track_kinds == {"agent"}
    assert s.livekit is not None
    assert s.livekit.http_url == "http://127.0.0.1:7880"
    assert s.livekit.ws_url == "ws://127.0.0.1:7880"


def test_secrets_stay_out_of_repr() -> None:
    env = {**GOOD, "OBSERVER_DATABASE_URL": "postgresql://u:dbpass@h/db"}
    s = Settings.from_mapping(env)
    assert "s3cret" not in repr(s)
    assert "dbpass" not in repr(s)
    assert "dbpass" not in s.database_url_safe
    assert s.database_url.startswith("postgresql+psycopg://")


def test_every_problem_is_named_at_once() -> None:
    env = {
        "LIVEKIT_URL": "not a url",
        "LIVEKIT_API_KEY": "k",
        "OBSERVER_DATABASE_URL": "mysql://x/y",
        "OBSERVER_POLL_INTERVAL_S": "soon",
        "OBSERVER_HEARTBEAT_S": "nan",
        "OBSERVER_QUEUE_MAX": "1.5",
        "OBSERVER_TRACK_KINDS": "agent,robot",
        "OBSERVER_LOG_FORMAT": "xml",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_mapping(env)
    msg = str(err.value)
    for needle in (
        "LIVEKIT_URL",
        "LIVEKIT_API_SECRET",
        "mysql",
        "OBSERVER_POLL_INTERVAL_S",
        "OBSERVER_HEARTBEAT_S must be a number, got 'nan'",
        "OBSERVER_QUEUE_MAX must be an integer",
        "robot",
        "OBSERVER_LOG_FORMAT",
    ):
        assert needle in msg


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "OBSERVER_"))}
    return subprocess.run(
        [sys.executable, "-m", "observer", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_settings_exit_2_with_one_line_and_no_secret(tmp_path: Path) -> None:
    env = {
        "LIVEKIT_URL": "ftp://x",
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "topsecret-xyz",
        "OBSERVER_QUEUE_MAX": "many",
    }
    r = run_cli(["run"], env, tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "LIVEKIT_URL" in lines[0] and "OBSERVER_QUEUE_MAX" in lines[0]
    assert "Traceback" not in r.stderr and "topsecret" not in r.stderr + r.stdout


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "OBSERVER_DATABASE_URL=sqlite:///from-env-file.db\nOBSERVER_LOG_LEVEL=loud\n"
    )
    r = run_cli(["migrate"], {"OBSERVER_LOG_LEVEL": "info"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-env-file.db").exists()


def test_migrate_default_sqlite_twice_and_version(tmp_path: Path) -> None:
    for _ in range(2):
        r = run_cli(["migrate"], {}, tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "observer.db").exists()
    r = run_cli(["--version"], {}, tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("observer ")
    r = run_cli(["sessions", "--format", "json"], {}, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]"


def test_unreachable_database_is_one_line_exit_2(tmp_path: Path) -> None:
    port = free_tcp_port()
    r = run_cli(
        ["sessions"], {"OBSERVER_DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{port}/x"}, tmp_path
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "database error" in r.stderr
    assert "pw@" not in r.stderr


def test_parse_time_forms() -> None:
    assert parse_time("2026-03-01").isoformat() == "2026-03-01T00:00:00+00:00"
    assert parse_time("2026-03-01T10:00:00+02:00").hour == 8


def lk_env(server: LiveKitServer, db: str, secret: str | None = None) -> dict[str, str]:
    return {
        "LIVEKIT_URL": server.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": secret or server.api_secret,
        "OBSERVER_DATABASE_URL": db,
    }


@pytest.mark.live
def test_check_against_real_server(
    livekit_server: LiveKitServer, db_url: str, tmp_path: Path
) -> None:
    ok = run_cli(["check"], lk_env(livekit_server, db_url), tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "livekit: ok" in ok.stdout and "database: ok" in ok.stdout

    wrong = run_cli(["check"], lk_env(livekit_server, db_url, "x" * 40), tmp_path)
    assert wrong.returncode == 1
    assert "livekit: FAILED" in wrong.stdout and "LIVEKIT_API_SECRET" in wrong.stdout
    assert "x" * 40 not in wrong.stdout + wrong.stderr

    env = lk_env(livekit_server, db_url)
    env["LIVEKIT_URL"] = f"ws://127.0.0.1:{free_tcp_port()}"
    gone = run_cli(["check"], env, tmp_path)
    assert gone.returncode == 1 and "unreachable" in gone.stdout


@pytest.mark.live
def test_check_reports_unmigrated_database(
    livekit_server: LiveKitServer, empty_db_url: str, tmp_path: Path
) -> None:
    r = run_cli(["check"], lk_env(livekit_server, empty_db_url), tmp_path)
    assert r.returncode == 1 and "observer migrate" in r.stdout


def test_main_returns_codes_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", "oracle://x")
    assert main(["migrate"]) == 2


def test_livekit_url_may_list_the_nodes_of_a_cluster() -> None:
    s = Settings.from_mapping({**GOOD, "LIVEKIT_URL": " ws://a:7880/ , wss://b.example "})
    assert s.livekit is not None
    assert s.livekit.urls == ("ws://a:7880", "wss://b.example")
    assert s.livekit.http_url == "http://a:7880"
    with pytest.raises(ConfigError) as err:
        Settings.from_mapping({**GOOD, "LIVEKIT_URL": "ws://a:7880,ftp://b"})
    assert "ftp://b" in str(err.value)
