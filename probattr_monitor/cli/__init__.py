"""The ``probattr`` command line: score checkpoints, compare them, select the best.

::

    probattr score   --model M --probes paper --out runs/ckpt-1000
    probattr compare runs/ckpt-1000 runs/ckpt-2000 --plot noise.png
    probattr select  runs/ckpt-* --metric noise_rate --max 0.1
    probattr probes                       # the built-in probe sets

One module per job: :mod:`~probattr_monitor.cli.main` (parser, logging, errors),
:mod:`~probattr_monitor.cli.errors` (``CLIError`` and the exit statuses),
:mod:`~probattr_monitor.cli.arguments` (numeric option values checked at
parsing), :mod:`~probattr_monitor.cli.output_dir` (``--out`` checked before
scoring), :mod:`~probattr_monitor.cli.loading` (model directories, GGUF files,
Lightning checkpoints), :mod:`~probattr_monitor.cli.checkpoint` (``.ckpt``
state dicts), :mod:`~probattr_monitor.cli.candidates` (``--candidates``),
:mod:`~probattr_monitor.cli.reports` (reading report directories), and one
module per subcommand.

Exit statuses: 0 success, 1 ``select``: no checkpoint passes, 2 usage error,
3 input/output error (unreadable or inconsistent model, probe file or report,
unwritable output), 4 ``score``: no probe could be scored, 5 internal error.
"""

from probattr_monitor.cli.errors import CLIError
from probattr_monitor.cli.main import build_parser, main

__all__ = ["CLIError", "build_parser", "main"]
