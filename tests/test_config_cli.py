"""Settings and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from livekit_server import LiveKitServer, free_tcp_port

from observer.cli import main
from observer.commands.parse import parse_time
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
        "OBSERVER_LAST_SEEN_REFRESH_S": "nan",
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
        "OBSERVER_LAST_SEEN_REFRESH_S must be a number, got 'nan'",
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
    # the release, from the server itself, and what it supports
    assert f"livekit: release 1.13.5 at {livekit_server.ws_url}" in ok.stdout
    assert "  join times in milliseconds (joined_at_ms): yes" in ok.stdout
    assert "  the participant_connection_aborted webhook: yes" in ok.stdout

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


# --------------------------------------------------------------------------- #
# Each command asks for what it uses, and says where settings come from        #
# --------------------------------------------------------------------------- #


def test_each_command_reads_only_its_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half the LiveKit settings and a bad daemon setting trouble only the commands that
    read them."""
    from observer.arguments import USES

    env = {"LIVEKIT_API_KEY": "k", "OBSERVER_QUEUE_MAX": "many"}
    for command in ("migrate", "sessions", "rooms", "usage", "web"):
        Settings.from_mapping(env, uses=USES[command])  # nothing to complain about
    for command in ("run", "check", "reconcile"):
        with pytest.raises(ConfigError, match="LIVEKIT_URL is missing"):
            Settings.from_mapping(env, need_livekit=command != "reconcile", uses=USES[command])
    with pytest.raises(ConfigError, match="OBSERVER_QUEUE_MAX"):
        Settings.from_mapping({**GOOD, **env, "LIVEKIT_API_KEY": "k"}, uses=USES["run"])

    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["migrate"]) == 0
    assert main(["sessions"]) == 0
    assert "(0 sessions)" in capsys.readouterr().out
    assert main(["run"]) == 2
    assert "LIVEKIT_URL is missing" in capsys.readouterr().err


def test_a_missing_setting_says_where_settings_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in os.environ:
        if name.startswith(("LIVEKIT_", "OBSERVER_")):
            monkeypatch.delenv(name)
    capsys.readouterr()
    assert main(["simulate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    missing = "LIVEKIT_URL is missing; LIVEKIT_API_KEY is missing; LIVEKIT_API_SECRET is missing"
    assert missing in err
    assert "read from the environment and ./.env, which does not exist here," in err
    assert "--env-file FILE" in err and ".env.example" in err

    (tmp_path / ".env").write_text("OBSERVER_LOG_LEVEL=info\n")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "from the environment and ./.env or from --env-file FILE" in err, err

    (tmp_path / "prod.env").write_text("LIVEKIT_URL=ws://x:7880\n")
    assert main(["run", "--env-file", "prod.env"]) == 2
    err = capsys.readouterr().err
    assert "LIVEKIT_URL" not in err and "read from the environment and prod.env" in err, err
    # a wrong value is no missing value: no lecture about where settings come from
    monkeypatch.setenv("OBSERVER_LOG_LEVEL", "loud")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "OBSERVER_LOG_LEVEL must be one of" in err and ".env" not in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["sessions"],
        ["rooms", "--open"],
        ["usage", "--from", "7d"],
        ["reconcile", "--period", "2026-03", "--no-settle"],
        ["web", "--addr", "127.0.0.1:1"],  # never reached
    ],
)
def test_reading_commands_never_create_a_database(
    args: list[str],
    empty_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before `observer migrate`: one line naming it, exit 2; no SQLite file left behind,
    and nothing created in an empty PostgreSQL database."""
    from sqlalchemy import create_engine, inspect

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", empty_db_url)
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "run `observer migrate`" in err, err
    if empty_db_url.startswith("sqlite"):
        assert "no database at" in err and "observer.db" in err
        assert list(tmp_path.iterdir()) == []
    else:
        assert "has no schema or an old one" in err
        engine = create_engine(empty_db_url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()


def test_run_and_check_never_create_a_database_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    nobody = f"ws://127.0.0.1:{free_tcp_port()}"
    for name, value in {**GOOD, "LIVEKIT_URL": nobody, "LIVEKIT_API_SECRET": "s" * 40}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OBSERVER_DATABASE_URL", "sqlite:///observer.db")
    capsys.readouterr()
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "no database at" in err and "`observer run --migrate`" in err, err
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "database: FAILED: no database at" in out and "run `observer migrate`" in out
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# Help and bad arguments                                                       #
# --------------------------------------------------------------------------- #


def subcommands() -> dict[str, Any]:
    import argparse

    from observer.arguments import build_parser

    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_describes_itself_its_settings_and_its_options() -> None:
    import argparse

    from observer.arguments import USES

    commands = subcommands()
    assert set(commands) == set(USES)
    for name, parser in commands.items():
        text = parser.format_help()
        assert parser.description and len(parser.description) > 20, name
        assert "Reads " in text and "./.env" in text and "--env-file" in text, name
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"observer {name} {action.option_strings}: no help"
    usage = commands["usage"].format_help()
    assert "attribute:KEY" in usage and "room-metadata:KEY" in usage
    assert "(default: none)" in usage and "(default: agent)" in usage
    assert "Reads OBSERVER_DATABASE_URL, OBSERVER_LOG_FORMAT, OBSERVER_LOG_LEVEL." in usage
    assert "(default: 2)" in commands["simulate"].format_help()
    assert "LIVEKIT" not in commands["web"].format_help()
    # one word for one kind of value
    for name in ("usage", "reconcile"):
        assert "--by GROUP" in commands[name].format_usage(), name
    reconcile = commands["reconcile"].format_usage()
    assert "--statement FILE" in reconcile and "--prices FILE" in reconcile
    assert "--report FILE" in reconcile and "--from TIME" in reconcile
    assert "--since TIME" in commands["sessions"].format_usage()


def test_bad_arguments_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["sessions", "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format" in err and "`observer sessions --help`" in err
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["simulate", "--rooms", "x"]) == 2
    assert "invalid int value: 'x'" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "COMMAND" in capsys.readouterr().out


def test_simulate_refuses_impossible_numbers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["simulate", "--rooms", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--rooms must be at least 1" in err


@pytest.mark.parametrize(
    ("given", "value", "deprecated"),
    [
        ({"OBSERVER_LAST_SEEN_REFRESH_S": "7"}, 7.0, ()),
        ({"OBSERVER_HEARTBEAT_S": "8"}, 8.0, (("OBSERVER_HEARTBEAT_S", False),)),
        (
            {"OBSERVER_HEARTBEAT_S": "8", "OBSERVER_LAST_SEEN_REFRESH_S": "7"},
            7.0,
            (("OBSERVER_HEARTBEAT_S", True),),
        ),
    ],
    ids=["new", "old", "both"],
)
def test_the_last_seen_refresh_is_read_under_its_old_name_too(
    given: dict[str, str], value: float, deprecated: tuple[tuple[str, bool], ...]
) -> None:
    """The old name still works, and is reported; when both are given the new one wins."""
    s = Settings.from_mapping(given)
    assert s.last_seen_refresh_s == value
    assert tuple((d.old, d.ignored) for d in s.deprecations) == deprecated
    assert all(d.new == "OBSERVER_LAST_SEEN_REFRESH_S" for d in s.deprecations)
    # a command that does not read the setting says nothing about its name
    assert Settings.from_mapping(given, uses=("OBSERVER_LOG_",)).deprecations == ()


def test_the_old_name_of_a_setting_is_warned_about_once_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from observer import cli

    seen: list[float] = []

    def run(settings: Settings, _args: object) -> int:
        seen.append(settings.last_seen_refresh_s)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "run", cli.Command(run))
    monkeypatch.setattr(
        cli,
        "read_env",
        lambda _f: {
            "LIVEKIT_URL": "ws://127.0.0.1:7880",
            "LIVEKIT_API_KEY": "k",
            "LIVEKIT_API_SECRET": "s",
            "OBSERVER_HEARTBEAT_S": "8",
            "OBSERVER_LAST_SEEN_REFRESH_S": "7",
        },
    )
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert cli.main(["run"]) == 0
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    assert seen == [7.0]
    lines = [x for x in capsys.readouterr().err.splitlines() if "deprecated" in x]
    assert len(lines) == 1, lines
    assert "OBSERVER_HEARTBEAT_S" in lines[0] and "OBSERVER_LAST_SEEN_REFRESH_S" in lines[0]
