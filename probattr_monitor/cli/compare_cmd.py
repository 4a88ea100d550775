"""``probattr compare``: the metrics of several scored checkpoints side by side."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from probattr_monitor.cli.errors import EXIT_STATUS_HELP, EXIT_USAGE, CLIError
from probattr_monitor.cli.reports import ScoredCheckpoint, dumps, fmt_value, load_scored, table, unique_labels
from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC, METRIC_NAMES

logger = logging.getLogger("probattr_monitor.cli")

DESCRIPTION = """\
Print one column per report directory (written by 'probattr score'), one row per
metric: value [low, high] with the bootstrap interval. With exactly two
directories scored on the same probes, also print the paired-bootstrap
difference b - a of each metric (and whether its interval excludes 0) and the
prompt tokens whose AS class changed. Reports scored on different probe sets
are compared without the paired test, with a warning.
"""

SHOWN_CHANGES = 20


def add_parser(subparsers: Any, parents: list) -> argparse.ArgumentParser:
    """Register ``compare``."""

    p = subparsers.add_parser("compare", parents=parents, help="compare the metrics of scored checkpoints",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  probattr compare runs/step-1000 runs/step-2000 --plot noise.png\n\n"
                                     + EXIT_STATUS_HELP)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="report directories, in order (oldest first)")
    p.add_argument("--plot", metavar="PATH", help="also plot the metrics across the checkpoints (PNG)")
    p.add_argument("--plot-metrics", default=f"{DEFAULT_GATE_METRIC},noise_rate", metavar="LIST",
                   help=f"comma-separated metrics for --plot (default: %(default)s; known: {', '.join(METRIC_NAMES)})")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.set_defaults(func=run)
    return p


def _rows(items: list) -> list:

    rows = [[name] + [fmt_value(c.report.metrics[name]) for c in items] for name in METRIC_NAMES]
    rows.append(["n_tokens"] + [str(c.report.metrics.n_tokens) for c in items])
    rows.append(["n_probes"] + [str(c.report.metrics.n_probes) for c in items])
    rows.append(["probes"] + [f"{(c.report.meta.get('probes') or {}).get('name', '?')} "
                              f"{(c.fingerprint or '?')[:12]}" for c in items])
    return rows


def _setting_notes(items: list) -> list:
    notes = []
    for key in ("candidates", "decoding", "max_new_tokens", "noise"):
        values = [repr((c.report.meta.get("scoring") or {}).get(key)) for c in items]
        if len(set(values)) > 1:
            notes.append(f"note: the checkpoints were scored with different {key} settings: {', '.join(values)}")
    return notes


def _changes(a: ScoredCheckpoint, b: ScoredCheckpoint) -> Any:
    return a.report.diff_classes(b.report)


def run(args: argparse.Namespace) -> int:
    """Execute ``probattr compare``."""
    from probattr_monitor.report import compare_metrics

    items = load_scored(args.dirs)
    labels = unique_labels(items)
    fingerprints = [c.fingerprint for c in items]
    same = None not in fingerprints and len(set(fingerprints)) == 1
    comparison = changes = None
    if len(items) == 2 and same:
        comparison = compare_metrics(items[0].report.metrics, items[1].report.metrics)
        changes = _changes(items[0], items[1])
    plot = _plot(items, args.plot, args.plot_metrics) if args.plot else None

    if args.json:
        print(dumps(_as_json(items, labels, same, comparison, changes, plot)))
        return 0
    print(table(_rows(items), ["metric"] + labels))
    if not same:
        print()
        print("WARNING: these reports were NOT scored on the same probes (probe-set fingerprints differ"
              + (" or are missing" if None in fingerprints else "") + "): their metrics are not directly "
              "comparable" + (", and no paired test is done." if len(items) == 2 else "."))
    for note in _setting_notes(items):
        print(note)
    if comparison is not None:
        print()
        print(f"b - a: {labels[1]} minus {labels[0]}")
        print(comparison.summary())
        print()
        print(_changes_text(changes, labels))
    if plot is not None:
        print(f"\nwrote {plot}")
    return 0


def _changes_text(changes: Any, labels: list) -> str:
    n = len(changes)
    if n == 0:
        return "no prompt token changed AS class"
    head = f"{n} prompt token(s) changed AS class ({labels[0]} -> {labels[1]})"
    head += f", first {SHOWN_CHANGES}:" if n > SHOWN_CHANGES else ":"
    rows = [[r.probe_id, str(r.position), repr(str(r.token_text)), f"{r.as_class_a} -> {r.as_class_b}",
             f"{r.attribution_a:.3f} -> {r.attribution_b:.3f}"]
            for r in changes.head(SHOWN_CHANGES).itertuples(index=False)]
    return head + "\n" + table(rows, ["probe", "pos", "token", "class", "AS"])


def _plot(items: list, path: str, metrics: str) -> Any:

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    bad = [m for m in names if m not in METRIC_NAMES]
    if not names or bad:
        raise CLIError(f"--plot-metrics: unknown metric(s) {bad or metrics!r}; known: {', '.join(METRIC_NAMES)}",
                       code=EXIT_USAGE)
    try:
        from probattr_monitor.report.plots import plot_metrics_over_checkpoints

        return plot_metrics_over_checkpoints([(c.step, c.report.metrics) for c in items], path, names)
    except ImportError as exc:
        raise CLIError(f"--plot: {exc}") from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"--plot: cannot write {path}: {exc}") from None


def _as_json(items: list, labels: list, same: bool, comparison: Any, changes: Any, plot: Any) -> dict:

    out: dict = {
        "checkpoints": [
            {"dir": c.directory, "label": lab, "step": c.step, "probes": c.report.meta.get("probes"),
             "n_tokens": c.report.metrics.n_tokens, "n_probes": c.report.metrics.n_probes,
             "metrics": {n: c.report.metrics[n].to_dict() for n in METRIC_NAMES}}
            for c, lab in zip(items, labels)
        ],
        "same_probes": same,
        "comparison": None if comparison is None else comparison.to_dict(),
        "changed_tokens": None,
        "plot": None if plot is None else str(plot),
    }
    if changes is not None:
        out["changed_tokens"] = {"count": int(len(changes)),
                                 "first": changes.head(SHOWN_CHANGES).to_dict(orient="records")}
    return out
