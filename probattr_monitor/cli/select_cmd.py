"""``probattr select``: the best scored checkpoint that passes a metric gate."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Optional

from probattr_monitor.cli.arguments import number
from probattr_monitor.cli.errors import EXIT_NONE_PASSES, EXIT_STATUS_HELP, EXIT_USAGE, CLIError
from probattr_monitor.cli.reports import dumps, fmt_value, load_scored, unique_labels
from probattr_monitor.report.definitions import gate_mode

DESCRIPTION = """\
Among the report directories whose metric passes the gate (--max, --min), print
the best one: the lowest value with --mode min, the highest with --mode max
(default: the metric's own direction); ties go to the directory given first.
The default metric is the monitor's default gate, mean_surprisal_prefix (see
docs/validation.md); --metric noise_rate is the paper's noise-token rate. Print why the others failed.
Exit status: 0 when a checkpoint passes, 1 when none does; any report that
cannot be read (missing, corrupted, inconsistent) is an error (3), never a
checkpoint that fails the gate.
"""

EPILOG = """\
examples:
  probattr select runs/step-*                       # lowest mean_surprisal_prefix
  probattr select runs/step-* --metric noise_rate --max 0.1
  best=$(probattr select runs/* --max 2.5 --path-only) && cp -r "$best" release/
  probattr select runs/* --metric mean_abs_as --min 0.5 --mode max --json

""" + EXIT_STATUS_HELP


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``select``."""
    from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC, METRIC_NAMES

    p = subparsers.add_parser("select", parents=parents, help="pick the best checkpoint that passes a metric gate",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="report directories written by 'probattr score'")
    p.add_argument("--metric", default=DEFAULT_GATE_METRIC, choices=METRIC_NAMES, metavar="NAME",
                   help=f"metric to gate and rank on (default: %(default)s; one of {', '.join(METRIC_NAMES)})")
    p.add_argument("--max", type=number(float), dest="max_value", metavar="X",
                   help="pass only if the metric is <= X (a finite number)")
    p.add_argument("--min", type=number(float), dest="min_value", metavar="X",
                   help="pass only if the metric is >= X (a finite number)")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="'min': lower is better; 'max': higher is better (default: the metric's direction; "
                        "required for a metric without one)")
    p.add_argument("--gate-on", choices=("value", "interval"), default="value",
                   help="'interval': the whole bootstrap interval must pass (high <= --max, low >= --min), "
                        "a stricter gate (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print machine-readable JSON")
    out.add_argument("--path-only", action="store_true", help="print only the selected directory")
    p.set_defaults(func=run)
    return p


def check_gate(mv: Any, max_value: Optional[float], min_value: Optional[float], gate_on: str) -> Optional[str]:
    """Why a metric value fails the gate, or ``None`` when it passes."""
    if not math.isfinite(mv.value):
        return "undefined" + (f" ({mv.note})" if mv.note else "")
    hi, lo = (mv.high, mv.low) if gate_on == "interval" else (mv.value, mv.value)
    what = "interval high" if gate_on == "interval" else "value"
    if max_value is not None and not hi <= max_value:
        return f"{what} {hi:.4g} > max {max_value:g}" if math.isfinite(hi) else "no interval to gate on"
    what = "interval low" if gate_on == "interval" else "value"
    if min_value is not None and not lo >= min_value:
        return f"{what} {lo:.4g} < min {min_value:g}" if math.isfinite(lo) else "no interval to gate on"
    return None


def _gate_text(args: argparse.Namespace) -> str:
    parts = []
    if args.min_value is not None:
        parts.append(f"{args.metric} >= {args.min_value:g}")
    if args.max_value is not None:
        parts.append(f"{args.metric} <= {args.max_value:g}")
    text = " and ".join(parts) or f"{args.metric} defined"
    return text + (" (whole interval)" if args.gate_on == "interval" else "")


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr select``."""
    if args.min_value is not None and args.max_value is not None and args.min_value > args.max_value:
        raise CLIError(f"--min {args.min_value:g} is above --max {args.max_value:g}: no value can pass",
                       code=EXIT_USAGE)
    if args.mode is None:
        try:
            args.mode = gate_mode(args.metric)
        except ValueError as err:
            raise CLIError(f"--mode: {err}", code=EXIT_USAGE) from None
    items = load_scored(args.dirs)
    labels = unique_labels(items)
    fingerprints = {c.fingerprint for c in items}
    if len(fingerprints) > 1 or None in fingerprints:
        print("probattr: warning: these reports were not all scored on the same probes (probe-set "
              "fingerprints differ): their metrics are not directly comparable", file=sys.stderr)
    rows = []
    for c, lab in zip(items, labels):
        mv = c.report.metrics[args.metric]
        rows.append({"dir": c.directory, "label": lab, "step": c.step, "metric": mv,
                     "reason": check_gate(mv, args.max_value, args.min_value, args.gate_on)})
    passing = [r for r in rows if r["reason"] is None]
    best = None
    if passing:
        sign = 1.0 if args.mode == "min" else -1.0
        best = min(passing, key=lambda r: sign * r["metric"].value)  # min() keeps the first of ties
    gate = _gate_text(args)

    if args.json:
        print(dumps({"metric": args.metric, "gate": gate, "mode": args.mode,
                     "selected": None if best is None else best["dir"],
                     "selected_step": None if best is None else best["step"],
                     "checkpoints": [{"dir": r["dir"], "label": r["label"], "step": r["step"],
                                      "value": r["metric"].to_dict(), "passes": r["reason"] is None,
                                      "reason": r["reason"]} for r in rows]}))
    elif args.path_only:
        if best is not None:
            print(best["dir"])
    else:
        if best is not None:
            print(f"selected: {best['dir']}  (step {best['label']}: {args.metric} = {fmt_value(best['metric'])})")
        for r in rows:
            if r is best:
                continue
            status = "passes" if r["reason"] is None else f"fails: {r['reason']}"
            print(f"  {r['dir']}  (step {r['label']}: {args.metric} = {fmt_value(r['metric'])}) {status}")
    if best is None:
        print(f"probattr: no checkpoint passes the gate {gate}", file=sys.stderr)
        return EXIT_NONE_PASSES
    return 0
