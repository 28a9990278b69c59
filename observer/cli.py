"""Command line: `observer migrate|check|run|sessions|rooms|usage|reconcile|export|prune|forget|
web|simulate`.

Settings are read once here, each command runs from the table below, and every error
that reaches the user is printed here as one line with an exit code a scheduler can act
on: 2 for bad input or settings, or when nothing was done; 1 for a failure on the way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from sqlalchemy.exc import SQLAlchemyError

from observer import logs
from observer.arguments import NEEDS_LIVEKIT, USES, build_parser
from observer.commands import daemon, export, reports, retention, web
from observer.config import ConfigError, Settings
from observer.errors import EXIT_FAILED, EXIT_USAGE, CommandError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    run: Callable[[Settings, argparse.Namespace], int]
    # A one-shot command documents exit 2 for a database or file error: nothing was done.
    one_shot: bool = False


COMMANDS: dict[str, Command] = {
    "migrate": Command(daemon.cmd_migrate, one_shot=True),
    "check": Command(daemon.cmd_check),
    "run": Command(daemon.cmd_run),
    "sessions": Command(reports.cmd_sessions, one_shot=True),
    "rooms": Command(reports.cmd_rooms, one_shot=True),
    "usage": Command(reports.cmd_usage, one_shot=True),
    "reconcile": Command(reports.cmd_reconcile, one_shot=True),
    "export": Command(export.cmd_export, one_shot=True),
    "prune": Command(retention.cmd_prune, one_shot=True),
    "forget": Command(retention.cmd_forget, one_shot=True),
    "web": Command(web.cmd_web),
    "simulate": Command(reports.cmd_simulate),
}


def read_env(env_file: str | None) -> dict[str, str]:
    """The environment over the `.env` file: real environment variables win."""
    path = Path(env_file or ".env")
    if env_file and not path.is_file():
        raise CommandError(f"env file not found: {env_file}")
    values = (
        {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    )
    return {**values, **os.environ}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or bad arguments (said in one line)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = COMMANDS[args.command]
    try:
        env = read_env(args.env_file)
        settings = Settings.from_mapping(
            env, need_livekit=args.command in NEEDS_LIVEKIT, uses=USES[args.command]
        )
        logs.setup(settings.log_level, settings.log_format)
        for d in settings.deprecations:
            log.warning(
                "deprecated setting name; it goes in the next release",
                extra={"setting": d.old, "use": d.new, "ignored": d.ignored},
            )
        return command.run(settings, args)
    except ConfigError as exc:
        where = f" ({settings_source(args.env_file)})" if exc.missing else ""
        return fail(f"{exc}{where}", EXIT_USAGE)
    except CommandError as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except (SQLAlchemyError, OSError) as exc:  # the database or a file: one clear line
        if isinstance(exc, SQLAlchemyError):
            first = str(exc).splitlines()[0] if str(exc) else ""
            msg = f"database error: {type(exc).__name__}: {first}"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return fail(msg, EXIT_USAGE if command.one_shot else EXIT_FAILED)


def fail(message: str, code: int) -> int:
    print(f"observer: {message}", file=sys.stderr)
    return code


def settings_source(env_file: str | None) -> str:
    """Where settings come from, for the message that says one is missing."""
    if env_file:
        return f"settings are read from the environment and {env_file}"
    here = "" if Path(".env").is_file() else ", which does not exist here,"
    return (
        f"settings are read from the environment and ./.env{here} or from --env-file FILE;"
        " .env.example lists them all"
    )


if __name__ == "__main__":
    sys.exit(main())
