"""Measure every candidate signal on the recorded runs and write the study's tables and figures.

A run's ground truth (``truth``) is its checkpoints' true excess loss, or, for
the ``english`` regime where no true distribution is known, their cross-entropy
per token on the large held-out sample (``truth_kind`` says which; regret is
then a held-out perplexity ratio, :func:`~benchmarks.validity.analysis.loss_regret`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.validity.analysis import (
    bootstrap_spearman_ci,
    gate_pick,
    loss_regret,
    probes_needed,
    regret,
    spearman,
)
from benchmarks.validity.runs import load_record, probe_set_for
from benchmarks.validity.signals import all_signals, lower_is_better, with_prefix_surprisal
from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.report import Report
from probattr_monitor.sinks.files import step_dir_name

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    name: str
    language: str
    regime: str
    seed: int
    steps: list
    truth: np.ndarray  # excess loss, or held-out loss where truth_kind is HELD_OUT
    val_loss: np.ndarray
    num: dict  # signal -> [checkpoints, probes]
    den: dict
    truth_kind: str = "excess_loss"

    def regret(self, values, lower_is_better: bool) -> float:
        fn = loss_regret if self.truth_kind == HELD_OUT else regret
        return fn(values, self.truth, lower_is_better)


#: ``truth_kind`` of the runs whose truth is held-out loss (no true distribution known).
HELD_OUT = "held_out_loss"

#: Regimes whose truth is held-out loss.
HELD_OUT_REGIMES = ("english",)


def load_run(run_dir: Path, signals) -> RunData | None:
    record = load_record(run_dir)
    if record is None:
        return None
    spec = record.spec
    cks = sorted(record.checkpoints, key=lambda c: c["step"])
    num = {s.name: [] for s in signals}
    den = {s.name: [] for s in signals}
    kept = []
    for ck in cks:
        path = run_dir / "reports" / step_dir_name(ck["step"])
        try:
            report = Report.load(path)
        except (FileNotFoundError, ValueError) as err:
            logger.warning("%s step %s: no report (%s)", run_dir.name, ck["step"], err)
            continue
        kept.append(ck)
        table = with_prefix_surprisal(report.table)
        for s in signals:
            _, n, d = s.per_probe(table)
            num[s.name].append(n)
            den[s.name].append(d)
    kind = HELD_OUT if spec["regime"] in HELD_OUT_REGIMES else "excess_loss"
    field = "model_nll" if kind == HELD_OUT else "excess_loss"
    return RunData(
        name=run_dir.name, language=spec["language"], regime=spec["regime"], seed=spec["seed"],
        steps=[c["step"] for c in kept], truth=np.array([c[field] for c in kept]),
        val_loss=np.array([c["val_loss"] for c in kept]),
        num={k: np.array(v) for k, v in num.items()}, den={k: np.array(v) for k, v in den.items()},
        truth_kind=kind,
    )


def _values(run: RunData, signal: str) -> np.ndarray:
    d = run.den[signal].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return run.num[signal].sum(axis=1) / d


def measure_run(run: RunData, signals) -> dict[str, Any]:
    out: dict[str, Any] = {"name": run.name, "language": run.language, "regime": run.regime, "seed": run.seed,
                           "steps": run.steps, "ground_truth": run.truth.tolist(), "truth_kind": run.truth_kind,
                           "val_losses": run.val_loss.tolist(), "signals": {}}
    best = int(np.argmin(run.truth))
    out["best_step"] = run.steps[best]
    vi = gate_pick(run.val_loss, True)
    out["val_loss"] = {  # the baseline a user already has
                       "spearman": spearman(run.val_loss, run.truth),
                       "regret": run.regret(run.val_loss, True), "picked_step": run.steps[vi],
                       "picked_truth": float(run.truth[vi])}
    for s in signals:
        vals = _values(run, s.name)
        low = lower_is_better(s.name)
        pick = gate_pick(vals, low)
        lo, hi = bootstrap_spearman_ci(run.num[s.name], run.den[s.name], run.truth)
        out["signals"][s.name] = {
            "values": vals.tolist(),
            "spearman": spearman(vals, run.truth),
            "spearman_ci": [lo, hi],
            "regret": run.regret(vals, low),
            "picked_step": None if pick is None else run.steps[pick],
            "picked_truth": None if pick is None else float(run.truth[pick]),
            "probes_needed_10pct": probes_needed(run.num[s.name], run.den[s.name], run.truth),
        }
    return out


def truth_floor(out: Path, language, seed: int, spec: dict, signals) -> dict[str, float]:
    """Every signal on the *true* model of ``language``, with the run's probes (its floor), cached as a report."""
    from benchmarks.validity.truth import TrueLM, word_tokenizer
    from probattr_monitor.scoring import ScoringConfig, score_probe_set

    path = out / "truth" / f"{language.name}.s{seed}"
    try:
        report = Report.load(path)
    except (FileNotFoundError, ValueError):
        probes = probe_set_for(language, spec["num_probes"], spec["prompt_tokens"], seed)
        report = score_probe_set(TrueLM(language), word_tokenizer(language), probes, ScoringConfig(), step="truth")
        report.save(path, formats=("json",))
    values = {}
    table = with_prefix_surprisal(report.table)
    for s in signals:
        _, n, d = s.per_probe(table)
        values[s.name] = float(n.sum() / d.sum()) if d.sum() > 0 else float("nan")
    return values


def analyse(out: Path, langs) -> dict[str, Any]:
    signals = all_signals()
    runs = []
    floors: dict[str, dict] = {}
    for run_dir in sorted(p for p in out.iterdir() if (p / "record.json").exists()) if out.exists() else []:
        data = load_run(run_dir, signals)
        if data is None or len(data.steps) < 3:
            continue
        measured = measure_run(data, signals)
        key = f"{data.language}.s{data.seed}"
        if langs is not None and data.language in langs and key not in floors:
            floors[key] = truth_floor(out, langs[data.language], data.seed, load_record(run_dir).spec, signals)
        measured["truth"] = floors.get(key, {})
        runs.append(measured)
    summary: dict[str, Any] = {"runs": runs, "signals": [s.name for s in signals], "aggregate": {},
                               "truth": floors}
    for s in [sig.name for sig in signals] + ["val_loss"]:
        agg = {}
        for regime in sorted({r["regime"] for r in runs}):
            rs = [r for r in runs if r["regime"] == regime]
            m = [r["val_loss"] if s == "val_loss" else r["signals"][s] for r in rs]
            rho = np.array([x["spearman"] for x in m], float)
            reg = np.array([x["regret"] for x in m], float)
            agg[regime] = {"spearman_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
                           "spearman_min": float(np.nanmin(rho)) if np.isfinite(rho).any() else None,
                           "regret_median": float(np.nanmedian(reg)) if np.isfinite(reg).any() else None,
                           "regret_max": float(np.nanmax(reg)) if np.isfinite(reg).any() else None,
                           "runs": len(rs)}
        summary["aggregate"][s] = agg
    return summary


def write_summary(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, allow_nan=True))
    atomic_write_text(out / "summary.md", render_markdown(summary))
    try:
        plot_runs(summary, out / "figures")
    except ImportError as err:  # matplotlib is the plots extra
        logger.warning("no figures: %s", err)


#: Signals drawn in the per-run figures.
PLOTTED = ("noise_rate", "mean_entropy_full", "mean_surprisal_prefix", "mean_surprisal_prompt")


def plot_runs(summary: dict[str, Any], directory: Path) -> list[Path]:
    """One figure per regime: true excess loss and each plotted signal against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for regime in sorted({r["regime"] for r in summary["runs"]}):
        runs = [r for r in summary["runs"] if r["regime"] == regime]
        names = ["truth"] + [s for s in PLOTTED if s in summary["signals"]]
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0))
        for ax, name in zip(axes, names):
            for r in runs:
                ys = r["ground_truth"] if name == "truth" else r["signals"][name]["values"]
                ax.plot(r["steps"], ys, marker=".", lw=1, label=r["name"])
                floor = r.get("truth", {}).get(name)
                if floor is not None and np.isfinite(floor):
                    ax.axhline(floor, lw=0.6, ls=":", color=ax.lines[-1].get_color())
            ax.set_xscale("log")
            held = runs[0].get("truth_kind") == HELD_OUT
            title = ("held-out loss" if held else "true excess loss") if name == "truth" else name
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=5)
        held = runs[0].get("truth_kind") == HELD_OUT
        fig.suptitle(f"{regime} runs" + ("" if held else " (dotted: the true model)"), fontsize=10)
        fig.tight_layout()
        path = directory / f"{regime}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _f(x, nd=2) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


#: Signals given their own per-run tables (the paper's rule and the best candidates).
KEY_SIGNALS = ("noise_rate", "mean_entropy_full", "mean_surprisal_prefix", "mean_surprisal_prompt",
               "mean_surprisal_full")


def render_per_run(summary: dict[str, Any]) -> str:
    """Per run: Spearman (bootstrap interval over probes) and regret of the key signals, and validation loss."""
    keys = [k for k in KEY_SIGNALS if k in summary["signals"]]
    head = "| run | best step | val loss: ρ / regret | " + " | ".join(f"`{k}`: ρ [95% CI] / regret" for k in keys) + " |"
    lines = [head, "|---" * (3 + len(keys)) + "|"]
    for r in sorted(summary["runs"], key=lambda r: (r["regime"], r["language"], r["seed"])):
        cells = [r["name"], str(r["best_step"]), f"{_f(r['val_loss']['spearman'])} / {_f(r['val_loss']['regret'])}"]
        for k in keys:
            m = r["signals"][k]
            lo, hi = m["spearman_ci"]
            cells.append(f"{_f(m['spearman'])} [{_f(lo)}, {_f(hi)}] / {_f(m['regret'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_forgetting(summary: dict[str, Any]) -> str:
    """Forgetting runs: the general excess loss of the checkpoint each gate picks."""
    runs = [r for r in summary["runs"] if r["regime"] == "forget"]
    if not runs:
        return ""
    keys = [k for k in KEY_SIGNALS if k in summary["signals"]]
    lines = ["| run | best (step, excess) | val loss picks | " + " | ".join(f"`{k}` picks" for k in keys) + " |",
             "|---" * (3 + len(keys)) + "|"]
    for r in sorted(runs, key=lambda r: (r["language"], r["seed"])):
        best = int(np.argmin(r["ground_truth"]))
        cells = [r["name"], f"{r['steps'][best]}, {r['ground_truth'][best]:.3f}",
                 f"{r['val_loss']['picked_step']}, {r['val_loss']['picked_truth']:.3f}"]
        for k in keys:
            m = r["signals"][k]
            cells.append("—" if m["picked_step"] is None else f"{m['picked_step']}, {m['picked_truth']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Gates of the held-out-loss table (the default gate, the paper's rule).
HELD_OUT_GATES = ("mean_surprisal_prefix", "noise_rate", "mean_entropy_full", "mean_surprisal_prompt")


def render_held_out(summary: dict[str, Any]) -> str:
    """Runs whose truth is held-out loss: Spearman with it, regret and the pick of each gate, per run."""
    runs = [r for r in summary["runs"] if r.get("truth_kind") == HELD_OUT]
    if not runs:
        return ""
    keys = [k for k in HELD_OUT_GATES if k in summary["signals"]]
    lines = ["| run | best (step, held-out loss) | val loss: ρ / regret / picks | "
             + " | ".join(f"`{k}`: ρ [95% CI] / regret / picks" for k in keys) + " |",
             "|---" * (3 + len(keys)) + "|"]
    for r in sorted(runs, key=lambda r: (r["language"], r["seed"])):
        best = int(np.argmin(r["ground_truth"]))
        v = r["val_loss"]
        cells = [r["name"], f"{r['steps'][best]}, {r['ground_truth'][best]:.3f}",
                 f"{_f(v['spearman'])} / {_f(v['regret'], 3)} / {v['picked_step']}, {v['picked_truth']:.3f}"]
        for k in keys:
            m = r["signals"][k]
            lo, hi = m["spearman_ci"]
            pick = "—" if m["picked_step"] is None else f"{m['picked_step']}, {m['picked_truth']:.3f}"
            cells.append(f"{_f(m['spearman'])} [{_f(lo)}, {_f(hi)}] / {_f(m['regret'], 3)} / {pick}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_resolution(summary: dict[str, Any]) -> str:
    """Median probes needed to tell apart checkpoints whose excess loss differs by 10 %, per regime."""
    regimes = sorted({r["regime"] for r in summary["runs"]})
    keys = [k for k in KEY_SIGNALS if k in summary["signals"]]
    lines = ["| signal | " + " | ".join(regimes) + " |", "|---" * (1 + len(regimes)) + "|"]
    for k in keys:
        cells = []
        for g in regimes:
            vals = np.array([r["signals"][k]["probes_needed_10pct"] for r in summary["runs"] if r["regime"] == g],
                            float)
            cells.append(_f(float(np.nanmedian(vals)), 0) if np.isfinite(vals).any() else "—")
        lines.append(f"| `{k}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(summary: dict[str, Any]) -> str:
    held = render_held_out(summary)
    note = ("\n(`english`: Spearman with the held-out loss, regret = held-out perplexity of the pick over the "
            "best's, exp(L_pick - L_best).)\n" if held else "")
    return ("## Spearman with the true excess loss and gate regret, per regime\n\n" + render_aggregate(summary)
            + note
            + "\n## Per run\n\n" + render_per_run(summary)
            + ("\n## Real English: held-out loss as truth (regret: perplexity ratio; picks: step, held-out "
               "loss)\n\n" + held if held else "")
            + "\n## Forgetting: general excess loss of the checkpoint each gate picks\n\n"
            + render_forgetting(summary)
            + "\n## Probes needed to resolve a 10 % difference in excess loss (median over pairs)\n\n"
            + render_resolution(summary))


def render_aggregate(summary: dict[str, Any]) -> str:
    regimes = sorted({r["regime"] for r in summary["runs"]})
    lines = ["| signal | " + " | ".join(f"{g}: Spearman median (min)" for g in regimes) + " | "
             + " | ".join(f"{g}: regret median (max)" for g in regimes) + " |",
             "|---" * (1 + 2 * len(regimes)) + "|"]
    for s in ["val_loss"] + summary["signals"]:
        agg = summary["aggregate"][s]
        cells = [f"{_f(agg[g]['spearman_median'])} ({_f(agg[g]['spearman_min'])})" for g in regimes]
        cells += [f"{_f(agg[g]['regret_median'])} ({_f(agg[g]['regret_max'])})" for g in regimes]
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
