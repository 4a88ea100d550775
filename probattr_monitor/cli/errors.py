"""Errors the CLI reports as one line instead of a traceback, and its exit statuses.

Each outcome has its own status, so that a script can tell "nothing passed the
gate" from "the command could not do its work"::

    0  success
    1  select: no checkpoint passes the gate (the command itself worked)
    2  usage error: unknown option, malformed or out-of-range value (argparse's status)
    3  input or output error: missing or unreadable model, probe file, candidate
       file or report (corrupted, inconsistent), unwritable --out or --plot
    4  scoring failed: not a single probe could be scored
    5  internal error: an unexpected exception (a bug; its traceback is printed)
    130  interrupted (Ctrl-C)
    141  stdout closed early (broken pipe, e.g. ``probattr compare ... | head``)
"""

from __future__ import annotations

#: Exit status of a successful command.
EXIT_OK = 0
#: ``select``: no checkpoint passes the gate.
EXIT_NONE_PASSES = 1
#: Usage error: bad option or option value (the status argparse uses).
EXIT_USAGE = 2
#: Input or output error: a file that cannot be read, is invalid or inconsistent, or cannot be written.
EXIT_INPUT = 3
#: ``score``: not a single probe could be scored.
EXIT_SCORING = 4
#: An unexpected exception: a bug in probattr-monitor or a library it calls.
EXIT_INTERNAL = 5
#: Interrupted by the user (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: stdout was closed before the output was written (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141

#: The exit statuses, as shown at the end of ``probattr --help`` and of each command's help.
EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  select: no checkpoint passes the gate
  2  usage error (unknown option, malformed or out-of-range value)
  3  input/output error: missing or unreadable model, probe file or report
     (corrupted or inconsistent files), unwritable --out or --plot
  4  score: no probe could be scored
  5  internal error (a bug: the traceback is printed)
"""


class CLIError(Exception):
    """An expected failure: ``main`` prints ``probattr: error: <message>`` and exits.

    Parameters
    ----------
    message : str
        What went wrong and, where possible, what to do about it: it names the
        option or the file concerned.
    code : int
        Exit status; :data:`EXIT_INPUT` by default (:data:`EXIT_USAGE` for a
        malformed option value, :data:`EXIT_SCORING` when nothing was scored).
    """

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code
