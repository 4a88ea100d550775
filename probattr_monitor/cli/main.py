"""The ``probattr`` parser, logging set-up and error handling."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import NoReturn, Optional, Sequence

from probattr_monitor.cli import compare_cmd, evaluate_cmd, probes_cmd, score_cmd, select_cmd, watch_cmd
from probattr_monitor.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    CLIError,
)

DESCRIPTION = """\
Convergence monitoring for causal language models from probabilistic
attribution scores (AS) and contextual entropies. A prompt token with
near-zero AS and high contextual entropy is a noise token; a well-converged
model has few of them on reasonable prompts.

Run 'probattr COMMAND --help' for the options of each command.
"""

EPILOG = """\
typical use:
  probattr score --model ckpts/step-1000.ckpt --config ./hf-model --probes paper --out runs/1000
  probattr score --model ckpts/step-2000.ckpt --config ./hf-model --probes paper --out runs/2000
  probattr compare runs/1000 runs/2000
  probattr select runs/1000 runs/2000 --metric noise_rate --max 0.1

""" + EXIT_STATUS_HELP

_LOGGER = "probattr_monitor"


def _version() -> str:
    try:
        from probattr_monitor.version import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors read ``probattr: error: ...`` and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"probattr: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``probattr`` argument parser with its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_argument_group("output verbosity")
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more progress messages (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and results; no progress bar")
    parser = _Parser(prog="probattr", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"probattr-monitor {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)
    sub.required = True
    for module in (score_cmd, compare_cmd, select_cmd, probes_cmd, watch_cmd, evaluate_cmd):
        module.add_parser(sub, [common])
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    """``probattr: <message>`` (library messages that already start with ``probattr:`` keep theirs)."""

    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if text.startswith("probattr:"):
            text = text[len("probattr:"):].lstrip()
        name = f"{record.name}: " if self.with_names else ""
        return f"probattr: {name}{text}"


def _configure_logging(verbose: int, quiet: bool, transformers_too: bool, progress: bool) -> tuple:
    """Attach a stderr handler to the package logger; returns what to restore."""
    logger = logging.getLogger(_LOGGER)
    cli_logger = logging.getLogger(f"{_LOGGER}.cli")
    saved = (logger.level, cli_logger.level)
    if quiet:
        level, cli_level = logging.WARNING, logging.WARNING
    elif verbose >= 2:
        level = cli_level = logging.DEBUG
    elif verbose == 1:
        level = cli_level = logging.INFO
    else:
        level, cli_level = logging.WARNING, logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(verbose >= 2))
    logger.setLevel(level)
    cli_logger.setLevel(cli_level)
    logger.addHandler(handler)
    hf_saved = _quiet_transformers(progress) if transformers_too and verbose < 2 else None
    return handler, saved, hf_saved


def _quiet_transformers(progress: bool) -> Optional[tuple]:
    """Keep transformers' info messages (and its bars, without ours) out of the output; returns what to restore."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return None
    saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    if saved[0] < hf_logging.WARNING:
        hf_logging.set_verbosity_warning()
    if not progress:
        hf_logging.disable_progress_bar()
    return saved


def _restore_transformers(saved: Optional[tuple]) -> None:
    if saved is None:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(saved[0])
    if saved[1]:
        hf_logging.enable_progress_bar()


def _restore_logging(state: tuple) -> None:
    handler, (level, cli_level), hf_saved = state
    _restore_transformers(hf_saved)
    logging.getLogger(_LOGGER).removeHandler(handler)
    logging.getLogger(_LOGGER).setLevel(level)
    logging.getLogger(f"{_LOGGER}.cli").setLevel(cli_level)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``probattr`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Expected failures print ``probattr: error: <message>`` (naming the option
    or file and the cause) to stderr, without a traceback, and return their own
    status (:mod:`probattr_monitor.cli.errors`): 2 for a usage error, 3 for an
    input or output error (missing, unreadable or inconsistent file, unwritable
    output), 4 when ``score`` could score no probe. ``select`` returns 1 when no
    checkpoint passes its gate. An unexpected exception prints its traceback
    and returns 5, so that 1 never means a crash.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    args.argv = argv
    args.progress = not args.quiet and sys.stderr.isatty()
    state = _configure_logging(args.verbose, args.quiet, args.command in ("score", "watch"), args.progress)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"probattr: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("probattr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `probattr compare ... --json | head`
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: keep its traceback, but not exit status 1 ("none passes")
        traceback.print_exc(file=sys.stderr)
        print(f"probattr: internal error: {type(exc).__name__}: {exc} (this is a bug in probattr-monitor "
              f"or a library it uses; the traceback is above)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        _restore_logging(state)


if __name__ == "__main__":
    sys.exit(main())
