"""Settings, read once at the edge from a mapping (the environment plus `.env`)."""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from observer.core.vocab import KINDS

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_DATABASE_URL = "sqlite:///observer.db"

# name -> (default, meaning); the single source for `.env.example` and the README table.
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "LIVEKIT_URL": ("", "LiveKit server URL (ws://, wss://, http:// or https://)"),
    "LIVEKIT_API_KEY": ("", "API key the observer signs its tokens and API calls with"),
    "LIVEKIT_API_SECRET": ("", "API secret for that key (never printed or logged)"),
    "OBSERVER_DATABASE_URL": (
        DEFAULT_DATABASE_URL,
        "SQLAlchemy URL: sqlite:///path or postgresql://user:pass@host/db",
    ),
    "OBSERVER_ID": ("<hostname>", "Name of this observer, stored on each row it writes"),
    "OBSERVER_ROOM_PATTERN": ("*", "Glob of room names to watch (comma-separated globs allowed)"),
    "OBSERVER_TRACK_KINDS": ("agent", "Participant kinds to record, comma-separated"),
    "OBSERVER_POLL_INTERVAL_S": ("5", "Seconds between room listings (ListRooms)"),
    "OBSERVER_HEARTBEAT_S": ("15", "Seconds between last_seen_at refreshes of open sessions"),
    "OBSERVER_QUEUE_MAX": ("100000", "Events buffered before the daemon stops with exit code 3"),
    "OBSERVER_DB_RETRY_MAX_S": ("10", "Longest wait between database retries, seconds"),
    "OBSERVER_HTTP_ADDR": (
        "127.0.0.1:9465",
        "host:port for /webhook, /metrics, /healthz, /readyz; 'off' disables",
    ),
    "OBSERVER_WEBHOOK_MAX_BYTES": ("1048576", "Largest webhook body accepted (larger: 413)"),
    "OBSERVER_ROOM_PROCESSES": (
        "0",
        "Worker processes holding room connections; 0 holds them in the daemon (see README)",
    ),
    "OBSERVER_STUCK_AGENT_S": ("300", "Seconds an agent may be alone in a room before a warning"),
    "OBSERVER_SETTLE_STALE_S": ("60", "Seconds unseen before reconcile may close an open session"),
    "OBSERVER_FINALIZE_DELAY_S": ("3600", "Seconds after a period ends before reconcile finalizes"),
    "OBSERVER_LOG_FORMAT": ("text", "Log format: text or json"),
    "OBSERVER_LOG_LEVEL": ("info", "Log level: debug, info, warning or error"),
}


class ConfigError(Exception):
    """One or more settings are invalid; the message names every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings: " + "; ".join(problems))


@dataclass(frozen=True)
class LiveKitSettings:
    url: str
    api_key: str
    api_secret: str = field(repr=False)

    @property
    def http_url(self) -> str:
        """The URL for server API calls (http/https)."""
        scheme, rest = self.url.split("://", 1)
        return {"ws": "http", "wss": "https"}.get(scheme, scheme) + "://" + rest

    @property
    def ws_url(self) -> str:
        """The URL for rtc connections (ws/wss)."""
        scheme, rest = self.url.split("://", 1)
        return {"http": "ws", "https": "wss"}.get(scheme, scheme) + "://" + rest


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    livekit: LiveKitSettings | None = None
    observer_id: str = "observer"
    room_patterns: tuple[str, ...] = ("*",)
    track_kinds: frozenset[str] = frozenset({"agent"})
    poll_interval_s: float = 5.0
    heartbeat_s: float = 15.0
    queue_max: int = 100_000
    db_retry_max_s: float = 10.0
    http_host: str | None = "127.0.0.1"
    http_port: int = 9465
    webhook_max_bytes: int = 1_048_576
    room_processes: int = 0
    stuck_agent_s: float = 300.0
    settle_stale_s: float = 60.0
    finalize_delay_s: float = 3600.0
    log_format: str = "text"
    log_level: str = "info"

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password hidden, for messages."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def require_livekit(self) -> LiveKitSettings:
        if self.livekit is None:
            raise ConfigError(["LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be set"])
        return self.livekit

    @classmethod
    def from_mapping(cls, env: Mapping[str, str], *, need_livekit: bool = False) -> Settings:
        """Build settings from a mapping, reporting every bad value at once."""
        problems: list[str] = []

        def get(name: str) -> str:
            return env.get(name, "").strip()

        def number(name: str, *, minimum: float) -> float:
            """The setting's value, or its documented default when unset."""
            default = SETTINGS_DOC[name][0]
            raw = get(name) or default
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                problems.append(f"{name} must be a number, got {raw!r}")
                return float(default)
            if value < minimum:
                problems.append(f"{name} must be at least {minimum:g}, got {raw!r}")
            return value

        def integer(name: str, *, minimum: int) -> int:
            raw = get(name) or SETTINGS_DOC[name][0]
            if not raw.isdigit():
                problems.append(f"{name} must be an integer, got {raw!r}")
                return int(SETTINGS_DOC[name][0])
            if int(raw) < minimum:
                problems.append(f"{name} must be at least {minimum}, got {raw!r}")
            return int(raw)

        url, key, secret = get("LIVEKIT_URL"), get("LIVEKIT_API_KEY"), get("LIVEKIT_API_SECRET")
        livekit = None
        if url or key or secret or need_livekit:
            lk_problems = []
            if not url:
                lk_problems.append("LIVEKIT_URL is missing")
            else:
                parts = urlsplit(url)
                if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
                    lk_problems.append(
                        f"LIVEKIT_URL must look like ws://host:port or https://host, got {url!r}"
                    )
                else:
                    try:
                        parts.port  # noqa: B018 - raises on a malformed port
                    except ValueError:
                        lk_problems.append(f"LIVEKIT_URL has a malformed port: {url!r}")
            if not key:
                lk_problems.append("LIVEKIT_API_KEY is missing")
            if not secret:
                lk_problems.append("LIVEKIT_API_SECRET is missing")
            problems.extend(lk_problems)
            if not lk_problems:
                livekit = LiveKitSettings(url=url.rstrip("/"), api_key=key, api_secret=secret)

        database_url = get("OBSERVER_DATABASE_URL") or DEFAULT_DATABASE_URL
        try:
            database_url = normalize_database_url(database_url)
        except ValueError as exc:
            problems.append(f"OBSERVER_DATABASE_URL {exc}")

        kinds_raw = get("OBSERVER_TRACK_KINDS") or "agent"
        kinds = frozenset(k.strip().lower() for k in kinds_raw.split(",") if k.strip())
        unknown = sorted(kinds - set(KINDS))
        if unknown or not kinds:
            problems.append(
                f"OBSERVER_TRACK_KINDS has unknown kinds {unknown or kinds_raw!r};"
                f" choose from {', '.join(KINDS)}"
            )

        patterns = tuple(p.strip() for p in (get("OBSERVER_ROOM_PATTERN") or "*").split(","))
        patterns = tuple(p for p in patterns if p) or ("*",)

        poll_interval_s = number("OBSERVER_POLL_INTERVAL_S", minimum=0.1)
        heartbeat_s = number("OBSERVER_HEARTBEAT_S", minimum=0.1)
        queue_max = integer("OBSERVER_QUEUE_MAX", minimum=10)
        db_retry_max_s = number("OBSERVER_DB_RETRY_MAX_S", minimum=0.1)
        webhook_max_bytes = integer("OBSERVER_WEBHOOK_MAX_BYTES", minimum=1024)
        room_processes = integer("OBSERVER_ROOM_PROCESSES", minimum=0)
        stuck_agent_s = number("OBSERVER_STUCK_AGENT_S", minimum=1)
        settle_stale_s = number("OBSERVER_SETTLE_STALE_S", minimum=0)
        finalize_delay_s = number("OBSERVER_FINALIZE_DELAY_S", minimum=0)
        http_host: str | None = "127.0.0.1"
        http_port = 9465
        addr = get("OBSERVER_HTTP_ADDR") or "127.0.0.1:9465"
        if addr.lower() == "off":
            http_host = None
        else:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                problems.append(f"OBSERVER_HTTP_ADDR must be host:port or 'off', got {addr!r}")
            else:
                http_host, http_port = host.strip("[]"), int(port)

        log_format = (get("OBSERVER_LOG_FORMAT") or "text").lower()
        if log_format not in LOG_FORMATS:
            problems.append(f"OBSERVER_LOG_FORMAT must be text or json, got {log_format!r}")
        log_level = (get("OBSERVER_LOG_LEVEL") or "info").lower()
        if log_level not in LOG_LEVELS:
            problems.append(f"OBSERVER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

        if problems:
            raise ConfigError(problems)
        return cls(
            database_url=database_url,
            livekit=livekit,
            observer_id=get("OBSERVER_ID") or socket.gethostname(),
            room_patterns=patterns,
            track_kinds=kinds,
            poll_interval_s=poll_interval_s,
            heartbeat_s=heartbeat_s,
            queue_max=queue_max,
            db_retry_max_s=db_retry_max_s,
            http_host=http_host,
            http_port=http_port,
            webhook_max_bytes=webhook_max_bytes,
            room_processes=room_processes,
            stuck_agent_s=stuck_agent_s,
            settle_stale_s=settle_stale_s,
            finalize_delay_s=finalize_delay_s,
            log_format=log_format,
            log_level=log_level,
        )


def normalize_database_url(raw: str) -> str:
    """Check a database URL and pick this project's driver for PostgreSQL."""
    try:
        url: URL = make_url(raw)
    except ArgumentError:
        raise ValueError(f"is not a database URL: {_hide(raw)!r}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url.render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        pg = url.set(drivername="postgresql+psycopg")
        return pg.render_as_string(hide_password=False)
    raise ValueError(
        f"uses an unsupported driver {url.drivername!r}; use sqlite:/// or postgresql://"
    )


def _hide(raw: str) -> str:
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return scheme + "://***@" + rest.rsplit("@", 1)[1]
    return raw
