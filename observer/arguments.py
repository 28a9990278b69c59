"""The command line's words: commands, options, their help, and the settings each command
reads (and so asks for)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from observer import __version__
from observer.config import SETTINGS_DOC, is_used

EXIT_USAGE = 2
WHEN = "ISO 8601 date/time (UTC unless it says otherwise), or relative: 30m, 24h, 7d"

LIVEKIT = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
DATABASE = ("OBSERVER_DATABASE_URL",)
LOGS = ("OBSERVER_LOG_FORMAT", "OBSERVER_LOG_LEVEL")

# The settings each command reads; the others are not read at all (None: every setting).
# `observer web` applies the daemon's access rules to the page: a setting they read belongs
# in its list too.
USES: dict[str, tuple[str, ...] | None] = {
    "migrate": (*DATABASE, *LOGS),
    "check": (*LIVEKIT, *DATABASE, "OBSERVER_FAILOVER_S", "OBSERVER_ROOM_PATTERN", *LOGS),
    "run": None,
    "sessions": (*DATABASE, *LOGS),
    "rooms": (*DATABASE, *LOGS),
    "usage": (*DATABASE, *LOGS),
    "reconcile": (
        *LIVEKIT,
        *DATABASE,
        "OBSERVER_SETTLE_STALE_S",
        "OBSERVER_FINALIZE_DELAY_S",
        "OBSERVER_EXPORT_",
        *LOGS,
    ),
    "export": (*DATABASE, "OBSERVER_EXPORT_", *LOGS),
    "prune": (*DATABASE, "OBSERVER_RETAIN_", *LOGS),
    "forget": (*DATABASE, "OBSERVER_FORGET_KEY", *LOGS),
    "web": (
        *DATABASE,
        "OBSERVER_HTTP_TOKEN",
        "OBSERVER_HTTP_HOSTS",
        "OBSERVER_HTTP_TRUST_PROXY",
        "OBSERVER_STUCK_AGENT_S",
        "OBSERVER_FAILOVER_S",
        "OBSERVER_PAGE_WORKERS",
        *LOGS,
    ),
    "simulate": (*LIVEKIT, *LOGS),
}
# Commands that cannot work without LiveKit; `reconcile` asks it only when settling.
NEEDS_LIVEKIT = frozenset({"check", "run", "simulate"})

SETTINGS_SOURCE = (
    "Settings come from the environment, then ./.env in the current directory (or the file"
    " --env-file names); .env.example lists them all."
)


def settings_read(command: str) -> str:
    """What a command's --help says about its settings."""
    uses = USES[command]
    if uses is None:
        names = "every setting in .env.example"
    else:
        names = ", ".join(n for n in SETTINGS_DOC if is_used(n, uses))
    return f"Reads {names}. {SETTINGS_SOURCE}"


class _Help(argparse.HelpFormatter):
    """Shows an option's default where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "%(default)" in text
            or default in (None, False, argparse.SUPPRESS)
            or default == []
        ):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem, and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="observer",
        description="Record how long AI agents stay in LiveKit rooms, as rows in SQL.",
        epilog=f"{SETTINGS_SOURCE} `observer COMMAND --help` says which settings a command reads.",
    )
    p.add_argument("--version", action="version", version=f"observer {__version__}")
    p.add_argument(
        "--env-file", metavar="FILE", help="read settings from this file instead of ./.env"
    )
    # also accepted after the command: `observer sessions --env-file prod.env`
    env_file = _Parser(add_help=False)
    env_file.add_argument(
        "--env-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read settings from this file instead of ./.env",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. {details}".strip(),
            epilog=settings_read(name),
            parents=[env_file],
        )

    command(
        "migrate",
        "create or upgrade the database schema (safe to repeat)",
        "Creates the SQLite file when there is none.",
    )
    command(
        "check",
        "check that LiveKit and the database answer",
        "Lists rooms on every node LIVEKIT_URL names, checks the database's schema, and names"
        " the observers alive. Exit 0 when all is well, 1 otherwise.",
    )
    run = command(
        "run",
        "watch rooms and record sessions until SIGTERM/SIGINT",
        "Exit 0 stopped, 1 failed, 2 bad settings (a refused API key, a taken port, a"
        " database without the schema), 3 event buffer full.",
    )
    run.add_argument(
        "--migrate", action="store_true", help="create or upgrade the schema first if needed"
    )

    s = command(
        "sessions",
        "list recorded sessions, newest first",
        "--room, --identity, --agent-name and --kind match exactly.",
    )
    s.add_argument("--room", metavar="NAME", help="only sessions in this room")
    s.add_argument("--identity", metavar="IDENTITY", help="only this participant identity")
    s.add_argument("--agent-name", metavar="NAME", help="only agents of this name")
    s.add_argument(
        "--kind", metavar="KIND", help="only this participant kind: agent, standard, sip, ..."
    )
    _window(s, since="sessions open at or after: ", until="sessions that joined before: ")
    state = s.add_mutually_exclusive_group()
    state.add_argument(
        "--open", action="store_const", dest="state", const="open", help="only open sessions"
    )
    state.add_argument(
        "--closed", action="store_const", dest="state", const="closed", help="only closed ones"
    )
    _listing(s)

    rm = command("rooms", "list recorded rooms, newest first (by the server's creation time)")
    rm.add_argument("--room", metavar="NAME", help="only rooms of this name")
    _window(rm, since="rooms live at or after: ", until="rooms first seen before: ")
    rstate = rm.add_mutually_exclusive_group()
    rstate.add_argument(
        "--open", action="store_const", dest="state", const="open", help="only live rooms"
    )
    rstate.add_argument(
        "--closed", action="store_const", dest="state", const="closed", help="only ended rooms"
    )
    _listing(rm)

    u = command(
        "usage",
        "standing time per group inside a time window, computed in SQL",
        "A session counts for its part inside the window (and inside each day or month).",
    )
    u.add_argument(
        "--from", dest="start", metavar="TIME", required=True, help="window start: " + WHEN
    )
    u.add_argument("--to", dest="end", metavar="TIME", help="window end, exclusive (default now)")
    u.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="GROUP",
        help="agent, identity, room, day or month (UTC), attribute:KEY (an agent attribute),"
        " room-metadata or room-metadata:KEY (a key of the room's JSON metadata);"
        " repeat or comma-separate",
    )
    u.add_argument(
        "--rounding",
        default="none",
        metavar="RULE",
        help="none (exact ms), second, or minute (each session rounded up, as LiveKit bills)",
    )
    u.add_argument("--exclude-open", action="store_true", help="leave out open sessions")
    u.add_argument(
        "--states",
        action="store_true",
        help="add time in each agent state (lk.agent.state) and alone, per group",
    )
    u.add_argument(
        "--tokens",
        action="store_true",
        help="add model usage (tokens, characters, audio) reported by agents, per group",
    )
    u.add_argument(
        "--prices",
        metavar="FILE",
        help="prices file (TOML): add costs per group; a session's minutes at the agent-minute"
        " price at its join, model usage at the price when reported",
    )
    u.add_argument(
        "--kind", metavar="KIND", default="agent", help="participant kind counted, or 'all'"
    )
    u.add_argument(
        "--now", metavar="TIME", help="count open sessions up to this time instead of now"
    )
    _format(u)

    r = command(
        "reconcile",
        "settle open sessions and roll up a finished period",
        "Exit 0 clean, 1 differences from the statement, 2 error (nothing written).",
    )
    r.add_argument("--period", metavar="PERIOD", help="YYYY-MM (a month) or YYYY-MM-DD (a day)")
    r.add_argument("--from", dest="start", metavar="TIME", help="period start (with --to): " + WHEN)
    r.add_argument("--to", dest="end", metavar="TIME", help="period end, exclusive")
    r.add_argument("--no-settle", action="store_true", help="do not ask LiveKit; close nothing")
    r.add_argument("--force", action="store_true", help="rewrite a finalized period")
    r.add_argument(
        "--statement", metavar="FILE", help="CSV with group_kind,group_key,minutes to compare"
    )
    r.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="GROUP",
        help="also roll up by attribute:KEY, room-metadata or room-metadata:KEY (repeatable;"
        " agent and room are always rolled up)",
    )
    r.add_argument(
        "--tolerance-minutes",
        metavar="MINUTES",
        default="0",
        help="differences up to this are fine",
    )
    r.add_argument("--prices", metavar="FILE", help="prices file (TOML): keep each group's cost")
    r.add_argument("--report", metavar="FILE", help="write the differences to this .csv or .json")
    r.add_argument(
        "--report-format", choices=("csv", "json"), help="the report's format (default: its suffix)"
    )
    r.add_argument(
        "--now",
        metavar="TIME",
        help="roll up as if it were this time (settling always uses the real time)",
    )

    r.add_argument(
        "--export",
        action="store_true",
        help="then send finalized usage to the billing system (as `observer export`)",
    )

    x = command(
        "export",
        "send the usage of finalized periods to a billing system, exactly once",
        "Sends only what is not yet acknowledged; a period whose usage changed since gets a"
        " correction of the difference. Exit 0 all acknowledged, 1 a customer without a billing"
        " id, usage the target does not take, a negative correction to settle by hand, or"
        " events refused or still pending, 2 bad settings (nothing sent).",
    )
    x.add_argument(
        "--from", dest="start", metavar="TIME", help="only days or periods from: " + WHEN
    )
    x.add_argument("--to", dest="end", metavar="TIME", help="... and starting before")
    x.add_argument(
        "--dry-run", action="store_true", help="print what would be sent; write and send nothing"
    )
    x.add_argument(
        "--format", choices=("table", "json"), default="table", help="--dry-run's output format"
    )
    x.add_argument("--now", metavar="TIME", help="count as if it were this time")
    x.add_argument(
        "--metrics-file",
        metavar="FILE",
        help="write the ledger's counts and the run's time here (Prometheus text)",
    )
    x.add_argument(
        "--retry-refused",
        action="store_true",
        help="send again, as new events, what the billing system refused (after a fix)",
    )
    x.add_argument(
        "--settled",
        metavar="ID",
        action="append",
        help="record that the negative correction ID was settled by hand (a credit note);"
        " repeatable",
    )

    pr = command(
        "prune",
        "delete webhook events, session spans and session witnesses past their retention",
        "Never a session row, and nothing of a period observer reconcile has not finalized."
        " Deletes a batch of keys per transaction, so it can run beside the daemon. Exit 0"
        " done, 1 something could not be deleted, 2 bad input.",
    )
    pr.add_argument(
        "--older-than",
        metavar="AGE",
        help="delete every kind older than this: 90d, 12w or 48h (default: the"
        " OBSERVER_RETAIN_*_DAYS of each kind)",
    )
    pr.add_argument(
        "--batch-size",
        metavar="N",
        default="1000",
        help="keys deleted per statement and transaction",
    )

    fg = command(
        "forget",
        "replace a participant identity with its keyed hash everywhere it is stored",
        "Sessions, webhook events and their bodies, model usage, room metadata, rollups and"
        " the export ledger; durations and totals are kept. Exit 0 forgotten (or forgotten"
        " before: nothing changed), 1 the identity was not found, 2 bad input or no"
        " OBSERVER_FORGET_KEY.",
    )
    fg.add_argument("--identity", metavar="ID", required=True, help="the participant identity")

    w = command(
        "web",
        "serve the read-only page from the database alone",
        "Needs no LiveKit settings. Exit 0 stopped, 1 database unreachable, 2 bad input (--addr,"
        " settings, a taken port) or a database without the schema.",
    )
    w.add_argument(
        "--addr",
        metavar="HOST:PORT",
        default="127.0.0.1:9466",
        help="where to listen (the daemon's own page is on OBSERVER_HTTP_ADDR, 9465)",
    )

    sim = command(
        "simulate",
        "send simulated agents into rooms",
        "Real rtc clients with agent tokens, for demos and tests; each room gets users too.",
    )
    sim.add_argument("--rooms", metavar="N", type=int, default=2, help="rooms to create")
    sim.add_argument("--agents", metavar="N", type=int, default=1, help="agents per room")
    sim.add_argument(
        "--users", metavar="N", type=int, default=1, help="non-agent participants per room"
    )
    sim.add_argument(
        "--duration", metavar="SECONDS", type=float, default=20.0, help="how long each agent stays"
    )
    sim.add_argument(
        "--room-prefix", metavar="PREFIX", default="sim", help="rooms are named PREFIX-1, ..."
    )
    sim.add_argument("--no-audio", action="store_true", help="agents do not publish audio")
    return p


def _window(p: argparse.ArgumentParser, *, since: str, until: str) -> None:
    p.add_argument("--since", metavar="TIME", help=since + WHEN)
    p.add_argument("--until", metavar="TIME", help=until + WHEN)


def _listing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", metavar="N", default=None, help="at most N rows (table: 100; csv and json: all)"
    )
    _format(p)


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
