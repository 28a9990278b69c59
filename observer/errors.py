"""The one error a command reports to its user, and the exit codes a scheduler acts on."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command cannot do what it was asked: printed as one line, `observer: <message>`,
    and the process exits with `exit_code` (2, the default: nothing was done)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
