"""Errors the CLI reports as one line instead of a traceback."""

from __future__ import annotations

#: Exit status of a usage or input error (bad option, missing model, unreadable file).
EXIT_USAGE = 2
#: Exit status of a run that completed but found nothing acceptable (``select``),
#: or could not score a single probe (``score``).
EXIT_FAILURE = 1


class CLIError(Exception):
    """An expected failure: ``main`` prints ``probattr: error: <message>`` and exits.

    Parameters
    ----------
    message : str
        What went wrong and, where possible, what to do about it.
    code : int
        Exit status; :data:`EXIT_USAGE` by default.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
