"""`observer prune` (data past its retention deleted, sessions never) and `observer forget`
(an identity replaced by its keyed hash)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from observer.commands.store import open_store
from observer.config import Settings
from observer.core.retention import forget_hash, parse_age
from observer.core.times import iso
from observer.db.retention import KINDS, Kind, KindResult
from observer.errors import EXIT_FAILED, EXIT_OK, CommandError

BATCH_MAX = 10_000  # a witness's key is three values: SQLite takes 32,766 in one statement
LABEL: dict[Kind, str] = {
    "webhook_events": "webhook events",
    "session_spans": "session spans",
    "session_witnesses": "session witnesses",
}


def batch_size(raw: str) -> int:
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= BATCH_MAX:
        raise CommandError(
            f"--batch-size must be a whole number from 1 to {BATCH_MAX}, got {raw!r}"
        )
    return int(text)


def ages(settings: Settings, older_than: str | None) -> dict[Kind, timedelta]:
    """How old each kind may get: `--older-than` for all, else each kind's setting."""
    if older_than is not None:
        try:
            age = parse_age(older_than)
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        return dict.fromkeys(KINDS, age)
    return {
        "webhook_events": timedelta(days=settings.retain_webhook_events_days),
        "session_spans": timedelta(days=settings.retain_spans_days),
        "session_witnesses": timedelta(days=settings.retain_witnesses_days),
    }


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    size = batch_size(args.batch_size)
    kept_for = ages(settings, args.older_than)
    now = datetime.now(UTC)
    failed = False
    with open_store(settings) as store:
        cov = store.prune_coverage()
        for kind in KINDS:
            cutoff = now - kept_for[kind]
            result = store.prune(kind, cutoff=cutoff, cov=cov, batch_size=size)
            print(report(result, cutoff))
            if result.held:
                print(held(result))
            if result.error is not None:
                failed = True
                print(
                    f"observer: could not delete {LABEL[kind]}: {result.error}"
                    f" ({result.deleted} deleted before)",
                    file=sys.stderr,
                )
    return EXIT_FAILED if failed else EXIT_OK


def report(r: KindResult, cutoff: datetime) -> str:
    return f"deleted: {r.deleted} {LABEL[r.kind]} older than {iso(cutoff)}"


def held(r: KindResult) -> str:
    """The `kept:` line: old rows the finalized-period rule holds back."""
    span = ""
    if r.held_from is not None and r.held_to is not None:
        span = f" (from {iso(r.held_from)} to {iso(r.held_to)})"
    return (
        f"kept: {r.held} {LABEL[r.kind]} older than the cut-off{span}: they belong to a period"
        " that is not finalized (observer reconcile finalizes periods)"
    )


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    identity = args.identity
    if not identity.strip():
        raise CommandError("--identity must not be empty")
    if settings.forget_key is None:
        raise CommandError(
            "OBSERVER_FORGET_KEY is missing: observer forget needs the key of its HMAC-SHA256"
            " (make one with: openssl rand -hex 32, and keep it)"
        )
    hashed = forget_hash(settings.forget_key, identity)
    with open_store(settings) as store:
        changed = store.forget(identity, hashed)
    if changed is None:
        raise CommandError("identity not found: no stored row holds it", exit_code=EXIT_FAILED)
    if not any(changed.values()):
        print(f"forgotten: {hashed} (forgotten before: nothing changed)")
        return EXIT_OK
    counts = ", ".join(f"{table} {n}" for table, n in changed.items())
    print(f"forgotten: {hashed} ({counts})")
    return EXIT_OK
